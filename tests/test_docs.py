"""The docs point at tests that exist: every test the hostile-input table in docs/security.md
names is defined in the file it names, so the table cannot drift from the suite."""

from __future__ import annotations

import re

from .helpers import ROOT


def _hostile_input_section() -> str:
    text = (ROOT / "docs" / "security.md").read_text()
    start = text.index("## Hostile input")
    return text[start : text.index("\n## ", start + 1)]


def test_every_test_named_in_the_hostile_input_table_exists() -> None:
    missing = []
    refs = 0
    for line in _hostile_input_section().splitlines():
        if not line.startswith("|"):
            continue
        current: str | None = None
        for match in re.finditer(r"(tests/[\w/]+\.py)?::(test_\w+)", line):
            path, name = match.groups()
            current = path or current
            if current is None:  # "same test": nothing new named on this row
                continue
            refs += 1
            source = (ROOT / current).read_text()
            if not re.search(rf"^(async )?def {name}\(", source, re.M):
                missing.append(f"{current}::{name}")
    assert refs >= 30, f"the table names only {refs} tests"
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
