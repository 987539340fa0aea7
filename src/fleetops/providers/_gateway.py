"""The LLM gateway: one way out to every provider, with the guards around it.

For each call it takes the cluster's tokens-per-minute quota (an estimate first,
reconciled with the real usage after), then walks the route chain: the requested
provider, then its configured fallbacks. On each route it retries retryable errors
with backoff (honouring Retry-After), through that provider's circuit breaker. Every
provider call is recorded in :class:`CallStats`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ..resilience import (
    Backoff,
    BreakerSettings,
    CircuitBreaker,
    CircuitOpen,
    TokenBucket,
    retry_async,
)
from ..telemetry import get_logger
from ._errors import (
    AllProvidersFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderRequestRejected,
    ProviderResponseError,
    ProviderUnavailable,
    UnknownProvider,
)
from ._models import ChatMessage, ChatRequest, ChatResponse, ToolSpec
from ._protocol import Provider
from ._stats import CallRecord, CallStats

DEFAULT_CLUSTER = "default"
DEFAULT_OUTPUT_ESTIMATE = 512
DEFAULT_BACKOFF = Backoff(max_attempts=3, base_delay=0.5, max_delay=8.0, max_retry_after=30.0)

log = get_logger("fleetops.providers")


@dataclass(frozen=True, slots=True)
class Route:
    """One step of a fallback chain: a provider, and the model to ask it for.

    ``model`` None keeps the request's model (or the provider's default).
    """

    provider: str
    model: str | None = None

    def __str__(self) -> str:
        return self.provider if self.model is None else f"{self.provider}/{self.model}"


def counts_against_provider(exc: BaseException) -> bool:
    """Whether an error counts as a failure for the provider's circuit breaker.

    A request the provider refused (4xx) says nothing about the provider's health.
    """
    return isinstance(exc, ProviderError) and not isinstance(exc, ProviderRequestRejected)


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same provider again may help."""
    return isinstance(exc, ProviderError) and exc.retryable


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, ProviderRateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderUnavailable):
        return "unavailable"
    if isinstance(exc, ProviderRequestRejected):
        return "rejected"
    if isinstance(exc, ProviderResponseError):
        return "bad_response"
    return "error"


