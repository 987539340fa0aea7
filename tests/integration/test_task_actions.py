"""Submitting, listing, retrying and cancelling tasks through the API and the CLI, over
a real SQLite store and the real app, in this process: refused input changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fleetops._clock import SystemClock
from fleetops.api._app import create_app
from fleetops.cli import _remote
from fleetops.cli._app import app as cli_app
from fleetops.cli._fleet import _time
from fleetops.queue._client import QueueClient
from fleetops.spec._loader import load_spec_text
from fleetops.store._models import MAX_AHEAD_SECONDS

SPEC = textwrap.dedent("""\
    fleet: {name: actions}
    clusters:
      front:
        agents: [{name: relay, entrypoint: "m:relay"}]
        replicas: 1
      back:
        agents: [{name: work, entrypoint: "m:work"}, {name: gate, entrypoint: "m:gate"}]
        replicas: 1
    """)
API = "http://fleet.test"


class Http:
    """A synchronous client of an ASGI app that runs, with its store's client, on an
    event loop of its own thread: what the CLI's calls reach instead of a socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self._loop = loop
        self._client = client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        call = self._client.request(method, url, **kwargs)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=60)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def __enter__(self) -> Http:  # as the CLI opens an httpx.Client for each call
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Fleet:
    """The API of a fleet that is deployed but runs no workers: tasks stay where a
    test puts them."""

    def __init__(self, http: Http, db: Path) -> None:
        self.http = http
        self.db = db

    def submit(self, **body: Any) -> httpx.Response:
        return self.http.post("/api/v1/tasks", json={"agent": "back/work", **body})

    def task(self, task_id: int) -> dict[str, Any]:
        return dict(self.http.get(f"/api/v1/tasks/{task_id}").json())

    def states(self) -> dict[int, str]:
        items = self.http.get("/api/v1/tasks", params={"limit": 1000}).json()["items"]
        return {t["id"]: t["state"] for t in items}

    def set_state(self, task_id: int, state: str) -> None:
        with contextlib.closing(sqlite3.connect(self.db)) as db, db:
            db.execute("UPDATE tasks SET state = ? WHERE id = ?", (state, task_id))

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(cli_app, [*args, "--api", API])


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    db = tmp_path / "store.db"
    plane = types.SimpleNamespace(spec=load_spec_text(SPEC), client=None, clock=SystemClock())
    app = create_app(plane)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-api", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> httpx.AsyncClient:
        plane.client = await stack.enter_async_context(QueueClient(f"sqlite:///{db}"))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=API))

    client = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
    http = Http(loop, client)
    monkeypatch.setattr(_remote.httpx, "Client", lambda **_: http)
    try:
        yield Fleet(http, db)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()


