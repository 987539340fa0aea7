"""The simulated provider and the gateway, on virtual time."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import pytest

import fleetops.providers as providers
from fleetops import ConfigError, FleetOpsError, UsageError, VirtualClock
from fleetops.providers import (
    AllProvidersFailed,
    CallRecord,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    Gateway,
    InvalidChatRequest,
    LatencyModel,
    ProviderRateLimited,
    ProviderRequestRejected,
    ProviderUnavailable,
    ReActScript,
    Route,
    SimulatedProvider,
    ToolSpec,
    UnknownProvider,
    Usage,
)
from fleetops.resilience import (
    Backoff,
    BreakerSettings,
    BreakerState,
    DegradationPolicy,
    DegradationStep,
    RateLimited,
)

T = TypeVar("T")

NO_LATENCY = LatencyModel(0, 0)
FAKE_USAGE = Usage(100, 50)

pytestmark = pytest.mark.timeout(30)

SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for pages about a topic",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 5},
                "region": {"type": "string", "enum": ["eu", "us", "apac"]},
            },
            "required": ["query", "max_results", "region"],
        },
    },
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather forecast for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "metric": {"type": "boolean"}},
        "required": ["city", "metric"],
    },
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def drive(clock: VirtualClock, aw: Awaitable[T], step: float = 0.01) -> T:
    """Run ``aw`` to completion, moving virtual time on whenever it is blocked."""
    task = asyncio.ensure_future(aw)
    for _ in range(1_000_000):
        await settle()
        if task.done():
            return task.result()
        clock.advance(step)
    raise AssertionError("did not finish")


class FakeProvider:
    """Fails with each of ``script`` in turn (None: answers), then with ``always`` or answers."""

    def __init__(
        self,
        name: str,
        script: list[Exception | None] | None = None,
        *,
        always: Exception | None = None,
        usage: Usage = FAKE_USAGE,
    ) -> None:
        self.name = name
        self.script = list(script or [])
        self.always = always
        self.usage = usage
        self.requests: list[ChatRequest] = []
        self.closed = False

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        outcome = self.script.pop(0) if self.script else self.always
        if outcome is not None:
            raise outcome
        return ChatResponse(
            content=f"{self.name} answers",
            tool_calls=(),
            finish_reason="stop",
            usage=self.usage,
            model=request.model or f"{self.name}-default",
            provider=self.name,
            latency=0.0,
        )

    async def aclose(self) -> None:
        self.closed = True


def down(name: str) -> ProviderUnavailable:
    return ProviderUnavailable(name, "HTTP 503: overloaded", status=503)


def test_public_names_do_not_drift() -> None:
    public = {n for n in dir(providers) if not n.startswith("_")}
    assert public == {
        "AllProvidersFailed",
        "CallRecord",
        "CallStats",
        "ChatMessage",
        "ChatRequest",
        "ChatResponse",
        "Gateway",
        "InvalidChatRequest",
        "LatencyModel",
        "MissingAPIKey",
        "OpenAIConfig",
        "OpenAIProvider",
        "Provider",
        "ProviderError",
        "ProviderRateLimited",
        "ProviderRequestRejected",
        "ProviderResponseError",
        "ProviderUnavailable",
        "ReActScript",
        "Route",
        "Script",
        "ScriptedReply",
        "SimulatedProvider",
        "ToolCall",
        "ToolSpec",
        "UnknownProvider",
        "Usage",
    }
    assert issubclass(providers.ProviderError, FleetOpsError)
    assert issubclass(providers.MissingAPIKey, ConfigError)
    assert issubclass(InvalidChatRequest, UsageError)


# --- value objects --------------------------------------------------------------------


def test_request_build_reads_the_wire_format_and_names_bad_fields() -> None:
    request = ChatRequest.build(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        tools=[SEARCH, WEATHER],
        temperature=0.2,
    )
    assert [m.role for m in request.messages] == ["system", "user"]
    assert [t.name for t in request.tools] == ["web_search", "get_weather"]
    assert ChatRequest.build("hello").messages == (ChatMessage("user", "hello"),)
    with pytest.raises(InvalidChatRequest, match=r"messages\[1\]\.role: invalid value 'robot'"):
        ChatRequest.build([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    with pytest.raises(InvalidChatRequest, match=r"messages\[0\]\.content: invalid value 42"):
        ChatRequest.build([{"role": "user", "content": 42}])
    with pytest.raises(InvalidChatRequest, match="temperature: invalid value 3.5"):
        ChatRequest.build("hi", temperature=3.5)
    with pytest.raises(InvalidChatRequest, match=r"tools\[0\]\.name"):
        ChatRequest.build("hi", tools=[{"description": "no name"}])
    with pytest.raises(InvalidChatRequest, match="at least one message"):
        ChatRequest.build([])


# --- simulated provider ---------------------------------------------------------------


def sim_calls(
    provider: SimulatedProvider, requests: list[ChatRequest], clock: VirtualClock | None = None
) -> list[object]:
    async def main() -> list[object]:
        out: list[object] = []
        for request in requests:
            try:
                call = provider.complete(request)
                out.append(await (drive(clock, call, step=0.0001) if clock else call))
            except ProviderUnavailable as exc:
                out.append((type(exc).__name__, exc.retry_after))
        return out

    return run(main())


def test_simulated_provider_is_deterministic_per_seed() -> None:
    requests = [
        ChatRequest.build(f"question {i}", tools=[SEARCH] if i % 2 else []) for i in range(40)
    ]

    def calls(seed: int) -> list[object]:
        clock = VirtualClock()
        provider = SimulatedProvider(
            seed=seed,
            latency=LatencyModel(0.001, 0.005),
            error_rate=0.2,
            rate_limit_rate=0.1,
            clock=clock,
        )
        return sim_calls(provider, requests, clock)

    first, again, other = calls(7), calls(7), calls(8)
    assert any(isinstance(o, tuple) for o in first)
    assert any(isinstance(o, ChatResponse) and o.latency > 0 for o in first)
    assert first == again
    assert first != other


def test_simulated_reply_depends_on_seed_and_input_not_on_call_order() -> None:
    a = ChatRequest.build("What is the weather in Oslo?", tools=[SEARCH, WEATHER])
    b = ChatRequest.build("Summarise the news", tools=[SEARCH])
    forward = sim_calls(SimulatedProvider(seed=3, latency=NO_LATENCY), [a, b])
    backward = sim_calls(SimulatedProvider(seed=3, latency=NO_LATENCY), [b, a])
    assert forward == list(reversed(backward))
    reseeded = sim_calls(SimulatedProvider(seed=4, latency=NO_LATENCY), [a])
    assert isinstance(reseeded[0], ChatResponse) and isinstance(forward[0], ChatResponse)
    assert reseeded[0].tool_calls[0].id != forward[0].tool_calls[0].id


def test_simulated_react_script_calls_a_fitting_tool_then_answers() -> None:
    async def main() -> None:
        provider = SimulatedProvider(seed=11, latency=NO_LATENCY)
        messages: list[Any] = [
            {"role": "system", "content": "You are a helpful agent."},
            {"role": "user", "content": "What is the weather forecast in the city of Lima?"},
        ]
        first = await provider.complete(ChatRequest.build(messages, tools=[SEARCH, WEATHER]))
        assert first.finish_reason == "tool_calls"
        (call,) = first.tool_calls
        assert call.name == "get_weather"  # the tool whose description fits the question
        assert set(call.arguments) == {"city", "metric"}
        assert isinstance(call.arguments["city"], str) and call.arguments["city"]
        assert isinstance(call.arguments["metric"], bool)
        assert first.content is not None and "get_weather" in first.content
        assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

        messages.append(first.to_message().to_dict())
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
        final = await provider.complete(ChatRequest.build(messages, tools=[SEARCH, WEATHER]))
        assert final.finish_reason == "stop" and final.tool_calls == ()
        assert final.content is not None
        assert "Final Answer:" in final.content and "18C and sunny" in final.content

    run(main())


def test_simulated_tool_arguments_follow_the_schema() -> None:
    async def main() -> None:
        for seed in range(20):
            provider = SimulatedProvider(seed=seed, latency=NO_LATENCY)
            reply = await provider.complete(
                ChatRequest.build(f"search the web for pages about topic {seed}", tools=[SEARCH])
            )
            args = reply.tool_calls[0].arguments
            assert f"topic {seed}" in args["query"]
            assert 1 <= args["max_results"] <= 5
            assert args["region"] in ("eu", "us", "apac")

    run(main())


def test_simulated_react_script_can_take_several_tool_rounds() -> None:
    async def main() -> None:
        provider = SimulatedProvider(seed=1, latency=NO_LATENCY, script=ReActScript(tool_rounds=2))
        messages: list[Any] = [{"role": "user", "content": "research this"}]
        finishes = []
        for _ in range(3):
            reply = await provider.complete(ChatRequest.build(messages, tools=[SEARCH]))
            finishes.append(reply.finish_reason)
            messages.append(reply.to_message().to_dict())
            for call in reply.tool_calls:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": "found it"})
        assert finishes == ["tool_calls", "tool_calls", "stop"]

    run(main())


def test_simulated_answers_without_tools_and_respects_max_tokens() -> None:
    async def main() -> None:
        provider = SimulatedProvider(seed=2, latency=NO_LATENCY, model="sim-small")
        long = await provider.complete(ChatRequest.build("Tell me about the history of Rome"))
        assert long.finish_reason == "stop" and long.model == "sim-small"
        short = await provider.complete(
            ChatRequest.build("Tell me about the history of Rome", max_tokens=3)
        )
        assert short.finish_reason == "length"
        assert short.usage.output_tokens == 3 and short.content is not None
        assert len(short.content) <= 12

    run(main())


def test_simulated_failure_rates_are_roughly_as_configured() -> None:
    requests = [ChatRequest.build("ping")] * 4000
    outcomes = sim_calls(
        SimulatedProvider(
            seed=5, latency=NO_LATENCY, error_rate=0.10, rate_limit_rate=0.05, retry_after=2.5
        ),
        requests,
    )
    limited = [o for o in outcomes if isinstance(o, tuple) and o[0] == "ProviderRateLimited"]
    errors = [o for o in outcomes if isinstance(o, tuple) and o[0] == "ProviderUnavailable"]
    assert len(limited) / 4000 == pytest.approx(0.05, abs=0.012)
    assert len(errors) / 4000 == pytest.approx(0.10, abs=0.015)
    assert all(retry_after == 2.5 for _, retry_after in limited)


def test_simulated_429_is_a_retryable_error_with_a_hint() -> None:
    async def main() -> None:
        provider = SimulatedProvider(seed=0, latency=NO_LATENCY, rate_limit_rate=1.0, retry_after=3)
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.complete(ChatRequest.build("hi"))
        assert caught.value.retryable and caught.value.status == 429
        assert caught.value.retry_after == 3 and "'simulated'" in str(caught.value)

    run(main())


def test_latency_model_matches_its_median_and_p95() -> None:
    import random

    rng = random.Random(1)
    model = LatencyModel(median=0.4, p95=1.2)
    samples = sorted(model.sample(rng) for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(0.4, rel=0.05)
    assert samples[int(0.95 * len(samples))] == pytest.approx(1.2, rel=0.07)
    with pytest.raises(ConfigError, match="latency.p95"):
        LatencyModel(median=1.0, p95=0.5)


def test_simulated_latency_passes_on_the_injected_clock() -> None:
    async def main() -> None:
        clock = VirtualClock()
        provider = SimulatedProvider(seed=9, clock=clock, latency=LatencyModel(0.5, 1.0))
        started = clock.monotonic()
        reply = await drive(clock, provider.complete(ChatRequest.build("hi")), step=0.001)
        assert reply.latency > 0
        assert clock.monotonic() - started == pytest.approx(reply.latency, abs=0.002)

    run(main())


def test_simulated_provider_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"providers\.sim\.error_rate"):
        SimulatedProvider("sim", error_rate=1.5)
    with pytest.raises(ConfigError, match="must not exceed 1"):
        SimulatedProvider("sim", error_rate=0.6, rate_limit_rate=0.6)


# --- gateway --------------------------------------------------------------------------


def test_gateway_answers_and_records_genai_stats() -> None:
    async def main() -> None:
        clock = VirtualClock()
        sim = SimulatedProvider(seed=1, clock=clock, latency=LatencyModel(0.2, 0.4))
        seen: list[CallRecord] = []
        async with Gateway([sim], clock=clock) as gateway:
            unsubscribe = gateway.stats.subscribe(seen.append)
            reply = await drive(
                clock, gateway.chat("hello there", cluster="research", model="sim-large")
            )
            unsubscribe()
            await drive(clock, gateway.chat("again"))
        assert reply.provider == "simulated" and reply.model == "sim-large"
        assert len(seen) == 1 and len(gateway.stats.records) == 2
        attrs = seen[0].attributes()
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "simulated"
        assert attrs["gen_ai.request.model"] == "sim-large"
        assert attrs["gen_ai.usage.input_tokens"] == reply.usage.input_tokens
        assert attrs["gen_ai.usage.output_tokens"] == reply.usage.output_tokens
        assert attrs["gen_ai.client.operation.duration"] == pytest.approx(reply.latency, abs=0.02)
        assert attrs["fleetops.llm.outcome"] == "ok" and attrs["fleetops.cluster"] == "research"
        assert "error.type" not in attrs
        totals = {
            t["gen_ai.request.model"]: t
            for t in gateway.stats.totals()
            if "gen_ai.request.model" in t
        }
        assert totals["sim-large"]["calls"] == 1
        assert totals["sim-large"]["gen_ai.usage.output_tokens"] == reply.usage.output_tokens

    run(main())


def test_gateway_retries_a_429_after_its_retry_after() -> None:
    async def main() -> None:
        clock = VirtualClock()
        limited = ProviderRateLimited("p", "HTTP 429", status=429, retry_after=4.0)
        fake = FakeProvider("p", [limited, None])
        gateway = Gateway([fake], clock=clock, backoff=Backoff(base_delay=0.01, max_attempts=3))
        reply = await drive(clock, gateway.complete(ChatRequest.build("hi")))
        assert reply.content == "p answers"
        assert clock.monotonic() == pytest.approx(4.0, abs=0.02)
        outcomes = [(r.outcome, r.attempt, r.error_type) for r in gateway.stats.records]
        assert outcomes == [("rate_limited", 1, "ProviderRateLimited"), ("ok", 2, None)]

    run(main())


def test_gateway_falls_back_along_the_chain_with_model_overrides() -> None:
    async def main() -> None:
        clock = VirtualClock()
        primary = FakeProvider("primary", always=down("primary"))
        backup = FakeProvider("backup")
        gateway = Gateway(
            [primary, backup],
            clock=clock,
            fallbacks={"primary": [Route("primary", "primary-mini"), Route("backup", "b-1")]},
            backoff=Backoff(max_attempts=2, base_delay=0.1),
        )
        assert gateway.chain("primary") == (
            Route("primary"),
            Route("primary", "primary-mini"),
            Route("backup", "b-1"),
        )
        reply = await drive(clock, gateway.complete(ChatRequest.build("hi", model="primary-xl")))
        assert (reply.provider, reply.model) == ("backup", "b-1")
        assert [r.model for r in primary.requests] == ["primary-xl"] * 2 + ["primary-mini"] * 2
        levels = [(r.provider, r.fallback_level, r.outcome) for r in gateway.stats.records]
        assert levels == [
            ("primary", 0, "unavailable"),
            ("primary", 0, "unavailable"),
            ("primary", 1, "unavailable"),
            ("primary", 1, "unavailable"),
            ("backup", 2, "ok"),
        ]

    run(main())


def test_gateway_breaker_opens_and_later_probes_the_provider_again() -> None:
    async def main() -> None:
        clock = VirtualClock()
        primary = FakeProvider("primary", always=down("primary"))
        backup = FakeProvider("backup")
        gateway = Gateway(
            [primary, backup],
            clock=clock,
            fallbacks={"primary": ["backup"]},
            breaker=BreakerSettings(consecutive_failures=3, open_duration=60),
            backoff=Backoff(max_attempts=1),
        )
        for _ in range(5):
            reply = await drive(clock, gateway.chat("hi"))
            assert reply.provider == "backup"
        assert len(primary.requests) == 3  # the breaker kept calls 4 and 5 away from it
        assert gateway.breaker("primary").state is BreakerState.OPEN
        short = [r for r in gateway.stats.records if r.outcome == "circuit_open"]
        assert len(short) == 2 and short[0].error_type == "CircuitOpen"

        clock.advance(60)
        primary.always = None
        reply = await drive(clock, gateway.chat("hi"))
        assert reply.provider == "primary"
        assert gateway.breaker("primary").state is BreakerState.CLOSED

    run(main())


def test_gateway_raises_all_providers_failed_and_gives_the_quota_back() -> None:
    async def main() -> None:
        clock = VirtualClock()
        gateway = Gateway(
            [FakeProvider("a", always=down("a")), FakeProvider("b", always=down("b"))],
            clock=clock,
            fallbacks={"a": ["b"]},
            backoff=Backoff(max_attempts=1),
            tokens_per_minute={"team": 10_000},
        )
        with pytest.raises(AllProvidersFailed) as caught:
            await drive(clock, gateway.chat("hi", cluster="team"))
        message = str(caught.value)
        assert "'a'" in message and "a: LLM provider 'a': HTTP 503" in message
        assert "b: LLM provider 'b': HTTP 503" in message
        assert [route.provider for route, _ in caught.value.failures] == ["a", "b"]
        quota = gateway.quota("team")
        assert quota is not None and quota.available == pytest.approx(10_000)

    run(main())


def test_gateway_does_not_retry_or_count_a_rejected_request_but_falls_back() -> None:
    async def main() -> None:
        clock = VirtualClock()
        rejected = ProviderRequestRejected("a", "HTTP 400: context too long", status=400)
        a = FakeProvider("a", always=rejected)
        gateway = Gateway(
            [a, FakeProvider("b")],
            clock=clock,
            fallbacks={"a": ["b"]},
            breaker=BreakerSettings(consecutive_failures=1),
        )
        reply = await drive(clock, gateway.chat("hi"))
        assert reply.provider == "b" and len(a.requests) == 1
        assert gateway.breaker("a").state is BreakerState.CLOSED

    run(main())


def test_gateway_raises_a_callers_mistake_at_once() -> None:
    async def main() -> None:
        gateway = Gateway([FakeProvider("a")], clock=VirtualClock())
        with pytest.raises(
            UnknownProvider, match="no LLM provider is named 'nope'; the gateway has: a"
        ):
            await gateway.chat("hi", provider="nope")
        with pytest.raises(InvalidChatRequest):
            await gateway.chat([{"role": "user"}, {"content": "no role"}])

    run(main())


def test_gateway_quota_makes_calls_wait_and_reconciles_real_usage() -> None:
    async def main() -> None:
        clock = VirtualClock()
        fake = FakeProvider("p", usage=Usage(100, 50))
        gateway = Gateway(
            [fake], clock=clock, tokens_per_minute={"alpha": 1000}, default_tokens_per_minute=None
        )
        request = ChatRequest.build("hi", max_tokens=493)  # estimated 7 in + 493 out = 500
        assert request.estimate_input_tokens() == 7
        bucket = gateway.quota("alpha")
        assert bucket is not None and gateway.quota("beta") is None
        for expected in (850, 700, 550, 400):  # each call reserves 500 and uses 150
            await gateway.complete(request, cluster="alpha")
            assert bucket.available == pytest.approx(expected)
        started = clock.monotonic()
        await drive(clock, gateway.complete(request, cluster="alpha"), step=0.05)
        assert clock.monotonic() - started == pytest.approx(6.0, abs=0.06)  # 100 tokens at 1000/min
        for _ in range(10):  # a cluster without quota never waits
            await gateway.complete(request, cluster="beta")

    run(main())


def test_gateway_quota_charges_usage_beyond_the_estimate() -> None:
    async def main() -> None:
        clock = VirtualClock()
        fake = FakeProvider("p", usage=Usage(900, 700))
        gateway = Gateway([fake], clock=clock, default_tokens_per_minute=1200, max_quota_wait=5.0)
        await gateway.complete(ChatRequest.build("hi", max_tokens=93))  # reserves 100, uses 1600
        bucket = gateway.quota("default")
        assert bucket is not None and bucket.available == pytest.approx(-400)
        with pytest.raises(RateLimited, match="default.llm_tpm"):
            await gateway.complete(ChatRequest.build("hi", max_tokens=93))
        clock.advance(25)  # 500 tokens back at 20 per second
        await gateway.complete(ChatRequest.build("hi", max_tokens=93))

    run(main())


def test_gateway_stats_hook_failure_does_not_fail_the_call() -> None:
    async def main() -> None:
        gateway = Gateway([FakeProvider("a")], clock=VirtualClock())

        def broken(_: CallRecord) -> None:
            raise RuntimeError("telemetry down")

        gateway.stats.subscribe(broken)
        reply = await gateway.chat("hi")
        assert reply.content == "a answers"

    run(main())


def test_gateway_configuration_is_validated() -> None:
    a = FakeProvider("a")
    with pytest.raises(ConfigError, match=r"gateway\.fallbacks\.a\[0\]: invalid value 'zzz'"):
        Gateway([a], fallbacks={"a": ["zzz"]})
    with pytest.raises(ConfigError, match="own name"):
        Gateway([a, FakeProvider("a")])
    with pytest.raises(ConfigError, match="gateway.default"):
        Gateway([a], default="b")
    with pytest.raises(ConfigError, match=r"tokens_per_minute\.x"):
        Gateway([a], tokens_per_minute={"x": 0})


def test_gateway_closes_its_providers() -> None:
    async def main() -> None:
        a, b = FakeProvider("a"), FakeProvider("b")
        async with Gateway([a, b]):
            pass
        assert a.closed and b.closed

    run(main())


def test_react_loop_through_the_gateway_with_a_canned_last_resort() -> None:
    async def main() -> None:
        clock = VirtualClock()
        sim = SimulatedProvider(seed=21, clock=clock)
        gateway = Gateway([sim], clock=clock)
        tools = [ToolSpec.from_dict(SEARCH)]
        messages: list[Any] = [{"role": "user", "content": "find pages about tide tables"}]
        step = await drive(clock, gateway.chat(messages, tools=tools))
        assert step.tool_calls and step.tool_calls[0].name == "web_search"
        messages += [
            step.to_message(),
            {"role": "tool", "tool_call_id": step.tool_calls[0].id, "content": "3 pages"},
        ]
        final = await drive(clock, gateway.chat(messages, tools=tools))
        assert final.content is not None and "3 pages" in final.content

        canned = ChatResponse(
            "Sorry, try again later.", (), "stop", Usage(0, 0), "canned", "canned", 0.0
        )
        sim.rate_limit_rate = 1.0  # the provider now refuses everything
        policy: DegradationPolicy[ChatRequest, ChatResponse] = DegradationPolicy(
            "answer",
            [
                DegradationStep("gateway", gateway.complete),
                DegradationStep.constant("canned", canned),
            ],
        )
        degraded = await drive(clock, policy.run(ChatRequest.build("hello")))
        assert degraded.value is canned and degraded.step == "canned"
        assert isinstance(degraded.skipped[0][1], AllProvidersFailed)

    run(main())


def test_chat_response_round_trips_through_json_for_journaling() -> None:
    import json

    async def main() -> None:
        sim = SimulatedProvider(seed=4, latency=NO_LATENCY)
        reply = await sim.complete(ChatRequest.build("look it up", tools=[SEARCH]))
        assert reply.tool_calls
        again = ChatResponse.from_dict(json.loads(json.dumps(reply.to_dict())))
        assert again == reply
        with pytest.raises(UsageError, match="not a chat response"):
            ChatResponse.from_dict({"content": "x"})

    run(main())
