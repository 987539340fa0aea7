"""The dashboard in a real browser, against a real fleet under load.

Debian's Chromium, driven by Playwright (no browser download), opens the dashboard of
the support-desk example while requests flow into ``intake/classify``: the overview
shows the clusters, the charts have data and move, a task opens with its attempts,
effects and trace, log search finds lines, the views switch from the keyboard, and
without the chart library the charts fall back to plain SVG. Screenshots go to
``artifacts/`` so a person can see what the browser saw.

When Chromium is missing these tests fail (they do not skip): CI must run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from fleetops.store import open_store

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "support-desk"
ARTIFACTS = REPO / "artifacts"
CHART_LIBRARY = REPO / ".dashboard-deps" / "node_modules" / "uplot" / "dist" / "uPlot.esm.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}  # a laptop screen
REQUESTS_PER_SECOND = 4.0
CLUSTERS = ["intake", "research", "review"]


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the support-desk example, without the state of earlier runs."""
    fleet_dir = tmp_path_factory.mktemp("support-desk")
    shutil.copytree(
        EXAMPLE_DIR,
        fleet_dir,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".fleetops", "__pycache__"),
    )
    return fleet_dir


@pytest.fixture(scope="module")
def fleet_api(fleet_dir: Path) -> Iterator[str]:
    """The support-desk fleet deployed with ``fleetops up``; its API's URL."""
    stderr_path = fleet_dir / "up.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetops.cli", "up", "fleet.yaml"]
            + ["--json", "--no-live", "--api-port", "0"],
            cwd=fleet_dir,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=dict(os.environ, COLUMNS="200"),
        )
    assert proc.stdout is not None
    try:
        report = json.loads(proc.stdout.readline() or "{}")
        assert report.get("deployment_successful"), (report, stderr_path.read_text())
        yield str(report["api_url"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr_path.read_text()


@pytest.fixture(scope="module")
def load(fleet_dir: Path, fleet_api: str) -> Iterator[list[int]]:
    """Customer requests into intake/classify from a background thread; their task ids."""
    out = subprocess.run(
        [sys.executable, "-m", "support_desk.workload", "--count", "600", "--seed", "21"],
        cwd=fleet_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = [json.loads(line) for line in out.splitlines()]
    submitted: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def drive() -> None:
        with httpx.Client(base_url=fleet_api, timeout=10) as http:
            for request in requests:
                body = {"agent": "intake/classify", "payload": request}
                try:
                    answer = http.post("/api/v1/tasks", json=body)
                    answer.raise_for_status()
                    submitted.append(int(answer.json()["id"]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                if stop.wait(1 / REQUESTS_PER_SECOND):
                    return

    thread = threading.Thread(target=drive, name="dashboard-load", daemon=True)
    thread.start()
    try:
        yield submitted
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not failures, failures[:3]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: "
            "apt-get install -y --no-install-recommends chromium"
        )
    # a loaded CI machine shares two cores with the fleet: give assertions time
    expect.set_options(timeout=15_000)
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def page(browser: Browser, fleet_api: str, load: list[int]) -> Iterator[Page]:
    """A fresh page at laptop size; fails the test on any uncaught script error."""
    context = browser.new_context(viewport=VIEWPORT, base_url=fleet_api)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors


def screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=full_page)


def open_dashboard(page: Page, route: str = "") -> None:
    page.goto(f"/?refresh=2{'#' + route if route else ''}")
    expect(page.locator("#connection")).to_contain_text("Live")


def chart_state(page: Page) -> dict[str, dict[str, Any]]:
    """Every chart's id, number of points with a value, newest timestamp and renderer."""
    state: dict[str, dict[str, Any]] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("figure.chart")].map((f) => [
            f.id, {points: Number(f.dataset.points || 0), lastTs: Number(f.dataset.lastTs || 0),
                   renderer: f.dataset.renderer || null, error: f.dataset.error || null}]))"""
    )
    return state


HAS_THROUGHPUT = "() => Number(document.querySelector('#chart-throughput').dataset.points) > 0"
ALL_DRAWN = "() => [...document.querySelectorAll('figure.chart')].every(f => f.dataset.renderer)"
AT_LEAST_FIVE_WITH_DATA = (
    "() => [...document.querySelectorAll('figure.chart')]"
    ".filter(f => Number(f.dataset.points) > 0).length >= 5"
)


def wait_for_charts(page: Page, condition: str, arg: Any = None, timeout: float = 20_000) -> None:
    """Wait until the JS ``condition`` holds; on time-out, fail with every chart's state."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout)
    except PlaywrightTimeout:
        pytest.fail(f"charts not as expected within {timeout / 1000:g} s: {chart_state(page)}")


def test_overview_shows_every_cluster_with_its_workers(page: Page, fleet_dir: Path) -> None:
    earlier = open_store(f"sqlite:///{fleet_dir / '.fleetops' / 'fleet.db'}")
    try:  # a worker of an earlier run, stopped: listed only when asked for
        earlier.register_worker("intake-earlier", "intake", 1, "h", 4, time.time() - 60)
        earlier.set_worker_state("intake-earlier", "stopped", time.time() - 30)
    finally:
        earlier.close()
    open_dashboard(page)
    expect(page.locator("#fleet-name")).to_have_text("support-desk")
    cards = page.locator("#cluster-cards .card")
    expect(cards).to_have_count(len(CLUSTERS))
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.cluster)") == CLUSTERS
    for name in CLUSTERS:
        card = page.locator(f'.card[data-cluster="{name}"]')
        expect(card.locator(".workers")).to_have_text("2 / 2")
        expect(card.locator(".badge")).to_have_text("healthy")
        expect(card).to_contain_text("tasks in flight")
    workers = page.locator("#workers-table tbody tr")
    expect(workers).to_have_count(6)
    page.locator("#workers-all").check()
    expect(workers).to_have_count(7)
    expect(workers.filter(has_text="intake-earlier")).to_contain_text("stopped")
    page.locator("#workers-all").uncheck()
    expect(workers).to_have_count(6)
    expect(page.locator("#readiness .score strong")).to_have_text(re.compile(r"^\d+$"))
    assert page.locator("#readiness .checks li").count() >= 5
    # the work is flowing: some tasks have succeeded by the next refresh
    page.wait_for_function(
        """() => [...document.querySelectorAll('.card .note')]
            .some((n) => /^[1-9][0-9,]* succeeded/.test(n.textContent))"""
    )
    screenshot(page, "dashboard-overview.png")


