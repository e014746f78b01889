"""The dashboard's guards: response headers, token or basic auth, and the CSRF check of the
action forms. Pure ASGI middleware plus small functions; no state but a per-process secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADERS: dict[str, str] = {
    "content-security-policy": (
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
"""Set on every response: no script runs, nothing is framed, nothing is cached or leaked."""

TOKEN_COOKIE = "hl_token"
CSRF_COOKIE = "hl_csrf"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 8192
OPEN_PATHS = frozenset({"/healthz"})
"""Answered without auth: it tells nothing but that the process is up."""


def _cookie(name: str, value: str) -> bytes:
    return f"{name}={value}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def parse_basic_auth(text: str) -> tuple[str, str]:
    """``USER:PASS`` as (user, password); ValueError when there is no colon or no user."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ValueError("expected USER:PASS")
    return user, password


class Guard:
    """ASGI middleware: adds `HEADERS` to every response; answers 400 to a Host header not in
    ``allowed_hosts`` (when given); and, when a token or a basic-auth pair is set, answers 401
    to any request that does not carry it.

    A token is accepted as ``Authorization: Bearer T``, as the ``hl_token`` cookie, or once as
    ``?token=T``, which sets that cookie (HttpOnly, SameSite=Strict) and redirects to the same
    URL without it, so the token leaves the address bar and the history."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        basic_auth: tuple[str, str] | None,
        allowed_hosts: Collection[str] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.basic_auth = basic_auth
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() not in HEADERS
                ]
                kept += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                message["headers"] = kept
            await send(message)

        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
            return
        status, headers = refusal
        await send_with_headers(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        body = {
            303: b"",
            400: b"400 Bad Request: this dashboard does not answer to that host name\n",
        }.get(status, b"401 Unauthorized: this dashboard needs credentials\n")
        await send_with_headers({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        """None to let the request through, else the status and headers to answer with."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None:
            # a page on another site whose name was made to resolve to 127.0.0.1 (DNS
            # rebinding) sends its own name as Host: refused, so it cannot read these pages
            try:
                host = urlsplit("//" + headers.get("host", "")).hostname
            except ValueError:
                host = None
            if host is None or host not in self.allowed_hosts:
                return 400, [(b"content-type", b"text/plain; charset=utf-8")]
        if (self.token is None and self.basic_auth is None) or scope["path"] in OPEN_PATHS:
            return None
        authorization = headers.get("authorization", "")
        text = [("content-type", "text/plain; charset=utf-8")]
        if self.basic_auth is not None:
            if self._basic_ok(authorization):
                return None
            text.append(("www-authenticate", 'Basic realm="hyrex-like", charset="UTF-8"'))
            return 401, [(k.encode(), v.encode()) for k, v in text]
        assert self.token is not None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), self.token):
            return None
        cookies = Request(scope).cookies
        if _same(cookies.get(TOKEN_COOKIE, ""), self.token):
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        offered = [v for k, v in query if k == "token"]
        if offered and _same(offered[-1], self.token):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            return 303, [
                (b"location", location.encode("latin-1", "replace")),
                (b"set-cookie", _cookie(TOKEN_COOKIE, self.token)),
            ]
        text.append(("www-authenticate", 'Bearer realm="hyrex-like"'))
        return 401, [(k.encode(), v.encode()) for k, v in text]

    def _basic_ok(self, authorization: str) -> bool:
        assert self.basic_auth is not None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # both compared, always: the time taken does not tell which one was wrong
        user_ok = _same(user, self.basic_auth[0])
        password_ok = _same(password, self.basic_auth[1])
        return user_ok and password_ok


class Csrf:
    """Double-submit CSRF tokens: a random cookie, and in each form the HMAC of that cookie
    under a secret made when the process starts (a page from a previous process gets a 403
    and a reload fixes it)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def field_for(self, cookie: str) -> str:
        return hmac.new(self._secret, cookie.encode("utf-8"), hashlib.sha256).hexdigest()

    def cookie_of(self, request: Request) -> tuple[str, bytes | None]:
        """The request's CSRF cookie, or a new one with its Set-Cookie header value."""
        current = request.cookies.get(CSRF_COOKIE, "")
        if len(current) >= 32:
            return current, None
        fresh = secrets.token_urlsafe(32)
        return fresh, _cookie(CSRF_COOKIE, fresh)

    def problem(self, request: Request, form: dict[str, str]) -> str | None:
        """Why this POST is refused (None: it may go on): a missing or wrong token, or an
        Origin/Referer naming another host than the one the request was sent to."""
        host = request.headers.get("host", "").lower()
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site != "same-origin":
            return "the request comes from another site"
        # Under Referrer-Policy no-referrer a browser sends `Origin: null` and no Referer on a
        # same-origin POST; Sec-Fetch-Site (sent by current browsers) still says where it came from
        origin = request.headers.get("origin")
        source = origin if origin not in (None, "null") else request.headers.get("referer")
        if source:
            if urlsplit(source).netloc.lower() != host:
                return "the request comes from another site"
        elif fetch_site is None:
            return "the request names no Origin, Referer or Sec-Fetch-Site"
        cookie = request.cookies.get(CSRF_COOKIE, "")
        given = form.get(CSRF_FIELD, "")
        if not cookie or not given:
            return "the form carries no CSRF token"
        if not hmac.compare_digest(self.field_for(cookie).encode(), given.encode("utf-8")):
            return "the form's CSRF token is wrong (reload the page and try again)"
        return None


async def read_form(request: Request) -> dict[str, str] | None:
    """An urlencoded body of at most `MAX_FORM_BYTES` as a dict; None when it is larger."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
