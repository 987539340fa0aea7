"""The support-desk example fleet: its spec, its agents end to end, its tools and workload.

The three clusters run in this process, one Worker each, on one real SQLite file, with
a fast simulated LLM that never fails, so every outcome is deterministic.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from _polling import wait_until
from fleetops import Context, RetryPolicy, TaskInfo
from fleetops.providers import Gateway, LatencyModel, SimulatedProvider
from fleetops.queue import QueueClient
from fleetops.runtime import AgentSpec, Worker, WorkerSettings, agent, load_agent
from fleetops.spec import FleetSpec, check_spec, format_issues
from fleetops.store import TERMINAL_STATES, NewTask, TaskRecord

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "support-desk"
SPEC_PATH = EXAMPLE_DIR / "fleet.yaml"
SEED = 11
REQUESTS = 20
LLM_CALLS_PER_REQUEST = 6  # summary, two ReAct steps, three reviewer comments


def example(module: str) -> ModuleType:
    """A module of the example's package, imported as a worker would: from the spec's dir."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    return importlib.import_module(f"support_desk.{module}")


def load_fleet() -> FleetSpec:
    spec = check_spec(SPEC_PATH)
    assert isinstance(spec, FleetSpec), format_issues(spec)
    return spec


def cluster_agents(spec: FleetSpec, cluster: str) -> dict[str, AgentSpec]:
    """The cluster's agents under their spec names, with the spec's timeouts and retries."""
    example("agents")
    agents = {}
    for definition in spec.clusters[cluster].agents:
        loaded = load_agent(definition.entrypoint)
        agents[definition.name] = replace(
            loaded,
            name=definition.name,
            timeout=definition.timeout if definition.timeout is not None else loaded.timeout,
            retry=definition.retry.policy() if definition.retry is not None else loaded.retry,
        )
    return agents


def fast_gateway() -> tuple[Gateway, SimulatedProvider]:
    provider = SimulatedProvider(
        seed=SEED,
        error_rate=0,
        rate_limit_rate=0,
        latency=LatencyModel(median=0.001, p95=0.002),
    )
    return Gateway([provider]), provider


Body = Callable[[QueueClient], Awaitable[None]]


async def run_fleet(
    url: str,
    body: Body,
    gateway: Gateway,
    extra_agents: dict[str, dict[str, AgentSpec]] | None = None,
) -> None:
    """Run one worker per cluster of the spec while ``body`` runs."""
    spec = load_fleet()
    async with QueueClient(url) as client:
        workers = []
        for name, cluster in spec.clusters.items():
            agents = cluster_agents(spec, name) | (extra_agents or {}).get(name, {})
            workers.append(
                Worker(
                    client,
                    worker_id=f"w-{name}",
                    cluster=name,
                    agents=agents,
                    settings=WorkerSettings(concurrency=cluster.concurrency, shutdown_grace=1.0),
                    gateway=gateway,
                    routes=list(cluster.routes),
                )
            )
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for worker in workers:
                tg.create_task(worker.run(stop), name=worker.worker_id)
            try:
                await body(client)
            finally:
                stop.set()


async def wait_terminal(
    client: QueueClient, ids: list[int], within: float = 20
) -> list[TaskRecord]:
    async def all_done() -> bool:
        records = await client.run(client.store.get_tasks, ids)
        return len(records) == len(ids) and all(r.state in TERMINAL_STATES for r in records)

    await wait_until(all_done, within=within)
    records = await client.run(client.store.get_tasks, ids)
    return sorted(records, key=lambda r: ids.index(r.id))


def registered(fn: Any) -> AgentSpec:
    found: AgentSpec = fn.__fleetops_agent__
    return found


def result_of(record: TaskRecord) -> Any:
    assert record.state == "succeeded", (record.agent, record.error, record.dead_reason)
    return json.loads(record.result or "null")


# --- the spec ----------------------------------------------------------------------------------


