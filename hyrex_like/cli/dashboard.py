"""``hyrex-like dashboard``: serve the web dashboard (extra ``hyrex-like[web]``) with uvicorn.
Read-only unless ``--allow-actions``; on 127.0.0.1 unless told otherwise, and never on another
address without a token or basic auth unless ``--no-auth`` says so."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..registry import HyrexRegistry
from .common import APP_HELP, EXIT_USAGE, load_app

WEB_HINT = "the dashboard needs the web extra: pip install 'hyrex-like[web]'"
TOKEN_ENV = "HYREX_LIKE_DASHBOARD_TOKEN"
BASIC_AUTH_ENV = "HYREX_LIKE_DASHBOARD_BASIC_AUTH"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""The Host names a dashboard on a loopback address answers to (not a rebound DNS name)."""


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The dashboard subcommand."""
    d = sub.add_parser(
        "dashboard",
        help="serve the web dashboard (extra hyrex-like[web])",
        description="Serve a web dashboard of the queues, tasks, workflows, schedules and "
        "workers; pages render on the server (no JavaScript) and reload by themselves. It only "
        "reads unless --allow-actions is given. Prints the URL once it listens.",
    )
    d.add_argument("--app", help=f"{APP_HELP}; needed to show the schedules' next ticks")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    d.add_argument(
        "--port", type=int, default=8000, help="port to bind, 0 for any free one (default: 8000)"
    )
    d.add_argument(
        "--refresh",
        type=_refresh,
        default=5,
        metavar="SECONDS",
        help="seconds between automatic page reloads, 0 for none (default: %(default)s)",
    )
    d.add_argument(
        "--allow-actions",
        action="store_true",
        help="serve the cancel, retry, pause and resume buttons (POST forms with a CSRF "
        "token); the database role must be allowed to make those changes",
    )
    d.add_argument(
        "--token", help=f"require this token: a Bearer header, or ?token= once (env {TOKEN_ENV})"
    )
    d.add_argument(
        "--basic-auth",
        metavar="USER:PASS",
        help=f"require HTTP basic auth with this user and password (env {BASIC_AUTH_ENV})",
    )
    d.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a non-loopback --host without a token or basic auth (anyone who reaches "
        "the port sees every task's payload)",
    )
    common(d)


def _refresh(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 to 3600 seconds, got {text!r}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> int:
    print(f"hyrex-like dashboard: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _dashboard(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    basic_text = args.basic_auth or os.environ.get(BASIC_AUTH_ENV) or None
    if token and basic_text:
        return _fail("give either a token or basic auth, not both")
    try:
        import uvicorn

        from ..web import create_app
        from ..web.security import parse_basic_auth
    except ImportError as exc:
        return _fail(f"{WEB_HINT} ({exc})")
    basic = None
    if basic_text:
        try:
            basic = parse_basic_auth(basic_text)
        except ValueError:
            return _fail("--basic-auth must be USER:PASS")
    if not _is_loopback(args.host) and not (token or basic or args.no_auth):
        return _fail(
            f"--host {args.host} is reachable from other machines: give --token or "
            "--basic-auth, or --no-auth to serve it open"
        )
    if args.app:
        hy = load_app(args)
        hy.configure(auto_migrate=False)  # a viewer only reads: it never changes the schema
        app_registry: HyrexRegistry | None = hy
    else:
        settings = Settings.from_env(database_url=args.database_url, schema_name=args.schema)
        hy = HyrexRegistry(settings=settings.model_copy(update={"auto_migrate": False}))
        app_registry = None
    try:
        app = create_app(
            hy,
            allow_actions=args.allow_actions,
            token=token,
            basic_auth=basic,
            refresh=args.refresh,
            app_registry=app_registry,
            allowed_hosts=LOOPBACK_NAMES if _is_loopback(args.host) else None,
        )
        try:
            sock = _listen(args.host, args.port)
        except OSError as exc:
            return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        # the socket listens already: a client connecting now waits in its backlog
        print(f"hyrex-like dashboard on http://{shown}:{port}/", flush=True)
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        hy.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"dashboard": _dashboard}
