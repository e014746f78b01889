"""The app bench/workflows.py runs: ``hyrex-like run-worker wf_app:hy``.

``three`` is a workflow of three steps, ``s1 >> s2 >> s3``, each a tiny body that hands an
``Item`` on. The throughput workload drains the same three tasks sent as plain tasks, so the
two drains run the same bodies and differ only by the hand-off. The database comes from
``HYREX_LIKE_DATABASE_URL`` (the harness sets it), like any app.
"""

from __future__ import annotations

from pydantic import BaseModel

from hyrex_like import HyrexRegistry, Workflow

hy = HyrexRegistry()


class Item(BaseModel):
    i: int


@hy.task
def s1(item: Item) -> Item:
    return Item(i=item.i + 1)


@hy.task
def s2(item: Item) -> Item:
    return Item(i=item.i + 1)


@hy.task
def s3(item: Item) -> Item:
    return Item(i=item.i + 1)


three: Workflow[Item, Item] = hy.workflow("three", [s1, s2, s3])
