"""Importing the user's app: ``module:attribute`` (or a module holding one registry), with an
error that says what to type instead when given something else."""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import WorkerError
from ..registry import HyrexRegistry


def load_registry(app: str) -> HyrexRegistry:
    """Import ``module:attr`` (or ``module`` holding exactly one registry).

    A file path (``app.py``) is refused with the import path to use instead (``app:hy``, the
    attribute found by importing the module when it imports)."""
    module_name, _, attr = app.partition(":")
    if not module_name:
        raise WorkerError(f"bad app path {app!r}: expected 'module:attribute' or 'module'")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = module_name.removesuffix(".py")
        path = os.path.relpath(path) if os.path.isabs(path) else os.path.normpath(path)
        dotted = (
            os.path.basename(path) if path.startswith("..") else path.replace(os.sep, ".")
        ).replace("/", ".")
        names = [attr] if attr else []
        if not names and dotted.replace(".", "").replace("_", "").isalnum():
            namespace: dict[str, Any] = {}
            try:
                namespace = vars(importlib.import_module(dotted))
            except Exception:  # BaseException subclasses (SystemExit...) still propagate
                pass
            names = [k for k, v in namespace.items() if isinstance(v, HyrexRegistry)]
        guesses = " or ".join(f"`{dotted}:{n}`" for n in names) or f"`{dotted}:<attribute>`"
        raise WorkerError(
            f"{app!r} is a file path; run-worker takes an import path, 'module:attribute' "
            f"(run from the directory that holds the module): did you mean {guesses}?"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise WorkerError(  # the app imports, but something it imports is missing
                f"importing module {module_name!r} from {app!r} failed: ModuleNotFoundError: {exc}"
            ) from None
        raise WorkerError(
            f"cannot import module {module_name!r} from {app!r}: it is neither in the working "
            f"directory ({os.getcwd()}) nor on the Python path; run the worker from the "
            "directory that holds it, or add that directory to PYTHONPATH"
        ) from None
    except ImportError as exc:
        raise WorkerError(f"cannot import module {module_name!r} from {app!r}: {exc}") from None
    except Exception as exc:  # the app's own code failed while being imported
        raise WorkerError(
            f"importing module {module_name!r} from {app!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise WorkerError(
                    f"module {module_name!r} has no attribute {attr!r} (from {app!r})"
                ) from None
        if not isinstance(obj, HyrexRegistry):
            raise WorkerError(f"{app!r} is a {type(obj).__name__}, not a HyrexRegistry")
        return obj
    found = [v for v in vars(module).values() if isinstance(v, HyrexRegistry)]
    if len(found) != 1:
        raise WorkerError(
            f"module {module_name!r} holds {len(found)} HyrexRegistry objects; "
            f"name one as '{module_name}:attribute'"
        )
    return found[0]