def test_a_task_opens_with_attempts_effects_and_trace(page: Page) -> None:
    open_dashboard(page, "tasks")
    form = page.locator("#task-filters")
    form.get_by_label("State").select_option("succeeded")
    form.get_by_label("Cluster").select_option("intake")
    form.get_by_label("Agent").fill("classify")
    form.get_by_role("button", name="Search").click()
    task_list = page.locator("#task-list")
    query = {"state": "succeeded", "cluster": "intake", "agent": "classify"}
    expect(task_list).to_have_attribute("data-query", json.dumps(query, separators=(",", ":")))
    expect(task_list).to_have_attribute("aria-busy", "false")
    rows = task_list.locator("tbody tr")
    assert set(rows.locator("td:nth-child(2)").all_text_contents()) == {"intake/classify"}
    assert {r.get_attribute("data-state") for r in rows.all()} == {"succeeded"}
    task_id = rows.first.get_attribute("data-task-id")
    task_list.get_by_role("link", name=f"task {task_id}", exact=True).click()
    expect(page).to_have_url(f"{page.url.split('#')[0]}#tasks/{task_id}")
    detail = page.locator("#task-detail")
    expect(detail.locator("h3")).to_contain_text(f"Task #{task_id}")
    expect(detail.locator("h3")).to_contain_text("intake/classify")
    expect(detail.locator("#task-attempts tbody tr").first).to_contain_text("succeeded")
    expect(detail.locator("#task-effects")).to_contain_text("deliver_reply")
    # workers send spans in batches: the trace fills in by itself a few seconds later
    spans = detail.locator("#task-trace .span-row")
    expect(spans.first).to_contain_text("invoke_agent classify", timeout=20_000)
    # its spans may come in two batches (a worker writes them every 2 s): wait for 3
    expect(spans.nth(2)).to_be_attached(timeout=20_000)
    assert spans.count() >= 3
    names = spans.evaluate_all("rows => rows.map(r => r.textContent)")
    assert any(n.startswith("chat ") for n in names), names
    # a span's attributes, from the keyboard
    spans.first.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(detail.locator(".span-attrs table")).to_be_visible()
    expect(spans.nth(1)).to_have_attribute("aria-pressed", "true")
    screenshot(page, "dashboard-task.png")
    # the detail panel scrolls by itself: bring its trace to the top for the picture
    page.locator("#task-trace-title").evaluate(
        "title => { const panel = title.closest('#task-detail');"
        " panel.scrollTop = title.offsetTop - panel.offsetTop - 8; }"
    )
    screenshot(page, "dashboard-trace.png")