def test_spec_is_valid_and_its_entrypoints_load() -> None:
    spec = load_fleet()
    assert spec.fleet.name == "support-desk"
    assert list(spec.clusters) == ["intake", "research", "review"]
    assert {n: c.replicas for n, c in spec.clusters.items()} == {
        "intake": 2,
        "research": 2,
        "review": 2,
    }
    assert spec.clusters["intake"].routes == ("research",)
    assert spec.clusters["research"].routes == ("review",)
    for cluster in spec.clusters.values():
        quotas = cluster.resource_quotas
        assert None not in (
            quotas.max_agents,
            quotas.max_concurrent_tasks,
            quotas.tokens_per_minute,
            quotas.cost_per_hour,
        )
    simulated = spec.provider_for("research")
    assert simulated.kind == "simulated" and simulated.seed == 7
    assert 0 < simulated.error_rate <= 0.05 and 0 < simulated.rate_limit_rate <= 0.05
    assert simulated.latency.median == pytest.approx(0.05)
    # every waiting caller must leave the cluster it calls a slot to run in
    slots = {n: c.replicas * c.concurrency for n, c in spec.clusters.items()}
    assert slots["research"] >= slots["intake"]
    assert slots["review"] >= 4 * slots["intake"]  # each review and its three reviewers
    loaded = {n: set(cluster_agents(spec, n)) for n in spec.clusters}
    assert loaded == {
        "intake": {"classify"},
        "research": {"investigate"},
        "review": {"review", "reviewer"},
    }


# --- end to end --------------------------------------------------------------------------------


def test_requests_are_classified_researched_reviewed_and_delivered_once(tmp_path: Path) -> None:
    workload = example("workload")
    outbox_mod = example("outbox")
    outbox = tmp_path / "outbox.jsonl"
    requests = workload.generate_requests(REQUESTS, seed=SEED)
    gateway, provider = fast_gateway()
    results: list[dict[str, Any]] = []

    async def body(client: QueueClient) -> None:
        ids = []
        for request in requests:
            submitted = await client.submit(
                NewTask("intake", "classify", json.dumps({**request, "outbox": str(outbox)}))
            )
            ids.append(submitted.id)
        results.extend(result_of(r) for r in await wait_terminal(client, ids))
        # every task of the fleet succeeded at its first attempt
        tasks = await client.run(client.store.list_tasks, None, None, None, 1000)
        assert len(tasks) == REQUESTS * 6  # classify, investigate, review, 3 reviewers
        assert {t.state for t in tasks} == {"succeeded"}
        assert all(t.attempts == 1 for t in tasks)
        # each turn of a ReAct loop is journaled, so a redelivered loop replays it
        research = [t for t in tasks if t.agent == "investigate"]
        for task in research:
            effects = await client.run(client.store.effects, task.id)
            assert [(e.key, e.state) for e in effects] == [
                ("react-step-1", "done"),
                ("react-step-2", "done"),
            ]

    asyncio.run(run_fleet(f"sqlite:///{tmp_path / 'fleet.db'}", body, gateway))

    assert [r["request_id"] for r in results] == [q["request_id"] for q in requests]
    assert provider.calls == REQUESTS * LLM_CALLS_PER_REQUEST
    categories = {r["category"] for r in results}
    assert categories <= {"order_status", "refund", "technical", "other"}
    assert len(categories) >= 3
    for request, result in zip(requests, results, strict=True):
        # research ran a real ReAct loop: a tool call, its result, then a final answer
        research = result["research"]
        assert research["complete"] and research["steps"] == 2
        assert research["tool_calls"], result
        for call in research["tool_calls"]:
            assert call["tool"] in {"search_kb", "lookup_order"}
            if call["tool"] == "lookup_order" and result["order_number"] in _known_orders():
                assert call["found"] and call["refs"] == [result["order_number"]]
        # three reviewers voted; the verdict is their majority
        review = result["review"]
        assert [v["reviewer"] for v in review["votes"]] == [
            "fact_checker",
            "policy_officer",
            "customer_advocate",
        ]
        approvals = sum(v["vote"] == "approve" for v in review["votes"])
        assert review["approvals"] == approvals
        assert review["verdict"] == ("approve" if approvals >= 2 else "reject")
        assert review["consensus"] is True  # nobody abstained
        assert all(v["reason"] and v["note"] for v in review["votes"])
        expected = "sent" if review["verdict"] == "approve" else "escalated"
        assert result["status"] == expected
        assert result["summary"] and result["customer"] == request["customer"]
        assert result["delivery"]["written"] is True
    # an unknown order number is never answered as if it existed
    unknown = [r for r in results if r["order_number"] and r["order_number"] not in _known_orders()]
    assert all(r["status"] == "escalated" for r in unknown)
    assert {r["status"] for r in results} == {"sent", "escalated"}

    lines = outbox_mod.read_outbox(outbox)
    assert len(lines) == REQUESTS  # exactly one reply per request
    assert sorted(line["request_id"] for line in lines) == sorted(q["request_id"] for q in requests)
    by_request = {line["request_id"]: line for line in lines}
    for result in results:
        line = by_request[result["request_id"]]
        assert line["key"] == result["delivery"]["key"]
        assert (line["status"], line["reply"]) == (result["status"], result["reply"])


