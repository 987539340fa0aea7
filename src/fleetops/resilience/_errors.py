"""Errors raised by the resilience primitives.

They hang under the fleetops root so callers can catch them with the rest::

    FleetOpsError
    ├── UsageError
    │   └── TokenRequestTooLarge   more tokens asked of a bucket than it can ever hold
    └── ResilienceError            a guard refused or gave up on a call
        ├── CircuitOpen            the breaker is open; carries when it will let calls through
        ├── BulkheadFull           too many calls in flight and in the queue
        ├── RateLimited            a token bucket cannot grant the tokens within the wait allowed
        └── DegradationExhausted   every step of a degradation policy failed
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from .._exceptions import FleetOpsError, UsageError


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResilienceError(FleetOpsError):
    """A resilience guard refused or gave up on a call."""


class TokenRequestTooLarge(UsageError):
    """More tokens were asked of a bucket than its burst size; the request can never fit."""

    def __init__(self, bucket: str, requested: float, burst: float) -> None:
        self.bucket = bucket
        self.requested = requested
        self.burst = burst
        super().__init__(
            f"token bucket {bucket!r}: asked for {requested:g} tokens but it holds at most "
            f"{burst:g}; ask for {burst:g} or fewer, or raise the burst size"
        )


class CircuitOpen(ResilienceError):
    """The circuit breaker is open and refuses calls until its open period ends."""

    def __init__(self, breaker: str, retry_in: float, retry_at: float, reason: str) -> None:
        self.breaker = breaker
        self.retry_in = retry_in
        self.retry_at = retry_at
        self.reason = reason
        super().__init__(
            f"circuit breaker {breaker!r} is open ({reason}); calls resume in "
            f"{retry_in:.1f} s, at {_utc(retry_at)}"
        )


class BulkheadFull(ResilienceError):
    """The bulkhead has no free slot and its queue is full (or the wait ran out)."""

    def __init__(self, bulkhead: str, max_concurrent: int, max_queue: int, why: str) -> None:
        self.bulkhead = bulkhead
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        super().__init__(
            f"bulkhead {bulkhead!r} rejected the call: {why} "
            f"(max_concurrent={max_concurrent}, max_queue={max_queue})"
        )


class RateLimited(ResilienceError):
    """A token bucket could not grant the tokens within the wait the caller allowed."""

    def __init__(self, bucket: str, requested: float, wait: float, max_wait: float) -> None:
        self.bucket = bucket
        self.requested = requested
        self.wait = wait
        self.max_wait = max_wait
        super().__init__(
            f"token bucket {bucket!r}: {requested:g} tokens would take {wait:.2f} s to free up, "
            f"more than the {max_wait:.2f} s allowed"
        )


class DegradationExhausted(ResilienceError):
    """Every step of the degradation policy failed."""

    def __init__(self, policy: str, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.policy = policy
        self.failures = tuple(failures)
        detail = "; ".join(f"{step}: {type(exc).__name__}: {exc}" for step, exc in self.failures)
        super().__init__(f"degradation policy {policy!r}: every step failed ({detail})")
