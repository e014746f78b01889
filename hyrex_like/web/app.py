"""The dashboard's Starlette app: read-only pages rendered on the server (no JavaScript), and,
only when allowed, POST actions guarded by a CSRF token. `create_app` builds it for a
registry; ``hyrex-like dashboard`` serves it with uvicorn."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import (
    ConfigurationError,
    DatabaseError,
    HyrexLikeError,
    InvalidTaskOption,
    TaskNotFound,
    WorkflowNotFound,
    WorkflowStateError,
)
from ..registry import HyrexRegistry
from ..states import TaskStatus
from . import views
from .security import CSRF_FIELD, Csrf, Guard, read_form

MAX_REFRESH = 3600
FLASH = {
    "cancel": "Canceled.",
    "cancel_noop": "Nothing to cancel: it had ended already.",
    "retry": "Queued again for a retry.",
    "retry_noop": "Nothing to retry: only a failed or canceled task can be retried.",
    "pause": "Paused.",
    "pause_noop": "It was paused already.",
    "resume": "Resumed.",
    "resume_noop": "It was not paused: nothing changed.",
    "state": "Not possible in its current state.",
    "denied": "The database refused the change: this dashboard's role may only read "
    "(permission denied). Run it as a role allowed to change tasks.",
}
"""Messages an action redirects back with, by key: the query string carries only the key,
so nobody can make the page say something else with a crafted link."""


def _templates() -> jinja2.Environment:
    folder = resources.files("hyrex_like.web") / "templates"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=True,  # every template, whatever its name: task data is hostile
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(age=views.age, stamp=views.stamp, pretty=views.pretty, q=_q)
    env.globals.update(seconds=views.seconds_text, statuses=[s.value for s in TaskStatus])
    return env


def _q(value: object) -> str:
    """A path segment, quoted (a queue name may hold a slash)."""
    return quote(str(value), safe="")


def _permission_denied(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, psycopg.errors.InsufficientPrivilege) or (
        "InsufficientPrivilege" in str(exc) or "permission denied" in str(exc)
    )


class Dashboard:
    """The pages and actions over one registry (reads) and, optionally, the app's registry
    (its schedules: their next tick needs the app's task definitions)."""

    def __init__(
        self,
        registry: HyrexRegistry,
        *,
        allow_actions: bool,
        refresh: int,
        app_registry: HyrexRegistry | None,
    ) -> None:
        self.hy = registry
        self.app_registry = app_registry
        self.allow_actions = allow_actions
        self.refresh = refresh
        self.csrf = Csrf()
        self.env = _templates()
        self.css = (resources.files("hyrex_like.web") / "static" / "style.css").read_bytes()

    # ------------------------------------------------------------------ rendering

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        refresh: bool = True,
    ) -> HTMLResponse:
        cookie, set_cookie = self.csrf.cookie_of(request)
        seconds = self._refresh_of(request) if refresh else 0
        flash = FLASH.get(request.query_params.get("flash", ""))
        page = self.env.get_template(name).render(
            request_path=request.url.path,
            refresh=seconds,
            flash=flash,
            flash_bad=request.query_params.get("flash") == "denied",
            allow_actions=self.allow_actions,
            csrf_field=CSRF_FIELD,
            csrf=self.csrf.field_for(cookie),
            **context,
        )
        response = HTMLResponse(page, status_code=status)
        if set_cookie is not None:
            response.raw_headers.append((b"set-cookie", set_cookie))
        return response

    def _refresh_of(self, request: Request) -> int:
        given = request.query_params.get("refresh")
        if given is not None and given.isdigit():
            return min(int(given), MAX_REFRESH)
        return self.refresh

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        # only a read that failed (503) may fix itself: the other errors do not reload
        return self.render(
            request,
            "error.html",
            {"status": status, "message": message},
            status=status,
            refresh=status == 503,
        )

    # ------------------------------------------------------------------ pages

    def overview(self, request: Request) -> Response:
        at = views.now()
        queues = views.queue_rows(self.hy)
        return self.render(
            request,
            "overview.html",
            {
                "at": at,
                "queues": queues,
                "spark": views.throughput(self.hy, at),
                "workers": views.worker_rows(self.hy, at),
                "stale_after": views.STALE_AFTER,
            },
        )

    def tasks(self, request: Request) -> Response:
        p = request.query_params
        f = views.TaskFilter(
            name=p.get("name", "").strip(),
            status=p.get("status", "").strip(),
            queue=p.get("queue", "").strip(),
            since=p.get("since", "").strip(),
            after=p.get("after", "").strip(),
        )
        context: dict[str, Any] = {"f": f, "page": None, "problem": None, "older": None}
        try:
            page = views.list_tasks(self.hy, f)
        except InvalidTaskOption as exc:
            context["problem"] = str(exc)
            return self.render(request, "tasks.html", context, status=400)
        context["page"] = page
        if page.next:
            context["older"] = "/tasks?" + urlencode(f.query(after=str(page.next)))
        return self.render(request, "tasks.html", context)

    def task(self, request: Request) -> Response:
        task_id = views.parse_id(request.path_params["task_id"])
        detail = None if task_id is None else self.hy.task_detail(task_id)
        if detail is None:
            return self.error(request, 404, "No task has this id.")
        status = TaskStatus(detail.task.status)
        return self.render(
            request,
            "task.html",
            {
                "d": detail,
                "t": detail.task,
                "actions": views.task_actions(status) if self.allow_actions else [],
            },
            refresh=not views.is_final(status),
        )

    def workflows(self, request: Request) -> Response:
        name = request.query_params.get("name", "").strip()
        try:
            before = views.workflows_before(request.query_params.get("before", ""))
        except ValueError:
            return self.error(request, 400, "The 'before' cursor is not one this page made.")
        rows = self.hy.list_workflows(name=name or None, limit=50, before=before)
        older = None
        if len(rows) == 50:
            last = rows[-1]
            query = {"before": views.workflow_cursor(last.created_at, last.id)}
            if name:
                query["name"] = name
            older = "/workflows?" + urlencode(query)
        return self.render(request, "workflows.html", {"rows": rows, "name": name, "older": older})

    def workflow(self, request: Request) -> Response:
        wid = views.parse_id(request.path_params["workflow_id"])
        if wid is None:
            return self.error(request, 404, "No workflow has this id.")
        try:
            handle = self.hy.get_workflow(wid)
            steps, completed = views.step_rows(handle)
        except WorkflowNotFound:
            return self.error(request, 404, "No workflow has this id.")
        return self.render(
            request,
            "workflow.html",
            {"wf": handle, "steps": steps, "n_completed": completed, "done": handle.done},
            refresh=not handle.done,
        )

    def schedules(self, request: Request) -> Response:
        infos = None if self.app_registry is None else self.app_registry.schedules()
        return self.render(request, "schedules.html", {"infos": infos, "at": views.now()})

    def workers(self, request: Request) -> Response:
        at = views.now()
        return self.render(
            request,
            "workers.html",
            {"workers": views.worker_rows(self.hy, at), "stale_after": views.STALE_AFTER},
        )

    def style(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css; charset=utf-8")

    def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    # ------------------------------------------------------------------ actions

    async def act(self, request: Request) -> Response:
        """POST /tasks/{id}/ACTION, /queues/{name}/ACTION, /workflows/{id}/ACTION."""
        if not self.allow_actions:
            return self.error(
                request, 405, "Actions are off: start the dashboard with --allow-actions."
            )
        form = await read_form(request)
        if form is None:
            return self.error(request, 413, "The form is too large.")
        problem = self.csrf.problem(request, form)
        if problem is not None:
            return self.error(request, 403, f"Refused: {problem}.")
        kind = request.url.path.split("/")[1]
        target = request.path_params["target"]
        action = request.path_params["action"]
        back, run = self._action(kind, target, action)
        if run is None:
            return self.error(request, 404, "No such object or action.")
        try:
            flash = await run_in_threadpool(run)
        except (TaskNotFound, WorkflowNotFound):
            return self.error(request, 404, "It no longer exists.")
        except WorkflowStateError:
            flash = "state"
        except DatabaseError as exc:
            if not _permission_denied(exc):
                raise
            flash = "denied"
        return RedirectResponse(f"{back}?{urlencode({'flash': flash})}", status_code=303)

    def _action(self, kind: str, target: str, action: str) -> tuple[str, Callable[[], str] | None]:
        """Where to go back to, and the call that does ``action`` (None: there is none)."""
        hy = self.hy
        if kind == "queues":
            if action == "pause":

                def pause() -> str:
                    hy.pause_queue(target)
                    return "pause"

                return "/", pause
            if action == "resume":
                return "/", lambda: "resume" if hy.resume_queue(target) else "resume_noop"
            return "/", None
        oid = views.parse_id(target)
        if oid is None:
            return "/", None
        if kind == "tasks":
            back = f"/tasks/{oid}"
            if action == "cancel":
                return back, lambda: "cancel" if hy.cancel(oid) else "cancel_noop"
            if action == "retry":
                return back, lambda: "retry" if hy.retry(oid) else "retry_noop"
            return back, None
        back = f"/workflows/{oid}"
        if action == "pause":
            return back, lambda: "pause" if hy.get_workflow(oid).pause() else "pause_noop"
        if action == "resume":

            def resume() -> str:
                hy.get_workflow(oid).resume()  # WorkflowStateError unless paused or failed
                return "resume"

            return back, resume
        if action == "cancel":
            return back, lambda: "cancel" if hy.get_workflow(oid).cancel() else "cancel_noop"
        return back, None


def _metrics_route(hy: HyrexRegistry) -> Route | None:
    """GET /metrics with the cluster's queue gauges (`hyrex_like.metrics`), when that module
    and prometheus-client are installed: one exporter per cluster, not one per worker."""
    try:
        metrics = importlib.import_module("hyrex_like.metrics")
        registry = metrics.cluster_registry(hy)
    except (ImportError, ConfigurationError):
        return None

    def serve(request: Request) -> Response:  # sync: Starlette runs it off the event loop
        body, content_type = metrics.render(registry)
        return Response(body, headers={"content-type": content_type})

    return Route("/metrics", serve)


def create_app(
    registry: HyrexRegistry,
    *,
    allow_actions: bool = False,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    refresh: int = 5,
    app_registry: HyrexRegistry | None = None,
    allowed_hosts: Collection[str] | None = None,
) -> Guard:
    """The dashboard as an ASGI app reading through ``registry``.

    ``allow_actions``: serve the POST actions (cancel, retry, pause, resume); otherwise they
    answer 405. ``token`` / ``basic_auth`` (user, password): require them on every page but
    /healthz. ``refresh``: seconds between automatic reloads of a page (0: never).
    ``app_registry``: the app's registry, for the schedules page (next ticks).
    ``allowed_hosts``: answer only requests whose Host is one of these names (None: any); the
    CLI sets the loopback names when it listens on a loopback address."""
    if refresh < 0:
        raise ValueError(f"refresh must be 0 (off) or more seconds, not {refresh}")
    d = Dashboard(registry, allow_actions=allow_actions, refresh=refresh, app_registry=app_registry)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = {404: "No such page.", 405: "This address does not take that method."}
        return d.error(request, status, text.get(status, "The request failed."))

    async def failed(request: Request, exc: Exception) -> Response:
        # a database that is down or refuses a read: a page that says so, not a traceback
        message = str(exc) if isinstance(exc, HyrexLikeError) else type(exc).__name__
        return d.error(request, 503, f"Reading the queue failed: {message}")

    routes = [
        Route("/", d.overview),
        Route("/tasks", d.tasks),
        Route("/tasks/{task_id}", d.task),
        Route("/workflows", d.workflows),
        Route("/workflows/{workflow_id}", d.workflow),
        Route("/schedules", d.schedules),
        Route("/workers", d.workers),
        Route("/static/style.css", d.style),
        Route("/healthz", d.healthz),
        Route("/tasks/{target}/{action}", d.act, methods=["POST"]),
        Route("/workflows/{target}/{action}", d.act, methods=["POST"]),
        Route("/queues/{target:path}/{action}", d.act, methods=["POST"]),
    ]
    metrics = _metrics_route(registry)
    if metrics is not None:
        routes.append(metrics)
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: not_found, HyrexLikeError: failed},
    )
    return Guard(app, token=token, basic_auth=basic_auth, allowed_hosts=allowed_hosts)
