"""The OpenAI chat-completions wire format: request bodies out, validated responses in.

A response that does not follow the format raises :class:`ProviderResponseError`
naming the field (``choices[0].message.tool_calls[1].function.name``), the value
found and what was expected, never a bare ``KeyError``.
"""

from __future__ import annotations

import json
from typing import Any

from ._errors import _MISSING, ProviderResponseError
from ._models import ChatRequest, ChatResponse, ToolCall, Usage, estimate_tokens


def request_body(request: ChatRequest, default_model: str) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request``."""
    body: dict[str, Any] = {
        "model": request.model or default_model,
        "messages": [m.to_dict() for m in request.messages],
    }
    if request.tools:
        body["tools"] = [t.to_dict() for t in request.tools]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    return body


def _join(path: str, key: str) -> str:
    return key if path == "body" else f"{path}.{key}"


class _Reader:
    """Typed access to a decoded JSON document that reports the path of a bad field."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def fail(self, path: str, value: object, expected: str) -> ProviderResponseError:
        return ProviderResponseError(self.provider, path, value, expected)

    def obj(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, value, "a JSON object")
        return value

    def get(self, parent: dict[str, Any], key: str) -> object:
        return parent.get(key, _MISSING)

    def string(self, parent: dict[str, Any], key: str, path: str, *, optional: bool = False) -> Any:
        value = self.get(parent, key)
        if optional and (value is _MISSING or value is None):
            return None
        if not isinstance(value, str):
            raise self.fail(_join(path, key), value, "a string" + (" or null" if optional else ""))
        return value

    def count(self, parent: dict[str, Any], key: str, path: str) -> int:
        value = self.get(parent, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(_join(path, key), value, "a whole number of tokens, 0 or more")
        return value


def parse_completion(
    provider: str, payload: object, request: ChatRequest, default_model: str, latency: float
) -> ChatResponse:
    """Validate a decoded chat-completions response and turn it into a :class:`ChatResponse`.

    A response without ``usage`` (some servers omit it) gets estimated token counts.
    """
    r = _Reader(provider)
    body = r.obj(payload, "body")
    choices = r.get(body, "choices")
    if not isinstance(choices, list) or not choices:
        raise r.fail("choices", choices, "a non-empty list of choices")
    choice = r.obj(choices[0], "choices[0]")
    message = r.obj(r.get(choice, "message"), "choices[0].message")
    path = "choices[0].message"
    content = r.string(message, "content", path, optional=True)
    raw_calls = message.get("tool_calls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise r.fail(f"{path}.tool_calls", raw_calls, "a list of tool calls or null")
    calls = tuple(
        _tool_call(r, raw, f"{path}.tool_calls[{i}]") for i, raw in enumerate(raw_calls or ())
    )
    finish = r.string(choice, "finish_reason", "choices[0]", optional=True)
    if finish is None:
        finish = "tool_calls" if calls else "stop"
    raw_usage = body.get("usage")
    if raw_usage is None:
        output = estimate_tokens(content or "") + sum(
            estimate_tokens(c.name + c.arguments_json) for c in calls
        )
        usage = Usage(request.estimate_input_tokens(), output)
    else:
        usage_obj = r.obj(raw_usage, "usage")
        usage = Usage(
            r.count(usage_obj, "prompt_tokens", "usage"),
            r.count(usage_obj, "completion_tokens", "usage"),
        )
    model = r.string(body, "model", "body", optional=True) or request.model or default_model
    return ChatResponse(
        content=content,
        tool_calls=calls,
        finish_reason=finish,
        usage=usage,
        model=model,
        provider=provider,
        latency=latency,
    )


def _tool_call(r: _Reader, raw: object, path: str) -> ToolCall:
    call = r.obj(raw, path)
    call_id = r.string(call, "id", path)
    kind = call.get("type", "function")
    if kind != "function":
        raise r.fail(f"{path}.type", kind, "'function'")
    fn = r.obj(r.get(call, "function"), f"{path}.function")
    name = r.string(fn, "name", f"{path}.function")
    arguments = r.get(fn, "arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise r.fail(
                f"{path}.function.arguments", arguments, "a string holding a JSON object"
            ) from None
    if not isinstance(arguments, dict):
        raise r.fail(f"{path}.function.arguments", arguments, "a string holding a JSON object")
    return ToolCall(call_id, name, arguments)
