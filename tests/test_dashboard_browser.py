"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium, against `hyrex-like dashboard` run as a process and real workers of
tests/apps/dash_app.py.

Skipped when Chromium or its driver is missing, except under CI=true, where that fails. The
driver is always /usr/bin/chromedriver and SE_OFFLINE=1 is set: Selenium Manager never runs
and nothing is downloaded. With HYREX_LIKE_SCREENSHOTS=DIR set, a PNG of each page is saved in
DIR (docs/dashboard holds the committed ones).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg import sql

from hyrex_like import TaskStatus

from .helpers import APPS, ROOT, Worker, done, start_worker, wait_until

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)


def _require_browser() -> None:
    """Skip without Chromium, its driver or Selenium; under CI=true fail instead."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    why = "the browser tests need " + ", ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(why + " (CI=true: .ci/run installs chromium and chromium-driver)")
    pytest.skip(why)


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium at 1280x900, started through /usr/bin/chromedriver only."""
    _require_browser()
    os.environ["SE_OFFLINE"] = "1"  # read by Selenium: never run Selenium Manager
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    # An alert stays open (not dismissed by the driver) so that the hostile test can see one.
    options.unhandled_prompt_behavior = "ignore"
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # The viewport itself, not the outer window, is 1280x900 (the screenshots' size).
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    browser.set_page_load_timeout(15)
    yield browser
    browser.quit()


def body_text(browser: Any) -> str:
    """The page's visible text; '' while a meta refresh swaps the document under us."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        return str(browser.find_element("tag name", "body").text)
    except (StaleElementReferenceException, WebDriverException):
        return ""


def wait_for_text(browser: Any, *needles: str, timeout: float = 10.0) -> str:
    """Wait until the page's visible text holds every needle; returns that text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen = [""]

    def has_all(b: Any) -> bool:
        seen[0] = body_text(b)
        return all(n in seen[0] for n in needles)

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.05).until(has_all)
    except TimeoutException:
        missing = [n for n in needles if n not in seen[0]]
        raise AssertionError(
            f"{browser.current_url} never showed {missing!r}; it showed:\n{seen[0][:3000]}"
        ) from None
    return seen[0]


def screenshot(browser: Any, name: str) -> None:
    """Save the viewport as DIR/name.png when HYREX_LIKE_SCREENSHOTS=DIR is set."""
    out = os.environ.get("HYREX_LIKE_SCREENSHOTS")
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path / f"{name}.png")), f"no screenshot of {name}"


def response_status(browser: Any) -> int:
    """The HTTP status of the page now shown (0 if the browser does not say)."""
    status = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return n ? (n.responseStatus || 0) : 0;"
    )
    return int(status or 0)