# 1. a delay, run_after or deadline too far ahead


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delay": 1e300}, "delay"),
        ({"delay": MAX_AHEAD_SECONDS + 1}, "delay"),
        ({"deadline_in": 1e300}, "deadline_in"),
        ({"run_after": 1e300}, "run_after"),
        ({"run_after": time.time() + MAX_AHEAD_SECONDS + 86400}, "run_after"),
        ({"deadline": 1e300}, "deadline"),
    ],
)
def test_the_api_refuses_a_task_scheduled_too_far_ahead(
    fleet: Fleet, body: dict[str, float], field: str
) -> None:
    answer = fleet.submit(**body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["field"] == field and problem["value"] == body[field]
    assert "10 years" in problem["fix"]
    assert fleet.states() == {}


def test_the_api_takes_a_task_scheduled_within_the_limit(fleet: Fleet) -> None:
    answer = fleet.submit(delay=MAX_AHEAD_SECONDS - 60, deadline_in=MAX_AHEAD_SECONDS)
    assert answer.status_code == 201, answer.text


def test_submit_refuses_a_delay_or_deadline_too_far_ahead_and_submits_nothing(
    fleet: Fleet,
) -> None:
    for flag in ("--delay", "--deadline"):
        result = fleet.cli("submit", "back/work", "1", flag, "100000000d")
        assert result.exit_code == 2, result.output
        assert flag in result.stderr and "100000000d" in result.stderr
        assert "3650d" in result.stderr
    assert fleet.states() == {}


@pytest.mark.parametrize("at", [1e300, 8.64e12 + 0.5, float("inf"), float("nan")])
def test_a_time_that_is_no_date_is_shown_as_its_number(at: float) -> None:
    assert _time(at) == str(at)
    assert _time(0) == "1970-01-01 00:00:00"


def test_listing_a_task_stored_for_a_time_that_is_no_date_does_not_crash(fleet: Fleet) -> None:
    """A task an older version stored due in the year 275817: the listing says when as
    a number."""
    task_id = fleet.submit(delay=60).json()["id"]
    with contextlib.closing(sqlite3.connect(fleet.db)) as db, db:
        db.execute("UPDATE tasks SET run_after = 1e300 WHERE id = ?", (task_id,))
    result = fleet.cli("tasks", "--state", "queued")
    assert result.exit_code == 0, result.output
    assert "due" in result.stdout and "1e+300" in result.stdout  # the cell may wrap


# 2. an agent no cluster names


def test_retry_dead_refuses_an_agent_no_cluster_names(fleet: Fleet) -> None:
    dead = fleet.submit().json()["id"]
    fleet.set_state(dead, "dead")
    answer = fleet.http.post("/api/v1/tasks/retry-dead", params={"agent": "nosuch"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "agent" and answer.json()["value"] == "nosuch"
    assert "gate, relay, work" in answer.json()["fix"]
    result = fleet.cli("tasks", "--retry-dead", "--agent", "nosuch")
    assert result.exit_code == 2 and "nosuch" in result.stderr
    assert fleet.task(dead)["state"] == "dead"
    # an agent of some cluster is taken without --cluster
    result = fleet.cli("tasks", "--retry-dead", "--agent", "work")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"retried": 1, "tasks": [dead]}


# 3. a body of filters, which a bulk action would ignore


@pytest.mark.parametrize(
    ("path", "params"),
    [("/api/v1/tasks/retry-dead", {}), ("/api/v1/tasks/cancel-queued", {"cluster": "back"})],
)
def test_a_bulk_action_refuses_a_body_and_changes_nothing(
    fleet: Fleet, path: str, params: dict[str, str]
) -> None:
    dead, queued = fleet.submit().json()["id"], fleet.submit().json()["id"]
    fleet.set_state(dead, "dead")
    answer = fleet.http.post(path, params=params, json={"agent": "nosuch"})
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["field"] == "body" and "nosuch" in problem["value"]
    assert "query string" in problem["fix"] and "?cluster=" in problem["fix"]
    assert fleet.states() == {dead: "dead", queued: "queued"}
    # without a body, or with one that names nothing (as generic clients send), it acts
    assert fleet.http.post(path, params=params).status_code == 200
    for empty in ("{}", "null", " "):
        answer = fleet.http.post(
            path, params=params, content=empty, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 200, (empty, answer.text)


# 4. --retry and --cancel check every id before acting on any


@pytest.mark.parametrize("order", ["good first", "bad first"])
def test_retry_of_an_unknown_task_retries_none(fleet: Fleet, order: str) -> None:
    dead = fleet.submit().json()["id"]
    fleet.set_state(dead, "dead")
    ids = [str(dead), "999999"] if order == "good first" else ["999999", str(dead)]
    result = fleet.cli("tasks", "--retry", ids[0], "--retry", ids[1])
    assert result.exit_code == 2
    assert "999999" in result.stderr and json.loads(result.stdout) == []
    assert fleet.task(dead)["state"] == "dead"


def test_cancel_of_a_parent_and_its_child_cancels_the_child_with_the_parent(fleet: Fleet) -> None:
    parent, child = fleet.submit().json()["id"], fleet.submit().json()["id"]
    with contextlib.closing(sqlite3.connect(fleet.db)) as db, db:
        db.execute("UPDATE tasks SET parent_id = ? WHERE id = ?", (parent, child))
    result = fleet.cli("tasks", "--cancel", str(parent), "--cancel", str(child))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"id": parent, "state": "cancelled", "descendants_cancelled": [child]}
    ]
    assert fleet.states() == {parent: "cancelled", child: "cancelled"}


def test_cancel_of_a_task_it_cannot_cancel_cancels_none(fleet: Fleet) -> None:
    queued, done = fleet.submit().json()["id"], fleet.submit().json()["id"]
    fleet.set_state(done, "succeeded")
    result = fleet.cli("tasks", "--cancel", str(queued), "--cancel", str(done))
    assert result.exit_code == 2
    assert f"task {done} is succeeded, so it cannot be cancelled" in result.stderr
    assert fleet.task(queued)["state"] == "queued"
    # a retry of a task that is not dead stops the cancel as well
    result = fleet.cli("tasks", "--cancel", str(queued), "--retry", str(queued))
    assert result.exit_code == 2 and "not dead" in result.stderr
    assert fleet.task(queued)["state"] == "queued"
    result = fleet.cli("tasks", "--cancel", str(queued))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"id": queued, "state": "cancelled", "descendants_cancelled": []}
    ]


