"""The dashboard's guards against hostile input (docs/security.md names these tests): the token
cookie, the ``?token=`` redirect, Host names (DNS rebinding), CSRF and form limits, refresh and
filter limits, bad action input, what an error page tells, long texts, hostile queue names."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from hyrex_like import HyrexRegistry
from hyrex_like.cli.dashboard import allowed_hosts
from hyrex_like.web import create_app
from hyrex_like.web.security import Guard
from hyrex_like.web.views import MAX_SHOWN, clip

from .apps import web_app
from .helpers import APPS, ROOT, run_cli

TOKEN = "s3cret-token-0123456789"
SAME = {"origin": "http://127.0.0.1:8000"}
HOSTILE_QUEUES = ['"><svg onload=alert(1)>', "a/b?x#y"]


def _client(hy: HyrexRegistry, base: str = "http://127.0.0.1:8000", **options: Any) -> TestClient:
    return TestClient(create_app(hy, **options), base_url=base)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def app(app_registry: Callable[[HyrexRegistry], HyrexRegistry]) -> Any:
    app_registry(web_app.hy)
    return web_app


def test_token_cookie_is_an_hmac_named_per_port_and_secure_over_https(
    registry: HyrexRegistry,
) -> None:
    client = _client(registry, token=TOKEN)
    once = client.get("/workers?token=" + TOKEN, follow_redirects=False)
    assert once.status_code == 303 and once.headers["location"] == "/workers"
    name, _, rest = once.headers["set-cookie"].partition("=")
    value = rest.split(";")[0]
    assert name == "hl_token_8000" and TOKEN not in once.headers["set-cookie"]
    assert len(value) == 64 and "Secure" not in once.headers["set-cookie"]
    assert client.get("/workers").status_code == 200  # the cookie
    other_port = _client(registry, base="http://127.0.0.1:8001", token=TOKEN)
    other_port.cookies.set(name, value)
    assert other_port.get("/").status_code == 401  # another port's cookie is not its own
    raw = _client(registry, token=TOKEN)
    raw.cookies.set("hl_token_8000", TOKEN)
    assert raw.get("/").status_code == 401  # the token itself is not a cookie value
    forged = hmac.new(b"guess", TOKEN.encode(), hashlib.sha256).hexdigest()
    raw.cookies.set("hl_token_8000", forged)
    assert raw.get("/").status_code == 401
    https = _client(registry, base="https://127.0.0.1:8443", token=TOKEN)
    secure = https.get("/?token=" + TOKEN, follow_redirects=False).headers["set-cookie"]
    assert secure.startswith("hl_token_8443=") and "; Secure" in secure


def test_token_redirect_stays_on_the_site_and_a_wrong_token_sets_nothing(
    registry: HyrexRegistry,
) -> None:
    client = _client(registry, token=TOKEN)
    wrong = client.get("/?token=nope-nope-nope-nope", follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    for path, expected in [
        ("//evil.example", "/evil.example"),
        ("///evil.example/x", "/evil.example/x"),
        ("/t%C3%A2ches", "/t%C3%A2ches"),  # the path the app sees: /tâches
        ("/a b", "/a%20b"),
    ]:
        url = httpx.URL("http://127.0.0.1:8000").copy_with(
            raw_path=(path.encode() + b"?token=" + TOKEN.encode() + b"&x=1")
        )
        fresh = _client(registry, token=TOKEN)  # no cookie from the previous round
        response = fresh.get(url, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == expected + "?x=1", path


def test_host_names_are_checked(registry: HyrexRegistry) -> None:
    local = _client(registry, allowed_hosts=allowed_hosts("127.0.0.2", None))
    for host in ("127.0.0.2:8000", "localhost", socket.gethostname()):
        assert local.get("/", headers={"host": host}).status_code == 200, host
    assert local.get("/", headers={"host": "evil.example"}).status_code == 400
    public = allowed_hosts("0.0.0.0", ["dash.example"])
    assert "dash.example" in public and "localhost" not in public
    assert socket.gethostname().lower() not in public  # --allowed-host replaces the default
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0", None)


def test_websocket_scopes_are_refused() -> None:
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})

    client = TestClient(Guard(inner, token=None, basic_auth=None), base_url="http://127.0.0.1")
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/", headers={"host": "evil.example"}):
            pass
    assert reached == []  # not even passed on: no Host or auth check is written for it


def test_refresh_accepts_only_a_few_ascii_digits(registry: HyrexRegistry) -> None:
    client = _client(registry)
    for given, shown in [("12", 12), ("9999", 3600), ("\u00b2", 5), ("1" * 5000, 5), ("-1", 5)]:
        page = client.get("/workers", params={"refresh": given})
        assert page.status_code == 200, given
        assert f'<meta http-equiv="refresh" content="{shown}">' in page.text, given


def test_bad_filters_and_action_input_get_400_and_error_pages_never_reload(
    app: Any, registry: HyrexRegistry
) -> None:
    app.greet.send({"who": "nobody"})  # the default queue, with its pause form
    client = _client(registry, allow_actions=True)
    for path, params in [
        ("/tasks", {"name": "a\x00b"}),
        ("/tasks", {"queue": "q" * 256}),
        ("/workflows", {"name": "\x00"}),
    ]:
        response = client.get(path, params=params)
        assert response.status_code == 400, params
        assert 'http-equiv="refresh"' not in response.text
    token = _csrf(client.get("/").text)
    bad = client.post("/queues//pause", data={"csrf": token}, headers=SAME)
    assert bad.status_code == 400 and 'http-equiv="refresh"' not in bad.text
    big = client.post("/queues/default/pause", data={"csrf": token, "x": "y" * 9000}, headers=SAME)
    assert big.status_code == 413
    site = {**SAME, "sec-fetch-site": "same-site"}
    assert (
        client.post("/queues/default/pause", data={"csrf": token}, headers=site).status_code == 403
    )
    assert not any(q.paused for q in registry.queues())


def test_a_failed_read_shows_no_connection_details(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = "no_such_schema_" + os.urandom(4).hex()
    hy = HyrexRegistry(database_url, schema=missing)
    hy.configure(auto_migrate=False)
    try:
        with caplog.at_level(logging.ERROR, logger="hyrex_like.web"):
            page = _client(hy).get("/")
        assert page.status_code == 503 and "details are in the log" in page.text
        assert missing not in page.text and 'http-equiv="refresh"' not in page.text
        assert missing in caplog.text
    finally:
        hy.close()


def test_long_texts_are_cut(app: Any, registry: HyrexRegistry) -> None:
    assert clip("ab") == "ab"
    assert clip("\u00e9" * MAX_SHOWN).endswith(f"\u2026 {MAX_SHOWN} bytes more")
    handle = app.greet.send({"big": "x" * (200 * 1024)})  # no worker: it stays queued
    page = _client(registry).get(f"/tasks/{handle.id}")
    assert page.status_code == 200 and "bytes more" in page.text
    assert len(page.text) < 100 * 1024


def test_hostile_queue_names_are_escaped_and_their_links_work(
    app: Any, registry: HyrexRegistry
) -> None:
    for name in HOSTILE_QUEUES:
        app.greet.with_config(queue=name).send({"q": name})
    client = _client(registry, allow_actions=True)
    page = client.get("/").text
    assert "<svg onload" not in page and "&#34;&gt;&lt;svg onload=alert(1)&gt;" in page
    assert 'action="/queues/%22%3E%3Csvg%20onload%3Dalert%281%29%3E/pause"' in page
    assert 'action="/queues/a%2Fb%3Fx%23y/pause"' in page
    assert 'href="/tasks?queue=a/b%3Fx%23y"' in page
    listed = client.get("/tasks?queue=a/b%3Fx%23y").text
    assert listed.count('href="/tasks/') >= 1 and "a/b?x#y" in listed
    token = _csrf(page)
    for action in re.findall(r'action="(/queues/[^"]+/pause)"', page):
        assert client.post(action, data={"csrf": token}, headers=SAME).status_code == 200
    assert {q.name for q in registry.queues() if q.paused} >= set(HOSTILE_QUEUES)


# ------------------------------------------------------------------ the command


def test_cli_checks_the_token(database_url: str, schema: str) -> None:
    for bad in ("short", "x" * 16 + ";y", "with space" * 3, "t\u00e9" * 10):
        refused = run_cli("dashboard", "--token", bad, database_url=database_url, schema=schema)
        assert refused.returncode == 2 and "16 or more characters" in refused.stderr, bad
    env = {"HYREX_LIKE_DASHBOARD_TOKEN": "bad token"}
    refused = run_cli("dashboard", database_url=database_url, schema=schema, env=env)
    assert refused.returncode == 2 and "16 or more characters" in refused.stderr
    helped = run_cli("dashboard", "--help", database_url=database_url, schema=schema)
    assert "HYREX_LIKE_DASHBOARD_TOKEN" in helped.stdout and "--allowed-host" in helped.stdout


@contextmanager
def _serving(
    database_url: str, schema: str, tmp_path: Path, *args: str
) -> Iterator[tuple[str, int]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(HYREX_LIKE_DATABASE_URL=database_url, HYREX_LIKE_SCHEMA=schema)
    err = tmp_path / f"err-{len(list(tmp_path.iterdir()))}.log"
    with open(err, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hyrex_like", "dashboard", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=str(APPS),
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"http://([0-9.]+):(\d+)/", line)
        assert found, (line, err.read_text())
        yield found.group(1), int(found.group(2))
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_answers_its_bound_and_allowed_host_names_only(
    registry: HyrexRegistry, database_url: str, schema: str, tmp_path: Path
) -> None:
    registry.migrate()
    with _serving(database_url, schema, tmp_path, "--host", "127.0.0.2") as (host, port):
        url = f"http://{host}:{port}/"
        assert httpx.get(url, timeout=30).status_code == 200  # Host: 127.0.0.2:port
        named = httpx.get(url, headers={"host": socket.gethostname()}, timeout=30)
        assert named.status_code == 200
        assert httpx.get(url, headers={"host": "evil.example"}, timeout=30).status_code == 400
    # open to the network with --no-auth: the Host check still stands against DNS rebinding
    args = ("--host", "0.0.0.0", "--no-auth", "--allowed-host", "dash.example")
    with _serving(database_url, schema, tmp_path, *args) as (_, port):
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url, headers={"host": "dash.example"}, timeout=30).status_code == 200
        assert httpx.get(url, headers={"host": "evil.example"}, timeout=30).status_code == 400
        assert httpx.get(url, timeout=30).status_code == 400  # 127.0.0.1 was not named