# ---------------------------------------------------------------- the dashboard and its data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """`hyrex-like dashboard` as a process; ``url`` is what it printed once listening."""

    def __init__(self, database_url: str, schema: str, log_path: Path, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
        env["HYREX_LIKE_DATABASE_URL"] = database_url
        env["HYREX_LIKE_SCHEMA"] = schema
        self.log_path = log_path
        cmd = [sys.executable, "-m", "hyrex_like", "dashboard", *args]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=str(APPS),
                text=True,
                start_new_session=True,
            )
        self.url = self._read_url(timeout=30.0).rstrip("/")

    def _read_url(self, timeout: float) -> str:
        """The first stdout line holding http://, within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = self.proc.stdout.readline()
                if not line:
                    break  # exited
                for word in line.split():
                    if word.startswith("http://"):
                        return word
        finally:
            sel.close()
        self.stop()
        raise AssertionError(
            f"the dashboard printed no URL within {timeout}s (exit code {self.proc.poll()}); "
            f"its log:\n{self.log_path.read_text(errors='replace')}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Site:
    """The running dashboard and what the module's workers made for it to show."""

    url: str
    database_url: str
    schema: str
    app: Any
    workers: list[Worker]
    ids: dict[str, str] = field(default_factory=dict)

    def get(self, browser: Any, path: str) -> None:
        browser.get(self.url + path)

    def status(self, task_id: str) -> TaskStatus:
        return self.app.hy.get_handle(task_id).refresh().status  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def site(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, driver: Any
) -> Iterator[Site]:
    """A schema of its own (for the whole module: one set of workers and one dashboard),
    filled by two real workers of dash_app: completed, failed, running and delayed tasks on
    several queues, a finished workflow run and the app's two schedules."""
    from . import conftest
    from .apps import dash_app

    schema = "t_" + uuid.uuid4().hex[:16]
    conftest._schemas_made[schema] = __name__
    logs = tmp_path_factory.mktemp("dashboard")
    hy = dash_app.hy
    hy.configure(database_url=database_url, schema_name=schema)
    workers: list[Worker] = []
    dashboard: Dashboard | None = None
    try:
        workers.append(
            start_worker(
                "dash_app:hy", database_url, schema, logs / "worker-a.log",
                "-q", "emails", "-q", "billing", "-q", "default", "-q", "etl",
                "-q", "maintenance", "--processes", "2",
            )
        )  # fmt: skip
        workers.append(
            start_worker(
                "dash_app:hy", database_url, schema, logs / "worker-b.log",
                "-q", "reports", "--processes", "3", "--no-scheduler",
            )
        )  # fmt: skip
        site = Site("", database_url, schema, dash_app, workers)
        site.ids.update(_fill(dash_app))
        dashboard = Dashboard(
            database_url, schema, logs / "dashboard.log",
            "--app", "dash_app:hy", "--host", "127.0.0.1", "--port", str(free_port()),
            "--refresh", "1", "--allow-actions",
        )  # fmt: skip
        site.url = dashboard.url
        yield site
    finally:
        if dashboard is not None:
            dashboard.stop()
        for w in workers:
            w.kill()
        hy.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _fill(app: Any) -> dict[str, str]:
    """Send the module's tasks and wait until each stands where the tests expect it."""
    receipts = [
        app.send_receipt.send(app.Receipt(order_id=1000 + i, email=f"customer{i}@example.com"))
        for i in range(12)
    ]
    charges = [
        app.charge_card.send(app.Charge(customer=f"cus_{i:04d}", amount_cents=amount))
        for i, amount in enumerate((1999, 4500, -300, 1250, -75))
    ]
    newsletters = [
        app.send_newsletter.send(
            app.Receipt(order_id=i, email="list@example.com"), delay=timedelta(hours=1)
        )
        for i in range(3)
    ]
    running = app.build_report.send(
        app.Report(name="monthly-revenue", release_key=f"release:{uuid.uuid4()}", max_wait=120)
    )
    hostile = app.hostile.send(app.Hostile(html=app.HOSTILE_TEXT))
    run = app.nightly_etl.send(app.Batch(day="2026-11-30", rows=500))
    for h in [*receipts, *charges, hostile]:
        done(h)
    month = app.month_end.send(app.Month(month="2026-11", release_key=f"release:{uuid.uuid4()}"))
    run.wait(timeout=30)
    wait_until(lambda: running.refresh().status == TaskStatus.RUNNING, what="build_report to start")
    statuses = [h.status for h in charges]
    assert statuses.count(TaskStatus.FAILED) == 2, statuses
    assert hostile.status == TaskStatus.FAILED
    failed = next(h for h in charges if h.status == TaskStatus.FAILED)
    wait_until(
        lambda: month.refresh().current_step == "build_report", what="month_end's build_report"
    )
    # Ended attempts reach the overview's rates with the workers' heartbeats (every 2 s).
    wait_until(
        lambda: {(q.queue, q.failed) for q in app.hy.stats().queues} >= {("billing", 2)},
        what="the failures counted in the stats",
    )
    return {
        "failed": str(failed.id),
        "completed": str(receipts[0].id),
        "running": str(running.id),
        "hostile": str(hostile.id),
        "workflow": str(run.id),
        "delayed": str(newsletters[0].id),
    }


# ---------------------------------------------------------------- the tests


@dataclass(frozen=True)
class Page:
    name: str
    path: Callable[[Site], str]
    shows: Callable[[Site], list[str]]
    has: tuple[str, ...] = ()
    """CSS selectors that must each match something."""


PAGES = [
    Page(
        "overview",
        lambda s: "/",
        lambda s: [socket.gethostname(), "Queues", "Workers"],
        # a row per queue (not only the workers' queue lists), the rates' line
        tuple(f"a[href='/tasks?queue={q}']" for q in ("emails", "billing", "reports", "etl"))
        + ("svg polyline",),
    ),
    Page("tasks", lambda s: "/tasks", lambda s: ["send_receipt", "charge_card", "build_report"]),
    Page(
        "task",
        lambda s: f"/tasks/{s.ids['failed']}",
        lambda s: ["charge_card", "CardDeclined", "Traceback", "_authorize", "declined"],
    ),
    Page(
        "workflows",
        lambda s: "/workflows",
        lambda s: ["nightly_etl", "month_end", "build_report"],
    ),
    Page(
        "workflow",
        lambda s: f"/workflows/{s.ids['workflow']}",
        lambda s: ["nightly_etl", "extract", "transform", "load_warehouse", "load_search"],
    ),
    Page("schedules", lambda s: "/schedules", lambda s: ["rollup", "purge_sessions"]),
    Page("workers", lambda s: "/workers", lambda s: [socket.gethostname(), "reports"]),
]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_shows_what_the_workers_did(driver: Any, site: Site, page: Page) -> None:
    site.get(driver, page.path(site))
    wait_for_text(driver, *page.shows(site))
    for selector in page.has:
        assert driver.find_elements("css selector", selector), f"nothing matches {selector}"
    assert response_status(driver) in (0, 200)
    screenshot(driver, page.name)
    if page.name == "task":  # and its runs, where the traceback is
        driver.execute_script("document.querySelector('pre.traceback').scrollIntoView()")
        screenshot(driver, "task-runs")