def _known_orders() -> set[str]:
    return set(example("orders").default_order_book().numbers())


async def answer_all(
    url: str, requests: list[dict[str, Any]], outbox: Path, gateway: Gateway
) -> list[dict[str, Any]]:
    """Submit ``requests`` to intake/classify and answer their results, in order."""
    answered: list[dict[str, Any]] = []

    async def body(client: QueueClient) -> None:
        ids = []
        for request in requests:
            payload = json.dumps({**request, "outbox": str(outbox)})
            ids.append((await client.submit(NewTask("intake", "classify", payload))).id)
        answered.extend(result_of(r) for r in await wait_terminal(client, ids, within=25))

    await run_fleet(url, body, gateway)
    return answered


def test_the_same_seed_gives_the_same_replies(tmp_path: Path) -> None:
    requests = example("workload").generate_requests(6, seed=SEED)
    runs = []
    for run in ("first", "second"):
        gateway, _ = fast_gateway()
        url = f"sqlite:///{tmp_path / f'{run}.db'}"
        runs.append(asyncio.run(answer_all(url, requests, tmp_path / f"{run}.jsonl", gateway)))
    # everything but the delivery key, which names the task id the store happened to give
    first, second = ([{k: v for k, v in r.items() if k != "delivery"} for r in run] for run in runs)
    assert first == second


def test_the_specs_flaky_provider_loses_no_request(tmp_path: Path) -> None:
    """The spec's own simulated LLM (seeded 503s and 429s, real latency) and token quotas:
    the gateway's retries and the agents' fallbacks hide every failure from the customer."""
    spec = load_fleet()
    gateway = Gateway(spec.build_providers(), tokens_per_minute=spec.tokens_per_minute())
    requests = example("workload").generate_requests(12, seed=SEED)
    outbox = tmp_path / "outbox.jsonl"
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    results = asyncio.run(answer_all(url, requests, outbox, gateway))
    failed = [r for r in gateway.stats.records if r.outcome != "ok"]
    assert {r.outcome for r in failed} >= {"rate_limited"}, "the seed makes some calls fail"
    assert len(results) == len(requests)
    assert all(r["review"] is not None and len(r["review"]["votes"]) == 3 for r in results)
    lines = example("outbox").read_outbox(outbox)
    assert sorted(line["request_id"] for line in lines) == sorted(r["request_id"] for r in requests)


# --- redelivery --------------------------------------------------------------------------------

ATTEMPTS: dict[int, int] = {}


