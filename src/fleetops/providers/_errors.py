"""Errors raised by the LLM gateway and its providers.

A caller's mistake is kept apart from a provider that broke::

    FleetOpsError
    ├── UsageError
    │   ├── InvalidChatRequest        a message, tool or setting of the request is wrong
    │   ├── UnknownProvider           no provider has that name
    │   └── ConfigError
    │       └── MissingAPIKey         the environment variable meant to hold the key is unset
    └── ProviderError                 an LLM call failed (.provider, .retryable, .status)
        ├── ProviderUnavailable       retryable: unreachable, timed out, or a 5xx answer
        │   └── ProviderRateLimited   retryable after .retry_after seconds: a 429 answer
        ├── ProviderRequestRejected   a 4xx other than 429: the provider refused this request
        ├── ProviderResponseError     the answer breaks the wire format (.field, .value, .expected)
        └── AllProvidersFailed        every provider of the fallback chain failed (.failures)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._exceptions import ConfigError, FleetOpsError, UsageError

if TYPE_CHECKING:
    from ._gateway import Route


class InvalidChatRequest(UsageError):
    """A chat request is invalid; it was not sent."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}: invalid value {_show(value)}: {fix}")


class UnknownProvider(UsageError):
    """No provider is registered under that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(
            f"no LLM provider is named {name!r}; the gateway has: {', '.join(self.known)}"
        )


class MissingAPIKey(ConfigError):
    """The environment variable that should hold a provider's API key is not set."""

    def __init__(self, provider: str, variable: str) -> None:
        self.provider = provider
        self.variable = variable
        self.field = f"providers.{provider}.api_key_env"
        self.value = variable
        self.fix = f"set the environment variable {variable} to the API key"
        UsageError.__init__(
            self,
            f"the API key for LLM provider {provider!r} is read from the environment variable "
            f"{variable}, which is not set or empty: set {variable}, or name another variable "
            f"in {self.field}",
        )


class ProviderError(FleetOpsError):
    """An LLM provider call failed."""

    retryable = False

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"LLM provider {provider!r}: {message}")


class ProviderUnavailable(ProviderError):
    """The provider could not be reached, timed out, or failed on its side (5xx)."""

    retryable = True


class ProviderRateLimited(ProviderUnavailable):
    """The provider is rate limiting this client (HTTP 429); retry after ``retry_after``."""


class ProviderRequestRejected(ProviderError):
    """The provider refused this request (a 4xx other than 429); retrying will not help."""


_MISSING = object()


def _show(value: object) -> str:
    if value is _MISSING:
        return "missing"
    text = repr(value)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{text} ({type(value).__name__})"


class ProviderResponseError(ProviderError):
    """The provider answered with a body that does not follow the chat-completions format."""

    def __init__(self, provider: str, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = None if value is _MISSING else value
        self.expected = expected
        super().__init__(
            provider,
            f"malformed chat completion: {field} is {_show(value)}, expected {expected}",
        )


class AllProvidersFailed(ProviderError):
    """Every provider in the fallback chain failed; ``failures`` holds each one's error."""

    def __init__(self, primary: str, failures: Sequence[tuple[Route, BaseException]]) -> None:
        self.failures = tuple(failures)
        detail = "; ".join(f"{route}: {exc}" for route, exc in self.failures)
        super().__init__(primary, f"every provider in the fallback chain failed ({detail})")
