"""hyrex-like demo: send a few hundred typed tasks, run a worker until they are done, summarise.

python examples/demo.py            # embedded PostgreSQL under the project's .hyrex_like/
HYREX_LIKE_DATABASE_URL=postgresql://... python examples/demo.py
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import demo_app  # noqa: E402  (the app module the worker imports too)


def main() -> int:
    schema = "hyrex_like_demo"  # the summary reads this run's handles, so reruns are fine
    demo_app.hy.configure(schema_name=schema)
    store = demo_app.hy.store
    settings = demo_app.hy.settings
    where = "configured URL" if settings.database_url else f"embedded, {settings.embedded_dir}"
    print(f"database: {where}, schema {schema}")

    started = time.monotonic()
    orders = [
        demo_app.Order(
            order_id=i,
            customer_email=f"customer{i}@example.com",
            items=[f"sku-{i % 7}"] * (1 + i % 3),
            flaky=(i % 10 == 0),
        )
        for i in range(300)
    ]
    handles = demo_app.process_order.send_many(orders)
    handles += [demo_app.send_receipt_email.send(o) for o in orders[:50]]
    handles += [demo_app.reject_order.send(orders[1])]
    urgent = demo_app.process_order.with_config(priority=10, queue="orders").send(
        {"order_id": 9999, "customer_email": "vip@example.com", "items": ["gold"]}
    )
    handles.append(urgent)
    print(f"sent {len(handles)} tasks in {time.monotonic() - started:.2f}s")

    log_path = Path(".hyrex_like") / "demo-worker.log"
    log_path.parent.mkdir(exist_ok=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyrex_like",
            "run-worker",
            "demo_app:hy",
            "--database-url",
            store.url(),
            "--schema",
            schema,
            "--processes",
            "2",
            "--log-level",
            "info",
        ],
        env=env,
        cwd=HERE,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    print(f"worker started (pid {worker.pid}); its log: {log_path}")
    try:
        t0 = time.monotonic()
        for handle in handles:
            handle.wait(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)

    statuses = collections.Counter(h.status.value for h in handles)
    runs = collections.Counter(r.status.value for h in handles for r in h.task_runs)
    retried = sum(1 for h in handles if h.attempt_count > 1)
    print()
    print(f"all {len(handles)} tasks final in {elapsed:.2f}s (worker exit code {code})")
    print(f"  tasks by status : {dict(statuses)}")
    print(f"  attempts (runs) : {dict(runs)}  total {sum(runs.values())}")
    print(f"  retried tasks   : {retried}")
    h = handles[10].refresh()
    attempts = [
        (
            r.attempt_number,
            r.status.value,
            f"{r.error['type']}: {r.error['message']}" if r.error else "ok",
        )
        for r in h.task_runs
    ]
    print(f"  a retried order : {attempts}")
    failed = next(x for x in handles if x.status == "failed")
    err = failed.last_error
    print(
        f"  a failed task   : {failed.task_name} -> {err and err['type']}: {err and err['message']}"
    )
    print(f"  the urgent one  : {urgent.status}, result {urgent.result}")
    demo_app.hy.close()
    ok = statuses.get("completed", 0) == len(handles) - 1 and statuses.get("failed", 0) == 1
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
