"""The dashboard over HTTP (Starlette's TestClient, and the CLI as a real server): every page
with data from a real worker, hostile text shown inert, actions refused unless allowed and
CSRF-checked, auth, the loopback rule, and every page under the SELECT-only viewer role."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import conninfo, sql
from starlette.testclient import TestClient

from hyrex_like import HyrexRegistry
from hyrex_like.web import create_app

from .apps import web_app
from .helpers import APPS, ROOT, Worker, done, run_cli, wait_until

PAGES = ["/", "/tasks", "/workflows", "/schedules", "/workers"]
WEB = ROOT / "hyrex_like" / "web"


@pytest.fixture
def app(app_registry: Callable[[HyrexRegistry], HyrexRegistry]) -> Any:
    """tests/apps/web_app.py bound to this test's schema."""
    app_registry(web_app.hy)
    return web_app


@pytest.fixture
def seeded(worker: Callable[..., Worker], app: Any, database_url: str, schema: str) -> Any:
    """A worker ran: greetings, a parent with two children, a failure whose error is markup,
    a task whose name is markup, and a workflow."""
    worker("web_app:hy", "--processes", "2")
    app.hy.pause_queue("parked")  # what is sent there stays queued
    seeds: dict[str, Any] = {"parked": app.greet.with_config(queue="parked").send({"p": 1})}
    seeds["greet"] = app.greet.send({"who": "world"})
    seeds["parent"] = app.parent.send(2)
    seeds["explode"] = app.explode.send(web_app.HOSTILE_TEXT)
    seeds["hostile"] = app.hostile.send({"x": web_app.HOSTILE_TEXT})
    seeds["workflow"] = app.pipeline.send("ada")
    for key in ("greet", "parent", "explode", "hostile"):
        done(seeds[key], 60)
    seeds["workflow"].wait(60)
    wait_until(
        lambda: (
            len(_children(database_url, schema, seeds["parent"].id)) == 2
            and all(h.refresh().done for h in _child_handles(app, database_url, schema, seeds))
        ),
        60,
        what="the children to finish",
    )
    seeds["children"] = _children(database_url, schema, seeds["parent"].id)
    return seeds


def _children(database_url: str, schema: str, parent: uuid.UUID) -> list[uuid.UUID]:
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        rows = conn.execute("SELECT id FROM task WHERE parent_id = %s", (parent,)).fetchall()
    return [r[0] for r in rows]


def _child_handles(app: Any, database_url: str, schema: str, seeds: Any) -> list[Any]:
    return [app.hy.get_handle(i) for i in _children(database_url, schema, seeds["parent"].id)]


def _client(hy: HyrexRegistry, **options: Any) -> TestClient:
    return TestClient(create_app(hy, **options), base_url="http://127.0.0.1:8000")


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def _no_markup_from_tasks(html: str) -> None:
    """The task-made text is on the page only escaped."""
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "onerror=alert" not in html.replace("&lt;img src=x onerror=alert(2)&gt;", "")


def test_every_page_shows_the_seeded_data_with_hostile_text_escaped(
    seeded: Any, app: Any, registry: HyrexRegistry
) -> None:
    client = _client(registry, app_registry=app.hy)
    pages = {path: client.get(path) for path in PAGES}
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/html")
        _no_markup_from_tasks(response.text)
    overview = pages["/"].text
    assert '<meta http-equiv="refresh" content="5">' in overview
    assert "<polyline" in overview and ">parked</a>" in overview
    [w] = registry.list_workers()
    assert w.hostname in overview and w.hostname in pages["/workers"].text
    escaped_name = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped_name in pages["/tasks"].text
    assert str(seeded["explode"].id) in pages["/tasks"].text
    assert "pipeline" in pages["/workflows"].text
    assert "nightly" in pages["/schedules"].text and "0 3 * * *" in pages["/schedules"].text

    failed = client.get(f"/tasks/{seeded['explode'].id}").text
    _no_markup_from_tasks(failed)
    assert '<pre class="traceback">Traceback (most recent call last):' in failed
    assert "ValueError: &lt;img src=x onerror=alert(2)&gt;" in failed
    assert 'http-equiv="refresh"' not in failed  # final: the page stops reloading
    hostile = client.get(f"/tasks/{seeded['hostile'].id}").text
    _no_markup_from_tasks(hostile)
    assert escaped_name in hostile and "&lt;img src=x onerror=alert(2)&gt;" in hostile

    parent = client.get(f"/tasks/{seeded['parent'].id}").text
    for child in seeded["children"]:
        assert f'href="/tasks/{child}"' in parent
        assert f'href="/tasks/{seeded["parent"].id}"' in client.get(f"/tasks/{child}").text
    wf = seeded["workflow"]
    page = client.get(f"/workflows/{wf.id}").text
    assert "greet_step" in page and "shout" in page and '<progress value="2" max="2">' in page
    assert f'href="/workflows/{wf.id}"' in pages["/workflows"].text
    for missing in (f"/tasks/{uuid.uuid4()}", "/tasks/nope", f"/workflows/{uuid.uuid4()}"):
        assert client.get(missing).status_code == 404, missing
    assert client.get("/workflows/x'<b>").status_code == 404


