from __future__ import annotations

from .apps import basic_app
from .helpers import count, wait_until


def test_worker_runs_sent_tasks(app_registry, worker, database_url, schema):
    app_registry(basic_app.hy)
    handles = [basic_app.echo.send({"n": i}) for i in range(20)]
    w = worker("basic_app:hy", "--processes", "2")
    wait_until(lambda: count(database_url, schema, "status = 'completed'") == 20, 30)
    h = handles[3].refresh()
    assert h.status == "completed"
    assert h.result == {"n": 3, "attempt": 1}
    assert [(r.attempt_number, r.status) for r in h.task_runs] == [(1, "completed")]
    assert w.stop() == 0
