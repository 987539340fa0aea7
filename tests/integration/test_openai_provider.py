"""The OpenAI-compatible provider against a real HTTP server speaking chat completions.

The server is a small Starlette app under uvicorn on 127.0.0.1 (an ephemeral port),
in a background thread. What it answers is chosen by the request's model name, so
each test scripts its own scenario.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route as HttpRoute

from fleetops import ConfigError, SystemClock
from fleetops.providers import (
    ChatRequest,
    Gateway,
    LatencyModel,
    MissingAPIKey,
    OpenAIConfig,
    OpenAIProvider,
    ProviderRateLimited,
    ProviderRequestRejected,
    ProviderResponseError,
    ProviderUnavailable,
    SimulatedProvider,
)
from fleetops.resilience import Backoff

T = TypeVar("T")

pytestmark = pytest.mark.timeout(30)

KEY_ENV = "FLEETOPS_TEST_LLM_KEY"
ENVIRON = {KEY_ENV: "sk-test-123"}


@dataclass
class FakeOpenAI:
    """What the server has seen, and how often each scenario was called."""

    seen: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)

    def completion(self, model: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": f"{model}-2024-05-13",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", **extra}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append((request.headers.get("authorization"), body))
        model = body["model"]
        n = self.calls[model] = self.calls.get(model, 0) + 1
        hello = {"role": "assistant", "content": "Hello from the server."}
        if model == "ok":
            return JSONResponse(self.completion(model, hello))
        if model == "tools":
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            }
            return JSONResponse(self.completion(model, message, finish_reason="tool_calls"))
        if model == "limited-once" and n == 1:
            error = {"error": {"message": "Rate limit reached for tokens", "type": "tokens"}}
            return JSONResponse(error, status_code=429, headers={"Retry-After": "1"})
        if model == "limited-always":
            return JSONResponse(
                {"error": {"message": "slow down"}},
                status_code=429,
                headers={"retry-after-ms": "20"},
            )
        if model == "broken-once" and n == 1:
            return PlainTextResponse("upstream exploded", status_code=500)
        if model == "bad-request":
            return JSONResponse({"error": {"message": "'messages' is too long"}}, status_code=400)
        if model == "no-choices":
            return JSONResponse({"id": "x", "object": "chat.completion", "model": model})
        if model == "wrong-content":
            return JSONResponse(self.completion(model, {"role": "assistant", "content": 42}))
        if model == "bad-arguments":
            call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return JSONResponse(self.completion(model, message))
        if model == "bad-usage":
            body = self.completion(model, hello)
            body["usage"]["completion_tokens"] = "seven"
            return JSONResponse(body)
        if model == "not-json":
            return PlainTextResponse("<html>gateway error page</html>")
        return JSONResponse(self.completion(model, hello))


@dataclass
class Server:
    url: str
    state: FakeOpenAI


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state = FakeOpenAI()
    app = Starlette(routes=[HttpRoute("/v1/chat/completions", state.chat, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", http="h11")
    uv = uvicorn.Server(config)
    thread = threading.Thread(
        target=uv.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}/v1", state)
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def fake(server: Server) -> Server:
    server.state.seen.clear()
    server.state.calls.clear()
    return server


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def provider_for(server: Server, **config: Any) -> OpenAIProvider:
    settings = {"base_url": server.url, "model": "ok", "api_key_env": KEY_ENV, **config}
    return OpenAIProvider(OpenAIConfig(**settings), environ=ENVIRON)


def test_success_carries_content_usage_and_the_bearer_key(fake: Server) -> None:
    async def main() -> None:
        async with provider_for(fake) as provider:
            reply = await provider.complete(ChatRequest.build("hi", temperature=0.3, max_tokens=50))
        assert reply.content == "Hello from the server."
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 7)
        assert reply.model == "ok-2024-05-13" and reply.provider == "openai"
        assert reply.finish_reason == "stop" and reply.latency > 0
        auth, body = fake.state.seen[0]
        assert auth == "Bearer sk-test-123"
        assert body == {
            "model": "ok",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.3,
            "max_tokens": 50,
        }

    run(main())


def test_tool_calls_are_parsed_and_tools_sent(fake: Server) -> None:
    async def main() -> None:
        tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
        async with provider_for(fake, model="tools") as provider:
            reply = await provider.complete(ChatRequest.build("weather?", tools=[tool]))
        assert reply.finish_reason == "tool_calls" and reply.content is None
        (call,) = reply.tool_calls
        assert (call.id, call.name, dict(call.arguments)) == (
            "call_abc",
            "get_weather",
            {"city": "Oslo"},
        )
        assert fake.state.seen[0][1]["tools"][0]["function"]["name"] == "get_weather"
        assert reply.to_message().to_dict()["tool_calls"][0]["function"]["arguments"] == (
            '{"city": "Oslo"}'
        )

    run(main())


def test_429_with_retry_after_is_retried_by_the_gateway(fake: Server) -> None:
    async def main() -> None:
        provider = provider_for(fake, model="limited-once")
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.complete(ChatRequest.build("hi"))
        assert caught.value.retry_after == 1.0 and caught.value.status == 429
        assert "Rate limit reached for tokens" in str(caught.value)
        fake.state.calls.clear()
        async with Gateway([provider], clock=SystemClock(), backoff=Backoff(base_delay=0.01)) as gw:
            started = time.monotonic()
            reply = await gw.chat("hi")
            waited = time.monotonic() - started
        assert reply.content == "Hello from the server."
        assert fake.state.calls["limited-once"] == 2
        assert waited >= 1.0
        assert [r.outcome for r in gw.stats.records] == ["rate_limited", "ok"]

    run(main())


def test_500_then_success(fake: Server) -> None:
    async def main() -> None:
        provider = provider_for(fake, model="broken-once")
        async with Gateway([provider], clock=SystemClock(), backoff=Backoff(base_delay=0.05)) as gw:
            reply = await gw.chat("hi")
        assert reply.usage.output_tokens == 7
        records = gw.stats.records
        assert [(r.outcome, r.error_type) for r in records] == [
            ("unavailable", "ProviderUnavailable"),
            ("ok", None),
        ]
        assert records[1].attributes()["gen_ai.usage.input_tokens"] == 11

    run(main())


def test_persistent_429_falls_back_to_the_simulated_provider(fake: Server) -> None:
    async def main() -> None:
        provider = provider_for(fake, model="limited-always")
        sim = SimulatedProvider(seed=1, clock=SystemClock(), latency=LatencyModel(0.001, 0.002))
        async with Gateway(
            [provider, sim],
            clock=SystemClock(),
            fallbacks={"openai": ["simulated"]},
            backoff=Backoff(max_attempts=3, base_delay=0.01),
        ) as gw:
            reply = await gw.chat("hi")
        assert reply.provider == "simulated"
        assert fake.state.calls["limited-always"] == 3

    run(main())


def test_other_4xx_is_rejected_not_retried(fake: Server) -> None:
    async def main() -> None:
        async with provider_for(fake, model="bad-request") as provider:
            with pytest.raises(ProviderRequestRejected, match="HTTP 400: 'messages' is too long"):
                await provider.complete(ChatRequest.build("hi"))

    run(main())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no-choices", "choices is missing, expected a non-empty list of choices"),
        (
            "wrong-content",
            r"choices\[0\]\.message\.content is 42 \(int\), expected a string or null",
        ),
        (
            "bad-arguments",
            r"choices\[0\]\.message\.tool_calls\[0\]\.function\.arguments is '\{oops' \(str\), "
            "expected a string holding a JSON object",
        ),
        ("bad-usage", r"usage\.completion_tokens is 'seven' \(str\), expected a whole number"),
        ("not-json", r"body is '<html>gateway error page</html>' \(str\), expected a JSON"),
    ],
)
def test_malformed_body_raises_a_clear_provider_response_error(
    fake: Server, model: str, message: str
) -> None:
    async def main() -> None:
        async with provider_for(fake, model=model) as provider:
            with pytest.raises(ProviderResponseError, match=message) as caught:
                await provider.complete(ChatRequest.build("hi"))
        err = caught.value
        assert str(err).startswith("LLM provider 'openai': malformed chat completion: ")
        assert err.field and err.expected
        assert not isinstance(err.__cause__, KeyError | TypeError)

    run(main())


def test_unreachable_server_is_a_retryable_unavailable_error() -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        config = OpenAIConfig(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None)
        async with OpenAIProvider(config) as provider:
            with pytest.raises(ProviderUnavailable, match="could not reach") as caught:
                await provider.complete(ChatRequest.build("hi"))
        assert caught.value.retryable

    run(main())


def test_missing_api_key_variable_is_a_clear_config_error(server: Server) -> None:
    config = OpenAIConfig(server.url, "ok", api_key_env="FLEETOPS_TEST_UNSET_KEY", name="primary")
    with pytest.raises(MissingAPIKey) as caught:
        OpenAIProvider(config, environ={})
    err = caught.value
    assert isinstance(err, ConfigError)
    assert err.variable == "FLEETOPS_TEST_UNSET_KEY"
    assert "FLEETOPS_TEST_UNSET_KEY" in str(err) and "'primary'" in str(err)
    assert "providers.primary.api_key_env" in str(err)


def test_bad_base_url_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match="providers.openai.base_url: invalid value 'localhost:8000'"
    ):
        OpenAIConfig("localhost:8000", "gpt-4o")
