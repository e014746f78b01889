"""Durations as people write them on a command line: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``.

One number (whole or decimal, not negative) and at most one unit: ``s`` seconds, ``m`` minutes,
``h`` hours, ``d`` days (24 hours), ``w`` weeks (7 days). A bare number is seconds. No
compound forms (``1h30m``: write ``90m``) and no months or years, whose lengths vary. Used by
``hyrex-like prune --older-than``, ``run-worker --retention`` and ``hy.worker(retention=...)``.
"""

from __future__ import annotations

import math
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
"""Seconds per unit."""
MAX_SECONDS = 36_500 * 86_400.0
"""The longest duration accepted (100 years of days): PostgreSQL intervals have bounds."""
FORMS = "a number with an optional unit s, m, h, d or w, such as 0s, 90s, 30m, 12h, 7d or 2w"
"""The accepted forms, for error messages and help texts."""
_DURATION_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([smhdw]?)$")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (see the module docstring). Raises `ValueError` naming ``text``
    and the accepted forms."""
    match = _DURATION_RE.match(text.strip().lower())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected {FORMS}")
    seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: at most 36500d")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit up to days that divides it evenly (``604800`` -> ``7d``;
    weeks are accepted but not written: days read more plainly)."""
    for unit in "dhm":
        size = UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