@agent(name="deliver_flaky", retry=RetryPolicy(max_attempts=3, backoff_base=0.0))
async def deliver_flaky(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    """Delivers like classify, through crashes at the worst moments.

    Attempt 1 dies *while* delivering: the outbox got the line but the effect was never
    journaled, so attempt 2 runs the delivery again with the same key. Attempt 2 dies
    *after* delivering: attempt 3 gets the journaled result back without sending.
    """
    agents = example("agents")
    outbox_mod = example("outbox")
    outbox = Path(task.payload["outbox"])
    record = {"request_id": task.payload["request_id"], "status": "sent", "reply": "Hello!"}
    ATTEMPTS[task.id] = ATTEMPTS.get(task.id, 0) + 1
    if task.attempt == 1:

        def sent_then_crashed(call: Any) -> None:
            outbox_mod.append_once(outbox, call.key, record)
            raise ConnectionResetError("the line went dead before the outbox answered")

        await ctx.effect(agents.DELIVER_EFFECT, sent_then_crashed)
    delivery: dict[str, Any] = await agents.deliver_reply(ctx, outbox, record)
    if task.attempt == 2:
        raise RuntimeError("crashed after delivering")
    return delivery


def test_redelivery_never_sends_a_reply_twice(tmp_path: Path) -> None:
    outbox_mod = example("outbox")
    outbox = tmp_path / "outbox.jsonl"
    gateway, _ = fast_gateway()
    extra = {"intake": {"deliver_flaky": registered(deliver_flaky)}}

    async def body(client: QueueClient) -> None:
        payload = {"request_id": "req-redelivered", "outbox": str(outbox)}
        sub = await client.submit(NewTask("intake", "deliver_flaky", json.dumps(payload)))
        [record] = await wait_terminal(client, [sub.id])
        delivery = result_of(record)
        assert ATTEMPTS[sub.id] == 3
        # attempt 2 re-ran the effect with the same key; the outbox skipped the duplicate
        assert delivery == {"key": f"task-{sub.id}/effect/deliver_reply", "written": False,
                            "reexecution": True}  # fmt: skip
        [effect] = await client.run(client.store.effects, sub.id)
        assert (effect.key, effect.state, effect.executions) == ("deliver_reply", "done", 2)
        attempts = await client.run(client.store.attempts, sub.id)
        assert [a.outcome for a in attempts] == ["failed", "failed", "succeeded"]

    asyncio.run(run_fleet(f"sqlite:///{tmp_path / 'fleet.db'}", body, gateway, extra))
    lines = outbox_mod.read_outbox(outbox)
    assert [line["request_id"] for line in lines] == ["req-redelivered"]


def test_outbox_is_an_idempotent_receiver(tmp_path: Path) -> None:
    outbox_mod = example("outbox")
    path = tmp_path / "nested" / "outbox.jsonl"
    assert outbox_mod.read_outbox(path) == []
    assert outbox_mod.append_once(path, "task-1/effect/deliver_reply", {"reply": "a"})
    assert not outbox_mod.append_once(path, "task-1/effect/deliver_reply", {"reply": "b"})
    # a writer that died mid-line leaves a torn line; the next one starts afresh
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "task-2/effect/deliver_re')
    assert outbox_mod.append_once(path, "task-3/effect/deliver_reply", {"reply": "c"})
    lines = outbox_mod.read_outbox(path)
    assert [(line["key"], line["reply"]) for line in lines] == [
        ("task-1/effect/deliver_reply", "a"),
        ("task-3/effect/deliver_reply", "c"),
    ]


# --- tools, rules and workload -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("I forgot my password, how do I reset it?", "kb-reset-password"),
        ("When will I get my refund on my card?", "kb-refund-timing"),
        ("I think I was charged twice", "kb-double-charge"),
        ("the app crashes when I open it", "kb-app-crash"),
        ("how long does shipping take abroad", "kb-shipping-times"),
        ("lost my phone, two-factor authentication backup codes", "kb-two-factor"),
    ],
)
def test_kb_search_ranks_the_right_article_first(query: str, best: str) -> None:
    kb = example("knowledge").default_knowledge_base()
    hits = kb.search(query, top_k=3)
    assert hits[0].article.id == best, [(h.article.id, round(h.score, 2)) for h in hits]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_kb_search_finds_nothing_for_unrelated_words_and_stems_plurals() -> None:
    kb = example("knowledge").default_knowledge_base()
    assert kb.search("zebra quantum violin") == []
    assert kb.search("refunds")[0].article.id == kb.search("refund")[0].article.id
    assert len(kb.search("order", top_k=2)) == 2
    assert 20 <= len(kb.articles) <= 30