def test_task_list_filters_and_pages_back(
    worker: Callable[..., Worker], app: Any, registry: HyrexRegistry
) -> None:
    worker("web_app:hy", "--processes", "2")
    handles = app.greet.send_many([{"i": i} for i in range(55)])
    failed = app.explode.send("no")
    for h in [*handles, failed]:
        done(h, 60)
    client = _client(registry)
    first = client.get("/tasks", params={"name": "greet"})
    assert first.status_code == 200
    ids = re.findall(r'href="/tasks/([0-9a-f-]{36})"', first.text)
    assert len(ids) == 50 and str(failed.id) not in ids
    older = re.search(r'<a href="(/tasks\?[^"]+)" rel="next">', first.text)
    assert older, first.text
    second = client.get(older.group(1).replace("&amp;", "&"))
    rest = re.findall(r'href="/tasks/([0-9a-f-]{36})"', second.text)
    assert len(rest) == 5 and not set(rest) & set(ids)
    assert {*ids, *rest} == {str(h.id) for h in handles}
    only_failed = client.get("/tasks", params={"status": "failed"}).text
    assert re.findall(r'href="/tasks/([0-9a-f-]{36})"', only_failed) == [str(failed.id)]
    by_queue = client.get("/tasks", params={"queue": "nowhere"}).text
    assert "No task matches" in by_queue
    bad = client.get("/tasks", params={"status": "bogus"})
    assert bad.status_code == 400 and "bogus" in bad.text
    for params in ({"after": "nope"}, {"since": "soon"}):
        assert client.get("/tasks", params=params).status_code == 400, params
    recent = client.get("/tasks", params={"since": "1h", "status": "failed"}).text
    assert str(failed.id) in recent


def test_actions_are_refused_unless_allowed_and_csrf_checked(
    app: Any, registry: HyrexRegistry
) -> None:
    handle = app.greet.send({"who": "nobody runs me"})  # no worker: it stays queued
    target = f"/tasks/{handle.id}/cancel"

    readonly = _client(registry)
    page = readonly.get(f"/tasks/{handle.id}").text
    assert 'method="post"' not in page and '<meta http-equiv="refresh" content="5">' in page
    assert readonly.post(target, data={"csrf": "x"}).status_code == 405
    assert readonly.get(target).status_code == 405

    client = _client(registry, allow_actions=True)
    page = client.get(f"/tasks/{handle.id}").text
    token = _csrf(page)
    same = {"origin": "http://127.0.0.1:8000"}
    assert client.post(target, headers=same).status_code == 403  # no token
    assert client.post(target, data={"csrf": "0" * 64}, headers=same).status_code == 403
    assert client.post(target, data={"csrf": token}).status_code == 403  # no Origin/Referer
    evil = {"origin": "http://evil.example"}
    assert client.post(target, data={"csrf": token}, headers=evil).status_code == 403
    cross = {**same, "sec-fetch-site": "cross-site"}
    assert client.post(target, data={"csrf": token}, headers=cross).status_code == 403
    assert handle.refresh().status == "queued"

    cookieless = _client(registry, allow_actions=True)
    refused = cookieless.post(target, data={"csrf": token}, headers=same)
    assert refused.status_code == 403 and "CSRF" in refused.text

    ok = client.post(target, data={"csrf": token}, headers=same, follow_redirects=False)
    assert ok.status_code == 303
    assert ok.headers["location"] == f"/tasks/{handle.id}?flash=cancel"
    assert handle.refresh().status == "canceled"
    assert "Canceled." in client.get(ok.headers["location"]).text
    # a browser under Referrer-Policy no-referrer: Origin null, only Sec-Fetch-Site to go by
    browser = {"origin": "null", "sec-fetch-site": "same-origin"}
    retried = client.post(f"/tasks/{handle.id}/retry", data={"csrf": token}, headers=browser)
    assert retried.status_code == 200 and handle.refresh().status == "queued"

    paused = client.post("/queues/default/pause", data={"csrf": token}, headers=same)
    assert paused.status_code == 200 and "Paused." in paused.text
    assert {q.name: q.paused for q in registry.queues()}["default"] is True
    client.post("/queues/default/resume", data={"csrf": token}, headers=same)
    assert {q.name: q.paused for q in registry.queues()}["default"] is False