# 5. the newest tasks first, and a page at a time


def ids(page: dict[str, Any]) -> list[int]:
    return [t["id"] for t in page["items"]]


def test_tasks_lists_the_newest_first_and_pages_back_to_the_oldest(fleet: Fleet) -> None:
    sent = [fleet.submit(payload=n).json()["id"] for n in range(5)]

    def listed(*args: str) -> dict[str, Any]:
        result = fleet.cli("tasks", "--json", "--limit", "2", *args)
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    first = listed()
    assert ids(first) == sent[:2:-1] and first["next_before"] == sent[3]
    second = listed("--before", str(first["next_before"]))
    assert ids(second) == [sent[2], sent[1]]
    last = listed("--before", str(second["next_before"]))
    assert ids(last) == [sent[0]] and last["next_before"] is None
    # oldest first from an id, as the API pages
    forward = listed("--after", "0")
    assert ids(forward) == sent[:2] and forward["next_after"] == sent[1]
    assert ids(listed("--after", str(sent[3]))) == [sent[4]]
    # a filter through its index, newest first
    fleet.set_state(sent[4], "dead")
    assert ids(listed("--state", "queued")) == [sent[3], sent[2]]
    assert ids(listed("--state", "dead")) == [sent[4]]


def test_tasks_says_the_command_that_lists_the_next_page(fleet: Fleet) -> None:
    sent = [fleet.submit().json()["id"] for _ in range(3)]
    result = fleet.cli("tasks", "--limit", "2", "--state", "queued")
    assert result.exit_code == 0, result.output
    assert f"older: fleetops tasks --state queued --limit 2 --before {sent[1]}" in result.stderr
    result = fleet.cli("tasks", "--limit", "2", "--after", "0")
    assert f"newer: fleetops tasks --limit 2 --after {sent[1]}" in result.stderr
    result = fleet.cli("tasks", "--limit", "4")
    assert result.exit_code == 0 and "fleetops tasks" not in result.stderr  # no next page
    # nor after a last page that is exactly full: it would lead to an empty one
    for args in (["--limit", "3"], ["--limit", "3", "--after", "0"]):
        result = fleet.cli("tasks", *args)
        assert result.exit_code == 0 and "fleetops tasks" not in result.stderr, args


def test_the_api_lists_oldest_first_unless_asked_for_the_newest(fleet: Fleet) -> None:
    sent = [fleet.submit().json()["id"] for _ in range(3)]
    page = fleet.http.get("/api/v1/tasks", params={"limit": 2}).json()
    assert ids(page) == sent[:2] and page["next_after"] == sent[1]
    assert page["next_before"] is None
    page = fleet.http.get("/api/v1/tasks", params={"limit": 2, "newest": "true"}).json()
    assert ids(page) == [sent[2], sent[1]] and page["next_before"] == sent[1]
    assert page["next_after"] is None
    page = fleet.http.get("/api/v1/tasks", params={"before": sent[1]}).json()
    assert ids(page) == [sent[0]] and page["next_before"] is None
    answer = fleet.http.get("/api/v1/tasks", params={"after": 1, "newest": "true"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "after" and "not both" in answer.json()["fix"]
    result = fleet.cli("tasks", "--after", "1", "--before", "3")
    assert result.exit_code == 2
    assert "--after: 1 with --before 3" in result.stderr and "not both" in result.stderr


# 6. a number or key out of range, named as its option, with the value and the range


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["submit", "back/work", "1", "--priority", "1001"],
            "1001 is out of range: use -1000 to 1000",
        ),
        (["submit", "back/work", "1", "--priority", "-1001"], "-1001 is out of range: use -1000"),
        (["submit", "back/work", "1", "--max-attempts", "0"], "0 is out of range: use 1 to 100"),
        (["submit", "back/work", "1", "--key", ""], "'' (0 characters) is no key: give 1 to 200"),
        (["submit", "back/work", "1", "--key", "k" * 201], "(201 characters) is no key"),
        (["tasks", "--limit", "0"], "0 is out of range: use 1 to 1000"),
        (["tasks", "--limit", "1001"], "1001 is out of range: use 1 to 1000"),
        (["tasks", "--before", "0"], f"0 is out of range: use 1 to {2**63 - 1}"),
        (["tasks", "--after", "-1"], f"-1 is out of range: use 0 to {2**63 - 1}"),
        (["events", "--limit", "0"], "0 is out of range: use 1 to 1000"),
        (["changes", "--limit", "0"], "0 is out of range: use 1 to 1000"),
    ],
)
def test_an_option_out_of_range_is_named_with_its_value_and_range(
    fleet: Fleet, args: list[str], said: str
) -> None:
    result = fleet.cli(*args)
    assert result.exit_code == 2, result.output
    stderr = " ".join(result.stderr.replace("│", " ").split())  # unwrapped from its box
    option = next(a for a in args if a.startswith("--"))
    assert f"Invalid value for '{option}': " in stderr and said in stderr
    assert "Input should be" not in stderr
    assert fleet.states() == {}


