"""An app module with exactly one registry, for `run-worker single_registry_app`."""

from hyrex_like import HyrexRegistry

registry = HyrexRegistry()


@registry.task
def triple(n: int) -> int:
    return n * 3
