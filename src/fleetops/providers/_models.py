"""Value objects of the LLM gateway: messages, tools, requests, responses, usage.

They mirror the OpenAI chat-completions format, which most providers speak, and
convert to and from its JSON with :meth:`to_dict` / :meth:`from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import UsageError
from ._errors import InvalidChatRequest

ROLES = ("system", "user", "assistant", "tool")
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """A rough token count for ``text`` (about four characters a token)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call the tool ``name`` with ``arguments``."""

    id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json},
        }


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and a JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "tools[0]") -> ToolSpec:
        """Read ``{"type": "function", "function": {...}}`` or the bare function object."""
        if not isinstance(data, Mapping):
            raise InvalidChatRequest(where, data, "give a tool as a mapping with a 'name'")
        fn = data.get("function", data)
        if not isinstance(fn, Mapping):
            raise InvalidChatRequest(f"{where}.function", fn, "give a mapping with a 'name'")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidChatRequest(f"{where}.name", name, "give the tool a non-empty name")
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise InvalidChatRequest(f"{where}.description", description, "use a string")
        parameters = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise InvalidChatRequest(
                f"{where}.parameters", parameters, "use a JSON Schema object for the arguments"
            )
        return cls(name, description, dict(parameters))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation.

    ``tool_calls`` is set on assistant messages that call tools; ``tool_call_id``
    on the ``tool`` message carrying a call's result.
    """

    role: str
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidChatRequest("role", self.role, f"use one of {', '.join(ROLES)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "messages[0]") -> ChatMessage:
        """Read a message in the chat-completions format."""
        if not isinstance(data, Mapping):
            raise InvalidChatRequest(where, data, "give a message as a mapping with a 'role'")
        role = data.get("role")
        if role not in ROLES:
            raise InvalidChatRequest(f"{where}.role", role, f"use one of {', '.join(ROLES)}")
        content = data.get("content")
        if isinstance(content, list):
            content = _text_of_parts(content, f"{where}.content")
        elif content is not None and not isinstance(content, str):
            raise InvalidChatRequest(f"{where}.content", content, "use a string or null")
        calls = []
        for i, raw in enumerate(data.get("tool_calls") or ()):
            calls.append(_tool_call_from_dict(raw, f"{where}.tool_calls[{i}]"))
        tool_call_id = data.get("tool_call_id")
        if tool_call_id is not None and not isinstance(tool_call_id, str):
            raise InvalidChatRequest(f"{where}.tool_call_id", tool_call_id, "use a string")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidChatRequest(f"{where}.name", name, "use a string")
        return cls(role, content, tuple(calls), tool_call_id, name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


def _text_of_parts(parts: list[Any], where: str) -> str:
    texts = []
    for i, part in enumerate(parts):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise InvalidChatRequest(
                f"{where}[{i}]",
                part,
                "only text parts ({'type': 'text', 'text': ...}) are supported",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidChatRequest(f"{where}[{i}].text", text, "use a string")
        texts.append(text)
    return "\n".join(texts)


def _tool_call_from_dict(raw: Any, where: str) -> ToolCall:
    if not isinstance(raw, Mapping):
        raise InvalidChatRequest(where, raw, "give a tool call as a mapping")
    fn = raw.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InvalidChatRequest(f"{where}.function", fn, "give a mapping with a 'name'")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise InvalidChatRequest(
                f"{where}.function.arguments", fn.get("arguments"), "use a JSON object"
            ) from None
    if not isinstance(arguments, Mapping):
        raise InvalidChatRequest(f"{where}.function.arguments", arguments, "use a JSON object")
    call_id = raw.get("id")
    if not isinstance(call_id, str):
        raise InvalidChatRequest(f"{where}.id", call_id, "give the tool call a string id")
    return ToolCall(call_id, fn["name"], dict(arguments))


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What to ask a model. ``model`` None means the provider's default model."""

    messages: tuple[ChatMessage, ...]
    model: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidChatRequest("messages", [], "give at least one message")
        if self.model is not None and not self.model:
            raise InvalidChatRequest("model", self.model, "name a model, or pass None")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise InvalidChatRequest("temperature", self.temperature, "use a value from 0 to 2")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidChatRequest("max_tokens", self.max_tokens, "use 1 or more, or None")
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise InvalidChatRequest("tools", names, "give every tool a different name")

    @classmethod
    def build(
        cls,
        messages: Sequence[ChatMessage | Mapping[str, Any]] | str,
        *,
        model: str | None = None,
        tools: Sequence[ToolSpec | Mapping[str, Any]] = (),
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ChatRequest:
        """A request from messages and tools in the chat-completions format (or objects).

        A bare string is one user message.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return cls(
            tuple(
                m if isinstance(m, ChatMessage) else ChatMessage.from_dict(m, f"messages[{i}]")
                for i, m in enumerate(messages)
            ),
            model,
            tuple(
                t if isinstance(t, ToolSpec) else ToolSpec.from_dict(t, f"tools[{i}]")
                for i, t in enumerate(tools)
            ),
            temperature,
            max_tokens,
        )

    def with_model(self, model: str | None) -> ChatRequest:
        """The same request addressed to ``model``."""
        return dataclasses.replace(self, model=model)

    def estimate_input_tokens(self) -> int:
        """A rough count of the tokens this request sends."""
        total = 2
        for m in self.messages:
            total += MESSAGE_OVERHEAD_TOKENS + estimate_tokens(m.content or "")
            total += sum(estimate_tokens(c.name + c.arguments_json) for c in m.tool_calls)
        for t in self.tools:
            total += estimate_tokens(json.dumps(t.to_dict(), sort_keys=True))
        return total


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call consumed."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A model's answer and what it cost.

    ``latency`` is the seconds from sending to the full answer; ``time_to_first_token``
    is set only for streamed answers.
    """

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: Usage
    model: str
    provider: str
    latency: float
    time_to_first_token: float | None = None

    def to_message(self) -> ChatMessage:
        """The assistant message to append to the conversation."""
        return ChatMessage("assistant", self.content, self.tool_calls)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, e.g. to journal the answer with ``ctx.effect``."""
        return {
            "content": self.content,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
            "model": self.model,
            "provider": self.provider,
            "latency": self.latency,
            "time_to_first_token": self.time_to_first_token,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatResponse:
        """Read back what :meth:`to_dict` wrote."""
        try:
            usage = data["usage"]
            calls = tuple(
                _tool_call_from_dict(c, f"tool_calls[{i}]")
                for i, c in enumerate(data["tool_calls"])
            )
            content = data["content"]
            ttft = data.get("time_to_first_token")
            return cls(
                content=None if content is None else str(content),
                tool_calls=calls,
                finish_reason=str(data["finish_reason"]),
                usage=Usage(int(usage["input_tokens"]), int(usage["output_tokens"])),
                model=str(data["model"]),
                provider=str(data["provider"]),
                latency=float(data["latency"]),
                time_to_first_token=None if ttft is None else float(ttft),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"not a chat response written by ChatResponse.to_dict: {type(exc).__name__}: {exc}"
            ) from None
