"""The trigger workload of bench/workflows.py, and what its drains share: the same plain drain
(``bench_app:noop``, the tuned worker) on two source trees, each with its own library on
PYTHONPATH, its own bench app and its own database (``<BENCH_DB>_before`` / ``_after``).
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness as H
from run import TUNED_CANDIDATES, outcome

TUNED = TUNED_CANDIDATES[1]  # 1 worker, --processes 2 --prefetch 1024 --log-level warning


SPAN_SQL = (
    "SELECT extract(epoch FROM max(finished_at) - min(claimed_at))::float8 FROM hyrex_like.task_run"
)


def drain_timing(url: str, res: dict[str, Any], tasks: int) -> dict[str, Any]:
    """``wall``: worker launch to the poll that saw nothing left (startup included: a worker
    start is ~0.5-1.5 s here, as long as the drain itself). ``drain``: from the rows, the first
    claim (server clock) to the last finish (executor clock, same host)."""
    drain = H.scalar(url, SPAN_SQL)
    return {
        "wall_s": res["wall_s"],
        "drain_s": round(drain, 3) if drain else None,
        "tasks_per_s": round(tasks / drain, 1) if drain else None,
        "cpu": res["cpu"],
        "partial": res.get("partial", False),
    }


def ratios(num: list[dict[str, Any]], den: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round ratios (same round, so the machine's drift hits both alike)."""
    pairs = list(zip(num, den, strict=True))
    return {
        "ratios_wall": [round(a["wall_s"] / b["wall_s"], 3) for a, b in pairs],
        "ratios_drain": [
            round(a["drain_s"] / b["drain_s"], 3) for a, b in pairs if a["drain_s"] and b["drain_s"]
        ],
    }


PREFILL = "import sys; from run import prefill; prefill(sys.argv[1], int(sys.argv[2]))"


class TreeWorker(H.Worker):
    """A worker that runs ``bench_app:hy`` of another checkout, with that checkout's library."""

    def __init__(self, root: Path, args: list[str], url: str, tag: str) -> None:
        super().__init__(args, url, tag)
        self.root = root
        self.env = tree_env(root, url)

    def start(self) -> TreeWorker:
        self._log = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(self.root / "bench"),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


def tree_env(root: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "HYREX_LIKE_DATABASE_URL": url,
        "HYREX_LIKE_NO_EMBEDDED": "1",
        "PYTHONPATH": f"{root / 'bench'}{os.pathsep}{root}",
    }


def check_tree(root: Path) -> str:
    """The library file the tree's interpreter imports (it must be the tree's own)."""
    out = subprocess.run(
        [sys.executable, "-c", "import hyrex_like; print(hyrex_like.__file__)"],
        cwd=str(root / "bench"),
        env=tree_env(root, ""),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out.startswith(str(root.resolve())):
        raise RuntimeError(f"{root}: imports hyrex_like from {out}, not from the tree")
    for folder in (root / "hyrex_like", root / "bench"):  # bytecode, as run.py's precompile
        compileall.compile_dir(folder, quiet=2)
    return out


def _tree_drain(root: Path, db: str, n: int, cap_s: float, tag: str) -> dict[str, Any]:
    url = H.fresh_db(db)
    subprocess.run(
        [sys.executable, "-c", PREFILL, url, str(n)],
        cwd=str(root / "bench"),
        env=tree_env(root, url),
        check=True,
    )
    ws = H.Workers([TreeWorker(root, TUNED["args"], url, tag)])
    res = drain_timing(url, H.measure_drain(url, n, ws, cap_s), n)
    res["outcome"] = outcome(url)
    res["schema_version"] = H.scalar(url, "SELECT max(version) FROM hyrex_like.schema_migrations")
    done = res["outcome"]["tasks"].get("completed", 0)
    assert res["partial"] or done == n, f"{done} of {n} tasks completed: {res['outcome']}"
    H.drop_db(db)
    return res


def w_trigger(n: int, rounds: int, cap_s: float, before: Path, after: Path) -> dict[str, Any]:
    trees = {"before": before, "after": after}
    libs = {k: check_tree(p) for k, p in trees.items()}
    heads = {
        k: subprocess.run(
            ["git", "-C", str(p), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        for k, p in trees.items()
    }
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for rnd in range(rounds):
        order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
        for kind in order:
            db = f"{H.DB}_{kind}"
            tag = f"trig_{kind}{rnd}"
            res = _tree_drain(trees[kind], db, n, cap_s, tag)
            H.log(f"  {kind} round {rnd + 1}: wall {res['wall_s']} s, drain {res['drain_s']} s")
            runs[kind].append(res)
    return {
        "tasks": n,
        "settings": TUNED["label"],
        "trees": {k: str(p) for k, p in trees.items()},
        "libraries": libs,
        "heads": heads,
        "runs": runs,
        **ratios(runs["after"], runs["before"]),
    }
