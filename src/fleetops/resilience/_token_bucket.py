"""A token bucket on an injected clock, fair to waiters and able to run into debt."""

from __future__ import annotations

import asyncio

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ._errors import RateLimited, TokenRequestTooLarge


class TokenBucket:
    """Grants tokens at ``rate`` per second, holding at most ``burst`` of them.

    :meth:`acquire` reserves its tokens at once and then sleeps on the clock until the
    reservation is covered, so waiters are served in arrival order and a large request
    is never starved by a stream of small ones. The balance may go negative: that is
    the reservations of waiters, and debt taken on by :meth:`charge` (usage that was
    only known after the fact). :meth:`try_acquire` never waits and never takes debt.

    For a tokens-per-minute quota use :meth:`per_minute`.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Clock | None = None,
        name: str = "bucket",
        initial: float | None = None,
    ) -> None:
        if not rate > 0:
            raise ConfigError(f"{name}.rate", rate, "use a rate above 0 tokens per second")
        if not burst > 0:
            raise ConfigError(f"{name}.burst", burst, "use a burst size above 0 tokens")
        if initial is not None and initial > burst:
            raise ConfigError(f"{name}.initial", initial, f"use at most the burst size {burst:g}")
        self.name = name
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock: Clock = clock or SystemClock()
        self._tokens = self.burst if initial is None else float(initial)
        self._updated = self._clock.monotonic()

    @classmethod
    def per_minute(
        cls, tokens: float, *, clock: Clock | None = None, name: str = "bucket"
    ) -> TokenBucket:
        """A bucket that grants ``tokens`` per minute, all of which may be spent at once."""
        if not tokens > 0:
            raise ConfigError(f"{name}.tokens_per_minute", tokens, "use a quota above 0")
        return cls(tokens / 60.0, tokens, clock=clock, name=name)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now

    @property
    def available(self) -> float:
        """Tokens that could be taken now; negative while reservations or debt are pending."""
        self._refill()
        return self._tokens

    def wait_time(self, tokens: float = 1) -> float:
        """Seconds until ``tokens`` could be taken without waiting, at the current balance."""
        self._refill()
        return max(0.0, (tokens - self._tokens) / self.rate)

    def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are there now; answer whether it did. Never waits."""
        self._check(tokens)
        self._refill()
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    async def acquire(self, tokens: float = 1, *, max_wait: float | None = None) -> float:
        """Take ``tokens``, waiting on the clock until they are covered; answer the wait.

        With ``max_wait``, a request that would wait longer raises :class:`RateLimited`
        at once and takes nothing. If the waiting caller is cancelled its tokens are
        given back.
        """
        self._check(tokens)
        self._refill()
        wait = max(0.0, (tokens - self._tokens) / self.rate)
        if max_wait is not None and wait > max_wait:
            raise RateLimited(self.name, tokens, wait, max_wait)
        self._tokens -= tokens
        if wait <= 0:
            return 0.0
        try:
            await self._clock.sleep(wait)
        except asyncio.CancelledError:
            self.refund(tokens)
            raise
        return wait

    def charge(self, tokens: float) -> None:
        """Take ``tokens`` without waiting, running into debt if need be.

        For usage learned after the fact (a reply longer than its estimate): later
        callers wait until the debt is paid off.
        """
        if tokens < 0:
            raise ConfigError(f"{self.name}.charge", tokens, "charge 0 or more tokens")
        self._refill()
        self._tokens -= tokens

    def refund(self, tokens: float) -> None:
        """Give back ``tokens`` that were taken but not used (the balance stays <= burst)."""
        if tokens < 0:
            raise ConfigError(f"{self.name}.refund", tokens, "refund 0 or more tokens")
        self._refill()
        self._tokens = min(self.burst, self._tokens + tokens)

    def _check(self, tokens: float) -> None:
        if tokens < 0:
            raise ConfigError(f"{self.name}.tokens", tokens, "ask for 0 or more tokens")
        if tokens > self.burst:
            raise TokenRequestTooLarge(self.name, tokens, self.burst)

    def __repr__(self) -> str:
        return (
            f"TokenBucket(name={self.name!r}, rate={self.rate:g}/s, burst={self.burst:g}, "
            f"available={self.available:.2f})"
        )