def test_submit_and_tasks_help_show_the_ranges(fleet: Fleet) -> None:
    shown = " ".join(fleet.cli("submit", "--help").stdout.replace("│", " ").split())
    assert "Higher runs first: -1000 to 1000" in shown
    assert "1 to 100" in shown and "1 to 200 characters" in shown
    shown = " ".join(fleet.cli("tasks", "--help").stdout.replace("│", " ").split())
    assert "1 to 1000 (default 20)" in shown


# 7. a cluster or agent the fleet does not have, which would list nothing


@pytest.mark.parametrize(
    ("path", "params", "field", "known"),
    [
        ("/api/v1/tasks", {"cluster": "nosuch"}, "cluster", "front, back"),
        ("/api/v1/tasks", {"agent": "nosuch"}, "agent", "gate, relay, work"),
        ("/api/v1/tasks", {"cluster": "front", "agent": "work"}, "agent", "front's agents: relay"),
        ("/api/v1/events", {"cluster": "nosuch"}, "cluster", "front, back"),
    ],
)
def test_a_listing_refuses_a_cluster_or_agent_the_fleet_does_not_have(
    fleet: Fleet, path: str, params: dict[str, str], field: str, known: str
) -> None:
    fleet.submit()
    answer = fleet.http.get(path, params=params)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["field"] == field and problem["value"] == params[field]
    assert known in problem["fix"]
    command = path.rsplit("/", 1)[1]
    result = fleet.cli(command, *(f"--{k}={v}" for k, v in params.items()))
    assert result.exit_code == 2, result.output
    assert f"{field}: invalid value {params[field]!r}" in result.stderr
    assert known in " ".join(result.stderr.split())


def test_a_listing_takes_the_fleets_clusters_and_agents_and_any_event_kind(fleet: Fleet) -> None:
    sent = fleet.submit().json()["id"]
    for args in (
        ["--cluster", "back"],
        ["--agent", "work"],
        ["--cluster", "back", "--agent", "work"],
    ):
        result = fleet.cli("tasks", "--json", *args)
        assert result.exit_code == 0, result.output
        assert ids(json.loads(result.stdout)) == [sent]
    # event kinds are open-ended (a recovery step's is its own): an unknown one finds none
    result = fleet.cli("events", "--json", "--cluster", "back", "--kind", "agent_failure.page")
    assert result.exit_code == 0 and json.loads(result.stdout) == [], result.output


