"""A circuit breaker on an injected clock: closed, open, half-open."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ..telemetry import get_logger
from ._errors import CircuitOpen

T = TypeVar("T")

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_WINDOW = 20
DEFAULT_MINIMUM_CALLS = 10
DEFAULT_OPEN_DURATION = 30.0
DEFAULT_HALF_OPEN_PROBES = 1

log = get_logger("fleetops.resilience")


class BreakerState(enum.Enum):
    """Where a breaker is: letting calls through, refusing them, or probing."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker trips and how it recovers.

    It trips on ``consecutive_failures`` failures in a row, or when at least
    ``minimum_calls`` of the last ``window`` calls are recorded and the share of
    failures among them reaches ``failure_rate``; set either to ``None`` to turn that
    trigger off. It then stays open ``open_duration`` seconds, after which it lets
    ``half_open_probes`` calls through: when all of them succeed it closes, when one
    fails it opens again for another ``open_duration``.
    """

    consecutive_failures: int | None = DEFAULT_CONSECUTIVE_FAILURES
    failure_rate: float | None = None
    window: int = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    open_duration: float = DEFAULT_OPEN_DURATION
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES

    def __post_init__(self) -> None:
        if self.consecutive_failures is None and self.failure_rate is None:
            raise ConfigError(
                "breaker.consecutive_failures",
                None,
                "set consecutive_failures or failure_rate, or the breaker can never trip",
            )
        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise ConfigError(
                "breaker.consecutive_failures", self.consecutive_failures, "use 1 or more"
            )
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise ConfigError(
                "breaker.failure_rate", self.failure_rate, "use a share in (0, 1], e.g. 0.5"
            )
        if self.window < 1:
            raise ConfigError("breaker.window", self.window, "use 1 or more calls")
        if not 1 <= self.minimum_calls <= self.window:
            raise ConfigError(
                "breaker.minimum_calls", self.minimum_calls, f"use 1 to window ({self.window})"
            )
        if self.open_duration < 0:
            raise ConfigError("breaker.open_duration", self.open_duration, "use 0 or more seconds")
        if self.half_open_probes < 1:
            raise ConfigError("breaker.half_open_probes", self.half_open_probes, "use 1 or more")


def _every_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


TransitionHook = Callable[[str, BreakerState, BreakerState], None]


class CircuitBreaker:
    """Stops calling a dependency that keeps failing, and probes it before trusting it again.

    Use :meth:`call`. An exception for which ``is_failure`` answers False (by default,
    anything that is not an :class:`Exception`, such as cancellation) passes through
    without counting either way. ``on_transition(name, old, new)`` is called on every
    change of state.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Clock | None = None,
        is_failure: Callable[[BaseException], bool] = _every_exception,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock: Clock = clock or SystemClock()
        self._is_failure = is_failure
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._outcomes: deque[bool] = deque(maxlen=self.settings.window)
        self._consecutive = 0
        self._opened_at = 0.0
        self._reason = ""
        self._probes_in_flight = 0
        self._probes_succeeded = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose time is up reports half-open."""
        if self._state is BreakerState.OPEN and self.retry_in() <= 0:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.open_duration - self._clock.monotonic())

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` if the breaker allows it, recording how it went.

        Raises :class:`CircuitOpen` without calling ``fn`` when the breaker is open, or
        half-open with all its probes already in flight.
        """
        generation, probe = self._admit()
        try:
            result = await fn()
        except BaseException as exc:
            if self._is_failure(exc):
                self._record(generation, probe, failed=True)
            else:
                self._release(generation, probe)
            raise
        self._record(generation, probe, failed=False)
        return result

    def reset(self) -> None:
        """Close the breaker and forget its history (an operator's override)."""
        self._move(BreakerState.CLOSED)

    def _admit(self) -> tuple[int, bool]:
        state = self.state
        if state is BreakerState.CLOSED:
            return self._generation, False
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight + self._probes_succeeded < self.settings.half_open_probes:
                self._probes_in_flight += 1
                return self._generation, True
            raise CircuitOpen(
                self.name,
                0.0,
                self._clock.now(),
                f"half-open, {self.settings.half_open_probes} probe call(s) already in flight",
            )
        retry_in = self.retry_in()
        raise CircuitOpen(self.name, retry_in, self._clock.now() + retry_in, self._reason)

    def _release(self, generation: int, probe: bool) -> None:
        if probe and generation == self._generation:
            self._probes_in_flight -= 1

    def _record(self, generation: int, probe: bool, *, failed: bool) -> None:
        if generation != self._generation:
            return  # the call began before the last change of state; its outcome is stale
        if probe:
            self._probes_in_flight -= 1
            if failed:
                self._trip("a half-open probe call failed")
            else:
                self._probes_succeeded += 1
                if self._probes_succeeded >= self.settings.half_open_probes:
                    self._move(BreakerState.CLOSED)
            return
        self._outcomes.append(failed)
        self._consecutive = self._consecutive + 1 if failed else 0
        s = self.settings
        if s.consecutive_failures is not None and self._consecutive >= s.consecutive_failures:
            self._trip(f"{self._consecutive} consecutive failures")
            return
        if s.failure_rate is not None and len(self._outcomes) >= s.minimum_calls:
            failures = sum(self._outcomes)
            if failures / len(self._outcomes) >= s.failure_rate:
                self._trip(f"{failures} of the last {len(self._outcomes)} calls failed")

    def _trip(self, reason: str) -> None:
        self._reason = reason
        self._opened_at = self._clock.monotonic()
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probes_in_flight = 0
        self._probes_succeeded = 0
        if new is BreakerState.CLOSED:
            self._outcomes.clear()
            self._consecutive = 0
            self._reason = ""
        if old is new:
            return
        if new is BreakerState.OPEN:
            log.warning("breaker.opened", breaker=self.name, reason=self._reason)
        else:
            log.info("breaker.state", breaker=self.name, old=old.value, new=new.value)
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value})"