def test_a_dead_letter_is_retried_from_its_page(page: Page, fleet_api: str) -> None:
    """A request the intake agent cannot read fails all its attempts; the Retry button
    on its page queues it again, and it runs again (and, unchanged, fails again)."""
    with httpx.Client(base_url=fleet_api, timeout=10) as http:
        body = {"agent": "intake/classify", "payload": {"not": "a customer request"}}
        task_id = http.post("/api/v1/tasks", json=body).json()["id"]
        for _ in range(300):
            task = http.get(f"/api/v1/tasks/{task_id}").json()
            if task["state"] == "dead":
                break
            page.wait_for_timeout(100)
        assert task["state"] == "dead", task
    first = len(task["attempt_history"])
    open_dashboard(page, f"tasks/{task_id}")
    detail = page.locator("#task-detail")
    expect(detail.locator("h3")).to_contain_text(f"Task #{task_id}")
    expect(detail.locator("#task-cancel")).to_have_count(0)  # a dead task cannot be cancelled
    attempts = detail.locator("#task-attempts tbody tr")
    expect(attempts).to_have_count(first)
    detail.get_by_role("button", name="Retry").click()
    # the page follows the task as it runs again: more attempts than before
    expect(attempts.nth(first)).to_be_attached(timeout=30_000)
    screenshot(page, "dashboard-retried.png")