def test_schedules_page_shows_the_next_tick(driver: Any, site: Site) -> None:
    info = {i.task_name: i for i in site.app.hy.schedules()}
    tick = info["purge_sessions"].next_tick
    site.get(driver, "/schedules")
    # The nightly tick is at least minutes away: the page cannot be showing a later one.
    wait_for_text(driver, "purge_sessions", tick.strftime("%Y-%m-%d"), tick.strftime("%H:%M"))


def test_task_page_updates_by_itself_when_the_task_finishes(driver: Any, site: Site) -> None:
    app = site.app
    key = f"release:{uuid.uuid4()}"
    handle = app.build_report.send(app.Report(name="quarterly", release_key=key))
    wait_until(lambda: handle.refresh().status == TaskStatus.RUNNING, what="the report to run")
    site.get(driver, f"/tasks/{handle.id}")
    wait_for_text(driver, "build_report", "running")
    assert driver.find_elements("css selector", "meta[http-equiv='refresh']")
    assert "completed" not in body_text(driver)
    app.hy.kv.set(key, True)
    # No driver.refresh(): the page's own meta refresh (every second here) must bring it.
    wait_for_text(driver, "completed", "report quarterly built", timeout=15)
    assert handle.refresh().status == TaskStatus.COMPLETED
    # A final task's page stops reloading itself.
    assert driver.find_elements("css selector", "meta[http-equiv='refresh']") == []


@pytest.mark.parametrize(
    "path",
    [
        lambda s: f"/tasks/{s.ids['hostile']}",
        lambda s: "/tasks",
        lambda s: "/tasks?status=failed",
        lambda s: "/tasks?" + urlencode({"name": s.app.HOSTILE_NAME}),
    ],
    ids=["task", "tasks", "failed-tasks", "filtered-by-name"],
)
def test_hostile_names_and_payloads_are_shown_inert(
    driver: Any, site: Site, path: Callable[[Site], str]
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    app = site.app
    site.get(driver, path(site))
    needles = [app.HOSTILE_NAME]
    if "/tasks/" in path(site):
        needles.append(app.HOSTILE_TEXT)  # the payload and the error message, as text
    text = wait_for_text(driver, *needles)
    if "/tasks/" in path(site):
        assert text.count(app.HOSTILE_TEXT) >= 2, "payload and error should both show"
    if "name=" in path(site):  # the filter form shows the name back, in an attribute
        field = driver.find_element("css selector", "input[name='name']")
        assert field.get_attribute("value") == app.HOSTILE_NAME
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - the property raises when no alert is open
    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    assert driver.find_elements("tag name", "script") == []
    assert driver.find_elements("css selector", "img[src='x']") == []
    assert driver.find_elements("css selector", "[onerror]") == []


def test_action_without_csrf_token_is_refused(driver: Any, site: Site) -> None:
    failed = site.ids["failed"]
    runs_before = len(site.app.hy.get_handle(failed).task_runs)
    site.get(driver, f"/tasks/{failed}")
    wait_for_text(driver, "charge_card", "failed")
    # Remove the form's token and submit in one script: a refresh cannot come in between.
    removed = driver.execute_script(
        "const f = document.querySelector(\"form[action$='/retry']\");"
        "if (!f) { return 'no retry form'; }"
        "const t = f.querySelector(\"input[name='csrf']\");"
        "if (!t) { return 'no csrf field'; }"
        "t.remove(); f.submit(); return 'submitted';"
    )
    assert removed == "submitted"
    wait_until(lambda: response_status(driver) == 403, timeout=10, what="a 403 page")
    wait_for_text(driver, "Refused")
    assert site.status(failed) == TaskStatus.FAILED
    assert len(site.app.hy.get_handle(failed).task_runs) == runs_before


def test_action_with_its_token_is_done(driver: Any, site: Site) -> None:
    """The same kind of form, untouched, works: the refusal above is the token's doing."""
    delayed = site.ids["delayed"]
    site.get(driver, f"/tasks/{delayed}")
    wait_for_text(driver, "send_newsletter", "queued")
    driver.execute_script("document.querySelector(\"form[action$='/cancel']\").submit();")
    wait_until(lambda: site.status(delayed) == TaskStatus.CANCELED, timeout=10, what="the cancel")
    wait_for_text(driver, "canceled")