def test_tools_answer_like_apis_and_order_lookup_accepts_text() -> None:
    tools = example("tools")
    known = sorted(_known_orders())[0]
    found = tools.run_tool("lookup_order", {"order_number": f"where is my order {known}?"})
    assert found.found and found.refs == (known,) and known in found.text
    missing = tools.run_tool("lookup_order", {"order_number": "SD-99999"})
    assert not missing.found and "No order SD-99999" in missing.text
    assert "needs the argument" in tools.run_tool("search_kb", {}).text
    assert "no tool named" in tools.run_tool("send_email", {}).text
    assert len(_known_orders()) == 30


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("Where is my order SD-10004? Tracking has not moved.", "order_status"),
        ("The lamp arrived broken, I want my money back", "refund"),
        ("I cannot log in, the password reset link fails", "technical"),
        ("Can I get an invoice with our VAT number?", "other"),
    ],
)
def test_keyword_classifier(message: str, category: str) -> None:
    assert example("rules").classify_text(message)[0] == category


def test_workload_is_deterministic_by_seed_and_mixed() -> None:
    workload = example("workload")
    first = workload.generate_requests(60, seed=3)
    assert first == workload.generate_requests(60, seed=3)
    assert first != workload.generate_requests(60, seed=4)
    assert workload.generate_requests(10, seed=3) == first[:10]
    assert len({r["request_id"] for r in first}) == 60
    assert all(set(r) == {"request_id", "customer", "channel", "message"} for r in first)
    orders = example("orders")
    mentioned = [orders.find_order_number(r["message"]) for r in first]
    known = _known_orders()
    assert any(m in known for m in mentioned)
    assert any(m is not None and m not in known for m in mentioned)
    assert any(m is None for m in mentioned)
    classify = example("rules").classify_text
    assert {classify(r["message"])[0] for r in first} == {
        "order_status",
        "refund",
        "technical",
        "other",
    }


def test_the_workload_sends_a_request_again_while_the_fleet_answers_503() -> None:
    """A fleet whose store is restarting answers 503 with Retry-After; the example's
    workload waits and sends the same request again (its idempotency key makes that
    safe) instead of failing half-way, and gives up past its patience."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    seen: list[dict[str, Any]] = []
    refuse = {"first": 2}

    class Fleet(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if len(seen) <= refuse["first"]:
                self.send_response(503)
                self.send_header("Retry-After", "0")
                body = b'{"status": 503}'
            else:
                self.send_response(201)
                body = b'{"id": 7, "created": true}'
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fleet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    workload = example("workload")
    request = workload.generate_requests(1, 3)[0]
    try:
        assert workload.submit(url, [request], rate=None) == [7]
        assert len(seen) == 3
        assert all(body["idempotency_key"] == request["request_id"] for body in seen)
        seen.clear()
        refuse["first"] = 10**6  # unavailable for good
        with httpx.Client(base_url=url) as client, pytest.raises(httpx.HTTPStatusError):
            workload._post(client, {"agent": "intake/classify"}, patience=0.05)
    finally:
        server.shutdown()
        server.server_close()