class Gateway:
    """Routes chat requests to named providers, with breakers, retries, fallback and quotas.

    ``providers`` are addressed by their ``name``; ``default`` (else the first) serves
    requests that name none. ``fallbacks`` maps a provider to the routes to try, in
    order, once it has failed: e.g. ``{"openai": [Route("openai", "gpt-4o-mini"),
    "simulated"]}`` for primary → cheaper model → simulated answer.
    ``tokens_per_minute`` maps a cluster to its quota (``default_tokens_per_minute``
    for the others; None: no quota). A request reserves its estimated tokens (input
    estimate plus ``max_tokens`` or ``output_estimate``, at most the quota) and waits
    for them, up to ``max_quota_wait`` seconds
    (:class:`~fleetops.resilience.RateLimited` beyond); its real usage is settled
    afterwards, and a request that failed everywhere gives its tokens back.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        default: str | None = None,
        fallbacks: Mapping[str, Sequence[Route | str]] | None = None,
        breaker: BreakerSettings | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        tokens_per_minute: Mapping[str, int] | None = None,
        default_tokens_per_minute: int | None = None,
        max_quota_wait: float | None = None,
        output_estimate: int = DEFAULT_OUTPUT_ESTIMATE,
        stats: CallStats | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not providers:
            raise ConfigError("gateway.providers", [], "configure at least one provider")
        self._providers: dict[str, Provider] = {}
        for p in providers:
            if p.name in self._providers:
                raise ConfigError("gateway.providers", p.name, "give each provider its own name")
            self._providers[p.name] = p
        known = list(self._providers)
        self.default = default if default is not None else known[0]
        if self.default not in self._providers:
            raise ConfigError("gateway.default", self.default, f"use one of {', '.join(known)}")
        self._chains: dict[str, tuple[Route, ...]] = {}
        for primary, chain in (fallbacks or {}).items():
            if primary not in self._providers:
                raise ConfigError(
                    "gateway.fallbacks", primary, f"use a provider name: {', '.join(known)}"
                )
            routes = tuple(Route(r) if isinstance(r, str) else r for r in chain)
            for i, route in enumerate(routes):
                if route.provider not in self._providers:
                    raise ConfigError(
                        f"gateway.fallbacks.{primary}[{i}]",
                        route.provider,
                        f"use a provider name: {', '.join(known)}",
                    )
            self._chains[primary] = routes
        for field, quota in [
            *((f"gateway.tokens_per_minute.{c}", q) for c, q in (tokens_per_minute or {}).items()),
            ("gateway.default_tokens_per_minute", default_tokens_per_minute),
        ]:
            if quota is not None and quota < 1:
                raise ConfigError(field, quota, "use 1 or more tokens per minute, or no quota")
        if output_estimate < 0:
            raise ConfigError("gateway.output_estimate", output_estimate, "use 0 or more")
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._backoff = backoff
        self._tpm = dict(tokens_per_minute or {})
        self._default_tpm = default_tokens_per_minute
        self._max_quota_wait = max_quota_wait
        self._output_estimate = output_estimate
        self._buckets: dict[str, TokenBucket] = {}
        self._breakers = {
            name: CircuitBreaker(
                name, breaker, clock=self._clock, is_failure=counts_against_provider
            )
            for name in self._providers
        }
        self.stats = stats or CallStats()

    @property
    def providers(self) -> Mapping[str, Provider]:
        return dict(self._providers)

    def breaker(self, provider: str) -> CircuitBreaker:
        """The circuit breaker guarding ``provider``."""
        self._provider(provider)
        return self._breakers[provider]

    def quota(self, cluster: str) -> TokenBucket | None:
        """The tokens-per-minute bucket of ``cluster``, or None when it has no quota."""
        bucket = self._buckets.get(cluster)
        if bucket is None:
            tpm = self._tpm.get(cluster, self._default_tpm)
            if tpm is None:
                return None
            bucket = TokenBucket.per_minute(tpm, clock=self._clock, name=f"{cluster}.llm_tpm")
            self._buckets[cluster] = bucket
        return bucket

    def chain(self, provider: str) -> tuple[Route, ...]:
        """The routes a request to ``provider`` walks: itself, then its fallbacks."""
        self._provider(provider)
        return (Route(provider), *self._chains.get(provider, ()))

    async def chat(
        self,
        messages: Sequence[ChatMessage | Mapping[str, Any]] | str,
        *,
        cluster: str = DEFAULT_CLUSTER,
        provider: str | None = None,
        model: str | None = None,
        tools: Sequence[ToolSpec | Mapping[str, Any]] = (),
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ChatResponse:
        """Build a :class:`ChatRequest` from chat-completions style arguments and send it."""
        request = ChatRequest.build(
            messages, model=model, tools=tools, temperature=temperature, max_tokens=max_tokens
        )
        return await self.complete(request, cluster=cluster, provider=provider)

    async def complete(
        self,
        request: ChatRequest,
        *,
        cluster: str = DEFAULT_CLUSTER,
        provider: str | None = None,
    ) -> ChatResponse:
        """Answer ``request`` from ``provider`` (or the default), falling back as configured.

        Raises :class:`AllProvidersFailed` when every route failed, carrying each
        route's last error; a caller's mistake (a ``UsageError``) is raised at once.
        """
        routes = self.chain(provider or self.default)
        bucket = self.quota(cluster)
        reserved = 0
        if bucket is not None:
            wanted = request.estimate_input_tokens() + (request.max_tokens or self._output_estimate)
            reserved = min(wanted, int(bucket.burst))
            waited = await bucket.acquire(reserved, max_wait=self._max_quota_wait)
            if waited > 0:
                log.info("llm.quota_waited", cluster=cluster, seconds=round(waited, 3))
        settled = False
        try:
            failures: list[tuple[Route, BaseException]] = []
            for level, route in enumerate(routes):
                routed = request if route.model is None else request.with_model(route.model)
                try:
                    response = await self._on_route(route, routed, cluster, level)
                except (ProviderError, CircuitOpen) as exc:
                    log.warning("llm.route_failed", route=str(route), error=str(exc))
                    failures.append((route, exc))
                    continue
                if bucket is not None:
                    used = response.usage.total_tokens
                    if used > reserved:
                        bucket.charge(used - reserved)
                    else:
                        bucket.refund(reserved - used)
                    settled = True
                return response
            raise AllProvidersFailed(routes[0].provider, failures)
        finally:
            if bucket is not None and not settled:
                bucket.refund(reserved)

    async def _on_route(
        self, route: Route, request: ChatRequest, cluster: str, level: int
    ) -> ChatResponse:
        attempt = 0

        async def once() -> ChatResponse:
            nonlocal attempt
            attempt += 1
            return await self._call(route, request, cluster, level, attempt)

        return await retry_async(
            once, backoff=self._backoff, retry_on=is_retryable, clock=self._clock, rng=self._rng
        )

    async def _call(
        self, route: Route, request: ChatRequest, cluster: str, level: int, attempt: int
    ) -> ChatResponse:
        provider = self._providers[route.provider]
        started_at = self._clock.now()
        started = self._clock.monotonic()

        def record(outcome: str, response: ChatResponse | None, error: str | None) -> None:
            self.stats.add(
                CallRecord(
                    operation="chat",
                    provider=route.provider,
                    request_model=request.model,
                    response_model=response.model if response else None,
                    input_tokens=response.usage.input_tokens if response else 0,
                    output_tokens=response.usage.output_tokens if response else 0,
                    duration=self._clock.monotonic() - started,
                    outcome=outcome,
                    error_type=error,
                    cluster=cluster,
                    attempt=attempt,
                    fallback_level=level,
                    started_at=started_at,
                )
            )

        try:
            response = await self._breakers[route.provider].call(lambda: provider.complete(request))
        except Exception as exc:
            record(_outcome(exc), None, type(exc).__name__)
            raise
        record("ok", response, None)
        return response

    def _provider(self, name: str) -> Provider:
        found = self._providers.get(name)
        if found is None:
            raise UnknownProvider(name, list(self._providers))
        return found

    async def aclose(self) -> None:
        """Close every provider."""
        for provider in self._providers.values():
            await provider.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
