"""Retrying an async call with exponential backoff, full jitter and Retry-After hints."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ..telemetry import get_logger

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0
DEFAULT_MAX_RETRY_AFTER = 60.0

log = get_logger("fleetops.resilience")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How often to try and how long to wait between tries.

    The wait after the n-th failure is uniform in ``[0, min(max_delay, base_delay *
    2**(n-1))]`` ("full jitter"), or the error's Retry-After hint when that is longer.
    A hint longer than ``max_retry_after`` ends the retrying: the callee asked not to
    be called again soon, so the error goes to the caller (or the next fallback).
    ``deadline`` bounds the total time spent waiting between tries.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("retry.max_attempts", self.max_attempts, "use 1 or more")
        if self.base_delay < 0:
            raise ConfigError("retry.base_delay", self.base_delay, "use 0 or more seconds")
        if self.max_delay < self.base_delay:
            raise ConfigError(
                "retry.max_delay", self.max_delay, "use a value no smaller than base_delay"
            )
        if self.max_retry_after < 0:
            raise ConfigError(
                "retry.max_retry_after", self.max_retry_after, "use 0 or more seconds"
            )
        if self.deadline is not None and self.deadline < 0:
            raise ConfigError("retry.deadline", self.deadline, "use 0 or more seconds, or None")

    def delay(self, failures: int, rng: random.Random) -> float:
        """The jittered wait after the ``failures``-th consecutive failure."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        return rng.uniform(0.0, ceiling)


def retry_after_hint(exc: BaseException) -> float | None:
    """The server's Retry-After hint carried by ``exc`` (its ``retry_after`` attribute)."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and hint >= 0:
        return float(hint)
    return None


def _any_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


RetryHook = Callable[[int, BaseException, float], None]


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff | None = None,
    retry_on: Callable[[BaseException], bool] = _any_exception,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    on_retry: RetryHook | None = None,
) -> T:
    """Call ``fn()`` until it succeeds, retrying the errors ``retry_on`` accepts.

    Waits on ``clock`` between tries (see :class:`Backoff`). When the tries are used
    up, the deadline would be passed, the Retry-After hint is too long, or the error is
    not retryable, the last error is raised unchanged. ``on_retry(attempt, error,
    delay)`` is called before each wait.
    """
    policy = backoff or Backoff()
    clock = clock or SystemClock()
    rng = rng or random.Random()
    started = clock.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if attempt >= policy.max_attempts or not retry_on(exc):
                raise
            delay = policy.delay(attempt, rng)
            hint = retry_after_hint(exc)
            if hint is not None:
                if hint > policy.max_retry_after:
                    log.info("retry.hint_too_long", retry_after=hint, limit=policy.max_retry_after)
                    raise
                delay = max(delay, hint)
            if policy.deadline is not None:
                if clock.monotonic() - started + delay > policy.deadline:
                    raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            log.debug("retry.waiting", attempt=attempt, delay=round(delay, 3), error=repr(exc))
            await clock.sleep(delay)
