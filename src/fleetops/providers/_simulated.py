"""A simulated LLM: realistic latency, failures and token counts, and ReAct-style replies.

It is the gateway's default provider, so fleets run and are tested without a model
server or a key. Faults and latency come from one ``random.Random(seed)`` stream (so a
run is reproducible call by call); the text of a reply is a function of the seed and
the request alone (so the same conversation always gets the same answer).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ._errors import ProviderRateLimited, ProviderUnavailable
from ._models import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ToolCall,
    ToolSpec,
    Usage,
    estimate_tokens,
)

DEFAULT_MODEL = "sim-react-1"
DEFAULT_MEDIAN_LATENCY = 0.4
DEFAULT_P95_LATENCY = 1.2
DEFAULT_RETRY_AFTER = 1.0
Z_95 = 1.6448536269514722  # the standard normal's 95th percentile

_WORD = re.compile(r"[a-z0-9]+")
_ARITHMETIC = re.compile(r"[\d(][\d\s.()+\-*/^%]*[+\-*/^%][\d\s.()+\-*/^%]*[\d)]")
_CITIES = ("Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Melbourne", "Toronto")


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """A lognormal latency with the given median and 95th percentile, in seconds.

    A median of 0 means no latency at all.
    """

    median: float = DEFAULT_MEDIAN_LATENCY
    p95: float = DEFAULT_P95_LATENCY

    def __post_init__(self) -> None:
        if self.median < 0:
            raise ConfigError("latency.median", self.median, "use 0 or more seconds")
        if self.p95 < self.median:
            raise ConfigError("latency.p95", self.p95, f"use at least the median {self.median}")

    def sample(self, rng: random.Random) -> float:
        if self.median == 0:
            return 0.0
        sigma = (math.log(self.p95) - math.log(self.median)) / Z_95
        return rng.lognormvariate(math.log(self.median), sigma)


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """What a script answers: text, tool calls, and why the model stopped."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"


class Script(Protocol):
    """Decides the simulated model's reply; ``rng`` is seeded by the seed and the request."""

    def reply(self, request: ChatRequest, rng: random.Random) -> ScriptedReply: ...


class ReActScript:
    """Answers like a ReAct agent's model.

    Offered tools, it first calls the one that best matches the question, with
    arguments built from the tool's JSON Schema and the question; once it has seen
    ``tool_rounds`` rounds of tool results it gives a final answer drawing on them.
    Without tools it answers at once.
    """

    def __init__(self, tool_rounds: int = 1) -> None:
        if tool_rounds < 0:
            raise ConfigError("simulated.tool_rounds", tool_rounds, "use 0 or more")
        self.tool_rounds = tool_rounds

    def reply(self, request: ChatRequest, rng: random.Random) -> ScriptedReply:
        messages = request.messages
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        question = (messages[last_user].content or "") if last_user >= 0 else ""
        since = messages[last_user + 1 :]
        rounds = sum(1 for m in since if m.role == "assistant" and m.tool_calls)
        if request.tools and rounds < self.tool_rounds:
            tool = _best_tool(request.tools, question, rng)
            call = ToolCall(
                f"call_{rng.getrandbits(48):012x}",
                tool.name,
                _arguments(tool.parameters, question, rng),
            )
            thought = f"Thought: I should use the {tool.name} tool to answer this."
            return ScriptedReply(thought, (call,), "tool_calls")
        results = [m for m in since if m.role == "tool"]
        if results:
            cited = "; ".join(
                f"{_tool_name(m, since)} returned {_clip(m.content or '', 160)}" for m in results
            )
            answer = (
                f"Based on what I found ({cited}), here is my answer to: {_clip(question, 120)}"
            )
        else:
            openers = ("Here is a short answer", "In brief", "To answer directly")
            answer = f"{rng.choice(openers)}: {_clip(question, 160) or 'nothing was asked'}"
            answer += " " + " ".join(rng.choice(_FILLER) for _ in range(rng.randint(1, 3)))
        return ScriptedReply(f"Thought: I now know the final answer.\nFinal Answer: {answer}")


_FILLER = (
    "The key facts are consistent across sources.",
    "There are a few caveats worth noting.",
    "This should be verified before acting on it.",
    "The simplest explanation fits best here.",
)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_name(result: ChatMessage, conversation: tuple[ChatMessage, ...]) -> str:
    if result.name:
        return result.name
    for m in conversation:
        for call in m.tool_calls:
            if call.id == result.tool_call_id:
                return call.name
    return "the tool"


def _best_tool(tools: tuple[ToolSpec, ...], question: str, rng: random.Random) -> ToolSpec:
    words = set(_WORD.findall(question.lower()))

    def overlap(tool: ToolSpec) -> int:
        described = f"{tool.name.replace('_', ' ')} {tool.description}".lower()
        return len(words & set(_WORD.findall(described)))

    best = max(overlap(t) for t in tools)
    return rng.choice([t for t in tools if overlap(t) == best])


def _arguments(schema: Mapping[str, Any], question: str, rng: random.Random) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = [p for p in schema.get("required") or () if p in properties]
    names = required or list(properties)
    return {
        name: _value(name, properties[name], question, rng)
        for name in names
        if isinstance(properties[name], Mapping)
    }