def test_log_search_finds_the_replies(page: Page) -> None:
    open_dashboard(page)
    page.keyboard.press("4")  # jump to Logs
    expect(page.locator("#tab-logs")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("/")  # focuses the search box
    expect(page.locator("#log-q")).to_be_focused()
    page.keyboard.type("support_desk.replied")
    page.keyboard.press("Enter")
    rows = page.locator("#log-table tbody tr")
    expect(rows.first).to_contain_text("support_desk.replied")
    # the table is redrawn when the answer arrives: wait until no other event is shown
    expect(rows.filter(has_not_text="support_desk.replied")).to_have_count(0)
    events = rows.locator("td:nth-child(3)").all_text_contents()
    assert events and set(events) == {"support_desk.replied"}, events
    screenshot(page, "dashboard-logs.png")


def test_views_switch_from_the_keyboard_and_alerts_show_an_empty_state(page: Page) -> None:
    open_dashboard(page)
    page.keyboard.press("Tab")  # the skip link comes first
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#tab-overview")).to_be_focused()
    page.keyboard.press("End")
    expect(page.locator("#tab-alerts")).to_be_focused()
    expect(page.locator("#tab-alerts")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#view-alerts")).to_be_visible()
    expect(page.locator("#view-overview")).to_be_hidden()
    expect(page.locator("#alerts-list")).to_contain_text("No alert is firing.")
    expect(page.locator("#incidents-list")).to_contain_text("No open incident.")
    page.keyboard.press("ArrowRight")  # wraps around to the first view
    expect(page.locator("#tab-overview")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#tab-logs")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(page.locator("#view-overview")).to_be_visible()
    # only the selected tab is in the tab order
    assert page.locator('[role="tab"][tabindex="0"]').count() == 1


def test_charts_have_data_and_update_in_place(page: Page) -> None:
    open_dashboard(page)
    page.locator("#tab-overview").focus()
    page.keyboard.press("ArrowRight")  # the tabs follow the keyboard: on to Metrics
    expect(page.locator("#tab-metrics")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#view-metrics")).to_be_visible()
    charts = page.locator("figure.chart")
    expect(charts).to_have_count(9)
    page.get_by_label("Range").select_option("5m")
    wait_for_charts(page, HAS_THROUGHPUT)
    wait_for_charts(page, HAS_THROUGHPUT.replace("throughput", "utilization"))
    before = chart_state(page)["chart-throughput"]
    # new points arrive without a reload: a later newest point, and more of them
    wait_for_charts(
        page,
        """([ts, n]) => {
            const f = document.querySelector('#chart-throughput');
            return Number(f.dataset.lastTs) > ts && Number(f.dataset.points) > n;
        }""",
        arg=[before["lastTs"], before["points"]],
        timeout=30_000,
    )
    wait_for_charts(page, ALL_DRAWN)
    # quantile charts need two history samples with new observations in between:
    # on a loaded machine they may come a refresh or two after the rates
    wait_for_charts(page, AT_LEAST_FIVE_WITH_DATA, timeout=60_000)
    after = chart_state(page)
    with_data = [name for name, chart in after.items() if chart["points"] > 0]
    assert len(with_data) >= 5, after
    assert not [c["error"] for c in after.values() if c["error"]], after
    expected = "uplot" if CHART_LIBRARY.exists() else "svg"
    assert page.evaluate("document.body.dataset.charts") == expected
    assert {c["renderer"] for c in after.values()} == {expected}
    # the legend reads out the latest value of each cluster
    legend = page.locator("#chart-throughput .legend")
    for name in CLUSTERS:
        expect(legend).to_contain_text(name)
    page.wait_for_timeout(500)  # let the last redraw settle before the picture
    screenshot(page, "dashboard-metrics.png", full_page=True)


def test_without_the_chart_library_and_history_charts_are_svg_of_sampled_metrics(
    page: Page,
) -> None:
    # as an installed fleetops without the npm package, on an API without metric history
    page.route("**/static/vendor/**", lambda route: route.abort())
    page.route(
        "**/api/v1/metrics/query?**",
        lambda route: route.fulfill(status=404, json={"detail": "Not Found"}),
    )
    open_dashboard(page, "metrics")
    expect(page.locator("#chart-library")).to_contain_text("plain SVG")
    expect(page.locator("#metrics-source")).to_contain_text("sampled from /metrics")
    # two samples of /metrics make the first rates and quantiles
    wait_for_charts(page, HAS_THROUGHPUT)
    wait_for_charts(page, ALL_DRAWN)
    # a quantile needs tasks finished between two samples, which a loaded machine may
    # not have had when the first rate came
    wait_for_charts(page, HAS_THROUGHPUT.replace("chart-throughput", "chart-latency"))
    state = chart_state(page)
    assert {c["renderer"] for c in state.values()} == {"svg"}
    assert not [c["error"] for c in state.values() if c["error"]], state
    # a line needs two rates, one more sample
    wait_for_charts(page, HAS_THROUGHPUT.replace("> 0", "> 3"))
    expect(page.locator("#chart-throughput svg path").first).to_be_attached()
    screenshot(page, "dashboard-metrics-svg.png")