def test_a_cluster_taken_out_of_the_spec_still_lists_cancels_and_retries_its_tasks(
    fleet: Fleet,
) -> None:
    """An apply that removes a cluster leaves its tasks: they are found, cancelled and
    retried by its name, which is refused only where it finds nothing (a misspelling)."""
    queued, dead = fleet.submit().json()["id"], fleet.submit().json()["id"]
    with contextlib.closing(sqlite3.connect(fleet.db)) as db, db:
        db.execute(
            "UPDATE tasks SET queue = 'gone', agent = 'old' WHERE id IN (?, ?)", (queued, dead)
        )
    fleet.set_state(dead, "dead")
    result = fleet.cli("tasks", "--json", "--cluster", "gone", "--agent", "old")
    assert result.exit_code == 0, result.output
    assert sorted(ids(json.loads(result.stdout))) == [queued, dead]
    answer = fleet.http.post("/api/v1/tasks/retry-dead", params={"cluster": "gone"})
    assert answer.status_code == 200 and answer.json()["tasks"] == [dead], answer.text
    answer = fleet.http.post("/api/v1/tasks/cancel-queued", params={"cluster": "gone"})
    assert answer.status_code == 200 and sorted(answer.json()["tasks"]) == [queued, dead]
    # with nothing left by that name, it is refused as a misspelling would be
    answer = fleet.http.post("/api/v1/tasks/cancel-queued", params={"cluster": "gone"})
    assert answer.status_code == 422 and answer.json()["field"] == "cluster", answer.text


def test_retry_of_a_dead_parent_and_its_dead_child_queues_the_child_with_the_parent(
    fleet: Fleet,
) -> None:
    """Retrying a dead letter queues its dead children again with it; the child's own
    retry, asked for in the same command, is then done already, not a refusal."""
    parent, child = fleet.submit().json()["id"], fleet.submit().json()["id"]
    with contextlib.closing(sqlite3.connect(fleet.db)) as db, db:
        db.execute("UPDATE tasks SET parent_id = ? WHERE id = ?", (parent, child))
    fleet.set_state(parent, "dead")
    fleet.set_state(child, "dead")
    result = fleet.cli("tasks", "--retry", str(parent), "--retry", str(child))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"id": parent, "state": "queued"},
        {"id": child, "state": "queued", "queued_with": parent},
    ]
    assert fleet.states() == {parent: "queued", child: "queued"}


# 8. hostile input through the API and the CLI: refused, never a 500 or a traceback


def test_a_payload_nested_too_deep_is_refused_and_a_deep_stored_one_is_still_listed(
    fleet: Fleet,
) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    answer = fleet.submit(payload=deep)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "payload" and "128" in answer.json()["fix"]
    result = fleet.cli("submit", "back/work", "[" * 5000 + "]" * 5000)
    assert result.exit_code == 2 and "nested too deep" in result.stderr, result.output
    # a result as deep (an agent's), stored: listed as its text, not a 500
    sent = fleet.submit().json()["id"]
    with contextlib.closing(sqlite3.connect(fleet.db)) as db, db:
        db.execute("UPDATE tasks SET result = ? WHERE id = ?", (json.dumps(deep), sent))
    listed = fleet.http.get("/api/v1/tasks")
    assert listed.status_code == 200, listed.text
    assert fleet.task(sent)["result"] == json.dumps(deep)
    assert fleet.states() == {sent: "queued"}  # the refused ones stored nothing


@pytest.mark.parametrize(
    ("method", "path", "request_args"),
    [
        ("POST", "/api/v1/tasks", {"content": b'{"agent": "back/\\ud800"}'}),
        ("GET", "/api/v1/tasks", {"params": {"after": -1}}),
        ("GET", "/api/v1/tasks", {"params": {"after": -(2**63) - 1}}),
        ("POST", "/api/v1/tasks/retry-dead", {"params": {"after": -(2**63) - 1}}),
        ("POST", "/api/v1/tasks/cancel-queued?cluster=back", {"content": "[" * 100_000}),
    ],
)
def test_hostile_requests_are_refused_naming_what_is_wrong_not_a_500(
    fleet: Fleet, method: str, path: str, request_args: dict[str, Any]
) -> None:
    sent = fleet.submit().json()["id"]
    headers = {"content-type": "application/json"}
    answer = fleet.http.request(method, path, headers=headers, **request_args)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"], answer.text
    assert fleet.states() == {sent: "queued"}


def test_cli_arguments_that_cannot_be_sent_are_refused_not_a_traceback(fleet: Fleet) -> None:
    result = fleet.cli("events", "--kind", "k" * 100_000)
    assert result.exit_code == 2 and "cannot be sent" in result.stderr, result.output


def test_an_apply_s_actor_and_reason_are_a_name_and_a_sentence_not_a_document(
    fleet: Fleet,
) -> None:
    for field, size in (("actor", 201), ("reason", 2001)):
        answer = fleet.http.post("/api/v1/apply", json={"spec": SPEC, field: "x" * size})
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