def _value(name: str, schema: Mapping[str, Any], question: str, rng: random.Random) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        least = math.ceil(_bound(schema, "minimum", 1))
        return rng.randint(least, max(least, math.floor(_bound(schema, "maximum", least + 9))))
    if kind == "number":
        low = _bound(schema, "minimum", 0.0)
        return round(rng.uniform(low, max(low, _bound(schema, "maximum", low + 100.0))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        items = schema.get("items")
        return [_value(name, items if isinstance(items, Mapping) else {}, question, rng)]
    if kind == "object":
        return _arguments(schema, question, rng)
    return _string_for(name.lower(), question, rng)


def _bound(schema: Mapping[str, Any], key: str, default: float) -> float:
    value = schema.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _string_for(name: str, question: str, rng: random.Random) -> str:
    slug = "-".join(_WORD.findall(question.lower())[:6]) or "topic"
    if "url" in name or "link" in name:
        return f"https://example.com/search?q={slug}"
    if "city" in name or "location" in name or "place" in name:
        return rng.choice(_CITIES)
    if "date" in name:
        return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if "email" in name:
        return "someone@example.com"
    if "expr" in name or "formula" in name:
        found = _ARITHMETIC.search(question)
        return found.group(0).strip() if found else f"{rng.randint(2, 99)} * {rng.randint(2, 9)}"
    if name == "id" or name.endswith("_id"):
        return f"{name.removesuffix('_id') or 'item'}-{rng.randint(1, 9999)}"
    if question:
        return _clip(question, 200)
    return slug


def _fingerprint(request: ChatRequest) -> str:
    payload = {
        "model": request.model,
        "messages": [m.to_dict() for m in request.messages],
        "tools": [t.to_dict() for t in request.tools],
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


class SimulatedProvider:
    """An LLM that is not there: seeded latency, failures, token counts and replies.

    Each call first draws from the seeded stream: with probability ``rate_limit_rate``
    it fails fast with :class:`ProviderRateLimited` (``retry_after`` seconds), with
    probability ``error_rate`` it fails after its latency with
    :class:`ProviderUnavailable`; otherwise it sleeps a latency drawn from ``latency``
    on the clock and answers what ``script`` says. Input tokens are estimated from the
    request, output tokens from the reply; a text answer longer than ``max_tokens`` is
    cut off with ``finish_reason="length"``.
    """

    def __init__(
        self,
        name: str = "simulated",
        *,
        model: str = DEFAULT_MODEL,
        seed: int = 0,
        latency: LatencyModel | None = None,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        retry_after: float = DEFAULT_RETRY_AFTER,
        script: Script | None = None,
        clock: Clock | None = None,
    ) -> None:
        rates: tuple[tuple[str, float], ...] = (
            ("error_rate", error_rate),
            ("rate_limit_rate", rate_limit_rate),
        )
        for field, rate in rates:
            if not 0 <= rate <= 1:
                raise ConfigError(f"providers.{name}.{field}", rate, "use a share from 0 to 1")
        if error_rate + rate_limit_rate > 1:
            raise ConfigError(
                f"providers.{name}.error_rate",
                error_rate,
                "error_rate plus rate_limit_rate must not exceed 1",
            )
        if retry_after < 0:
            raise ConfigError(f"providers.{name}.retry_after", retry_after, "use 0 or more")
        self._name = name
        self.model = model
        self.seed = seed
        self.latency = latency or LatencyModel()
        self.error_rate = error_rate
        self.rate_limit_rate = rate_limit_rate
        self.retry_after = retry_after
        self.script: Script = script or ReActScript()
        self._clock: Clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        draw = self._rng.random()
        latency = self.latency.sample(self._rng)
        if draw < self.rate_limit_rate:
            await self._clock.sleep(latency * 0.05)
            raise ProviderRateLimited(
                self._name,
                f"429 Too Many Requests (simulated); retry after {self.retry_after:g} s",
                status=429,
                retry_after=self.retry_after,
            )
        if draw < self.rate_limit_rate + self.error_rate:
            await self._clock.sleep(latency)
            raise ProviderUnavailable(self._name, "503 Service Unavailable (simulated)", status=503)
        reply = self.script.reply(request, random.Random(f"{self.seed}|{_fingerprint(request)}"))
        content, finish = reply.content, reply.finish_reason
        output = estimate_tokens(content or "") + sum(
            estimate_tokens(c.name + c.arguments_json) for c in reply.tool_calls
        )
        limit = request.max_tokens
        if limit is not None and output > limit and not reply.tool_calls and content:
            content = content[: limit * 4]
            output, finish = limit, "length"
        await self._clock.sleep(latency)
        return ChatResponse(
            content=content,
            tool_calls=reply.tool_calls,
            finish_reason=finish,
            usage=Usage(request.estimate_input_tokens(), max(1, output)),
            model=request.model or self.model,
            provider=self._name,
            latency=latency,
        )

    async def aclose(self) -> None:
        return None
