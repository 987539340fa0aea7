"""The narrow interface every LLM provider implements."""

from __future__ import annotations

from typing import Protocol

from ._models import ChatRequest, ChatResponse


class Provider(Protocol):
    """An LLM endpoint the gateway can route chat requests to.

    ``complete`` raises :class:`~fleetops.providers.ProviderError` subclasses for
    failures, with ``retryable`` telling the gateway whether trying again may help.
    """

    @property
    def name(self) -> str:
        """The provider's name in the gateway (and in telemetry)."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` and answer the model's full response."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...