def test_workflow_actions_pause_resume_and_cancel(app: Any, registry: HyrexRegistry) -> None:
    wf = app.pipeline.send("ada")  # no worker: its first step stays queued
    client = _client(registry, allow_actions=True)
    page = client.get(f"/workflows/{wf.id}").text
    token = _csrf(page)
    assert f'action="/workflows/{wf.id}/pause"' in page

    def post(action: str) -> str:
        response = client.post(
            f"/workflows/{wf.id}/{action}",
            data={"csrf": token},
            headers={"origin": "http://127.0.0.1:8000"},
        )
        assert response.status_code == 200, response.text
        return response.text

    assert "Paused." in post("pause") and wf.refresh().status == "paused"
    assert "Resumed." in post("resume") and wf.refresh().status == "pending"  # not started
    assert "Canceled." in post("cancel") and wf.refresh().status == "canceled"
    assert "Not possible in its current state." in post("pause")
    assert 'http-equiv="refresh"' not in client.get(f"/workflows/{wf.id}").text


def test_token_and_basic_auth(registry: HyrexRegistry) -> None:
    client = _client(registry, token="s3cret")
    refused = client.get("/")
    assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"]
    assert client.get("/healthz").status_code == 200
    assert client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"authorization": "Bearer s3cret"}).status_code == 200
    once = client.get("/tasks?token=s3cret&status=failed", follow_redirects=False)
    assert once.status_code == 303 and once.headers["location"] == "/tasks?status=failed"
    cookie = once.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/workers").status_code == 200  # the cookie now

    local = _client(registry, allowed_hosts=["127.0.0.1", "localhost"])
    assert local.get("/").status_code == 200
    assert local.get("/", headers={"host": "evil.example"}).status_code == 400

    basic = _client(registry, basic_auth=("ada", "pa:ss"))
    no = basic.get("/")
    assert no.status_code == 401 and no.headers["www-authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"ada:nope").decode()
    right = base64.b64encode(b"ada:pa:ss").decode()
    assert basic.get("/", headers={"authorization": f"Basic {wrong}"}).status_code == 401
    assert basic.get("/", headers={"authorization": f"Basic {right}"}).status_code == 200


def test_security_headers_on_every_response(registry: HyrexRegistry) -> None:
    client = _client(registry)
    for path in [*PAGES, "/static/style.css", "/healthz", "/nope"]:
        h = client.get(path).headers
        assert h["content-security-policy"].startswith("default-src 'self'; script-src 'none'")
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
        assert h["cache-control"] == "no-store"
    assert "refresh" not in client.get("/?refresh=0").text.split("<title>")[0]
    assert 'http-equiv="refresh"' not in _client(registry, refresh=0).get("/").text
    assert "schedules live in the app" in client.get("/schedules").text  # no --app


def test_metrics_route_serves_the_cluster_gauges_when_installed(
    app: Any, registry: HyrexRegistry
) -> None:
    pytest.importorskip("hyrex_like.metrics")
    app.hy.pause_queue("parked")
    app.greet.with_config(queue="parked").send({"p": 1})
    client = _client(registry, token="t")
    assert client.get("/metrics").status_code == 401
    scraped = client.get("/metrics", headers={"authorization": "Bearer t"})
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert "hyrex_like_" in scraped.text and 'queue="parked"' in scraped.text


def test_templates_and_code_never_mark_text_safe() -> None:
    templates = sorted((WEB / "templates").glob("*.html"))
    assert len(templates) >= 8
    for path in [*templates, *sorted(WEB.glob("*.py"))]:
        text = path.read_text("utf-8")
        assert not re.search(r"\|\s*safe\b", text), path
        assert "Markup" not in text and "autoescape false" not in text.lower(), path
    css = (WEB / "static" / "style.css").read_text()
    assert "url(" not in css and "@import" not in css  # nothing loaded from elsewhere
    assert not list(WEB.rglob("*.js"))


# ------------------------------------------------------------------ the viewer role


@pytest.fixture
def viewer_url(database_url: str, schema: str, registry: HyrexRegistry) -> Iterator[str]:
    """A role made as docs/security.md says (CREATE ROLE and its GRANT lines), on this
    test's schema; dropped afterwards."""
    registry.migrate()
    doc = (ROOT / "docs" / "security.md").read_text("utf-8")
    setup, grants = re.findall(r"```sql\n(.*?)```", doc, re.S)[:2]
    role = "viewer_" + uuid.uuid4().hex[:10]

    def rename(statement: str) -> str:
        statement = re.sub(r"\bhyrex_viewer\b", role, statement)
        statement = re.sub(r"\bSCHEMA hyrex_like\b", f'SCHEMA "{schema}"', statement)
        return re.sub(r"\bhyrex_like\.", f'"{schema}".', statement)

    [create] = [s for s in setup.split(";\n") if "hyrex_viewer" in s]
    mine = [s.strip() for s in grants.split(";\n") if "hyrex_viewer" in s]
    assert len(mine) >= 8 and all(s.startswith("GRANT SELECT") or "USAGE" in s for s in mine)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(rename(create))  # type: ignore[arg-type]
        for statement in mine:
            admin.execute(rename(statement))  # type: ignore[arg-type]
    try:
        yield conninfo.make_conninfo(database_url, user=role, password="change-me")
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_every_page_works_under_the_select_only_viewer_role(
    seeded: Any, app: Any, viewer_url: str, schema: str
) -> None:
    viewer = HyrexRegistry(viewer_url, schema=schema)
    viewer.configure(auto_migrate=False)
    try:
        client = _client(viewer, allow_actions=True, app_registry=app.hy)
        pages = [*PAGES, f"/tasks/{seeded['explode'].id}", f"/workflows/{seeded['workflow'].id}"]
        for path in pages:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
        queued = seeded["parked"]
        token = _csrf(client.get(f"/tasks/{queued.id}").text)
        denied = client.post(
            f"/tasks/{queued.id}/cancel",
            data={"csrf": token},
            headers={"origin": "http://127.0.0.1:8000"},
        )
        assert denied.status_code == 200 and "permission denied" in denied.text
        assert queued.refresh().status == "queued"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with psycopg.connect(viewer_url, autocommit=True) as conn:
                conn.execute(sql.SQL("SELECT * FROM {}.kv").format(sql.Identifier(schema)))
    finally:
        viewer.close()


# ------------------------------------------------------------------ the command


def test_cli_refuses_an_open_non_loopback_host(database_url: str, schema: str) -> None:
    refused = run_cli("dashboard", "--host", "0.0.0.0", database_url=database_url, schema=schema)
    assert refused.returncode == 2 and "--token or --basic-auth" in refused.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['starlette'] = None; from hyrex_like.cli import main; "
            "sys.exit(main(['dashboard']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "pip install 'hyrex-like[web]'" in missing.stderr


def test_cli_serves_the_overview_on_a_free_port(
    registry: HyrexRegistry, database_url: str, schema: str, tmp_path: Path
) -> None:
    registry.migrate()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(HYREX_LIKE_DATABASE_URL=database_url, HYREX_LIKE_SCHEMA=schema)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyrex_like", "dashboard", "--port", "0", "--app", "web_app:hy"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "err.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
        env=env,
        cwd=str(APPS),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, (line, (tmp_path / "err.log").read_text())
        page = httpx.get(found.group(0), timeout=30)
        assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
        rebound = httpx.get(found.group(0), headers={"host": "evil.example:80"}, timeout=30)
        assert rebound.status_code == 400  # a DNS-rebinding page cannot read it
        assert "nightly" in httpx.get(found.group(0) + "schedules", timeout=30).text
    finally:
        proc.terminate()
        proc.wait(30)
