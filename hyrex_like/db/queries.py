"""The named statements of ``hyrex_like/queries.sql``, loaded once, and their libpq form.

Nothing outside `hyrex_like.db` builds or runs SQL: code asks for a statement by its name.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import LiteralString, NamedTuple

# Used on a caller's connection only (see `hyrex_like.db.sends`): returns the old search_path.
_SWAP_SEARCH_PATH: LiteralString = (
    "WITH old AS MATERIALIZED (SELECT current_setting('search_path') AS value) "
    "SELECT value, set_config('search_path', %s, false) FROM old"
)
_SET_SEARCH_PATH: LiteralString = "SELECT set_config('search_path', %s, false)"


@cache
def queries() -> dict[str, LiteralString]:
    """Load ``queries.sql`` once: ``{name: statement}``."""
    text = resources.files("hyrex_like").joinpath("queries.sql").read_text("utf-8")
    out: dict[str, LiteralString] = {}
    for match in re.finditer(r"^-- (\w+) --\n(.*?)(?=^-- \w+ --\n|\Z)", text, re.M | re.S):
        body = "\n".join(
            line for line in match.group(2).splitlines() if not line.lstrip().startswith("--")
        ).strip()
        out[match.group(1)] = body  # trusted: the package's own file (mypy reads it as str)
    return out


def q(name: str) -> LiteralString:
    """The statement called ``name`` in ``queries.sql``."""
    return queries()[name]


class Numbered(NamedTuple):
    """A named statement in the form `PooledConnection.run_prepared` takes."""

    key: bytes
    """Its prepared-statement name: the query name and a digest of the text, so a server
    connection shared through a pooler never runs another version's statement by this name."""
    statement: bytes
    """The text with libpq's ``$1, $2...`` placeholders."""
    order: tuple[str, ...]
    """The parameter name each number stands for."""


@cache
def numbered(name: str) -> Numbered:
    """The statement called ``name`` as `Numbered` (built once per name)."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, q(name)).encode()
    digest = hashlib.sha1(text).hexdigest()[:12]
    return Numbered(f"hyrex_like_{name}_{digest}".encode(), text, tuple(order))
