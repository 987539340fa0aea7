"""An OpenAI-compatible chat-completions client over httpx.

Speaks ``POST {base_url}/chat/completions`` as OpenAI, Azure OpenAI's v1 endpoint,
vLLM, Ollama, LiteLLM and most gateways do. It makes one attempt per call: retrying,
breaking and falling back are the gateway's job, told apart by the error raised.
"""

from __future__ import annotations

import email.utils
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import httpx

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ._errors import (
    MissingAPIKey,
    ProviderRateLimited,
    ProviderRequestRejected,
    ProviderResponseError,
    ProviderUnavailable,
)
from ._models import ChatRequest, ChatResponse
from ._wire import parse_completion, request_body

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT = 60.0
RETRYABLE_STATUSES = frozenset({408, 409, 425})


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """Where an OpenAI-compatible endpoint is and how to call it.

    ``api_key_env`` names the environment variable holding the key, sent as
    ``Authorization: Bearer``; None sends no key (a local server that needs none).
    """

    base_url: str
    model: str
    api_key_env: str | None = DEFAULT_API_KEY_ENV
    name: str = "openai"
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        where = f"providers.{self.name}"
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"{where}.base_url",
                self.base_url,
                "use an http(s) URL such as https://api.openai.com/v1",
            )
        if not self.model:
            raise ConfigError(f"{where}.model", self.model, "name the model to call")
        if self.api_key_env is not None and not self.api_key_env:
            raise ConfigError(
                f"{where}.api_key_env", self.api_key_env, "name an environment variable, or None"
            )
        if not self.timeout > 0:
            raise ConfigError(f"{where}.timeout", self.timeout, "use a timeout above 0 seconds")


class OpenAIProvider:
    """A :class:`~fleetops.providers.Provider` for an OpenAI-compatible endpoint.

    The API key is read once, here, from the environment variable the config names
    (``environ`` replaces the process environment, for tests and embedding); a
    missing key raises :class:`MissingAPIKey` naming the variable. Close it with
    :meth:`aclose` or ``async with``.

    Errors: 429 → :class:`ProviderRateLimited` with the server's Retry-After;
    5xx, 408, 409, 425, timeouts and connection failures → :class:`ProviderUnavailable`;
    other 4xx → :class:`ProviderRequestRejected`; a body that is not a chat completion →
    :class:`ProviderResponseError`.
    """

    def __init__(
        self,
        config: OpenAIConfig,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if config.api_key_env is not None:
            env = os.environ if environ is None else environ
            key = env.get(config.api_key_env, "").strip()
            if not key:
                raise MissingAPIKey(config.name, config.api_key_env)
            headers["Authorization"] = f"Bearer {key}"
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=config.timeout,
            transport=transport,
        )

    @property
    def name(self) -> str:
        return self.config.name

    async def complete(self, request: ChatRequest) -> ChatResponse:
        body = request_body(request, self.config.model)
        started = self._clock.monotonic()
        try:
            response = await self._client.post("chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise ProviderUnavailable(
                self.name, f"no answer within {self.config.timeout:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                self.name, f"could not reach {self.config.base_url}: {exc!r}"
            ) from exc
        except httpx.DecodingError as exc:
            raise ProviderResponseError(
                self.name, "body", str(exc), "a body readable in its declared Content-Encoding"
            ) from exc
        except httpx.RequestError as exc:
            raise ProviderUnavailable(self.name, f"request failed: {exc!r}") from exc
        latency = self._clock.monotonic() - started
        self._raise_for_status(response)
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProviderResponseError(
                self.name, "body", _clip(response.text), "a JSON chat completion"
            ) from None
        return parse_completion(self.name, payload, request, self.config.model, latency)

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status}: {_error_message(response)}"
        retry_after = parse_retry_after(response.headers, self._clock.now())
        if status == 429:
            raise ProviderRateLimited(self.name, detail, status=status, retry_after=retry_after)
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise ProviderUnavailable(self.name, detail, status=status, retry_after=retry_after)
        if status in (401, 403) and self.config.api_key_env is not None:
            detail += f" (check the API key in {self.config.api_key_env})"
        if 400 <= status < 500:
            raise ProviderRequestRejected(self.name, detail, status=status)
        raise ProviderResponseError(self.name, "status", status, "a 2xx status")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def parse_retry_after(headers: httpx.Headers, now: float) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _clip(response.text) or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _clip(error["message"])
        if isinstance(error, str):
            return _clip(error)
    return _clip(response.text)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
