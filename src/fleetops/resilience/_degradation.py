"""Graceful degradation: try ordered fallbacks, from the best answer to a canned one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .._exceptions import ConfigError, UsageError
from ..telemetry import get_logger
from ._errors import DegradationExhausted

In = TypeVar("In")
Out = TypeVar("Out")

log = get_logger("fleetops.resilience")


def degrade_on_outage(exc: BaseException) -> bool:
    """The default: fall back on any error except a caller's mistake (:class:`UsageError`).

    A request that is wrong stays wrong on a cheaper model, so it is raised at once.
    """
    return isinstance(exc, Exception) and not isinstance(exc, UsageError)


@dataclass(frozen=True, slots=True)
class DegradationStep(Generic[In, Out]):
    """One way of answering, e.g. "primary model", "cheaper model", "canned answer"."""

    name: str
    run: Callable[[In], Awaitable[Out]]

    @staticmethod
    def constant(name: str, value: Out) -> DegradationStep[Any, Out]:
        """A last resort that always answers ``value`` (a cached or canned answer)."""

        async def answer(_: Any) -> Out:
            return value

        return DegradationStep(name, answer)


@dataclass(frozen=True, slots=True)
class Degraded(Generic[Out]):
    """An answer and how far down the policy it came from.

    ``level`` is 0 for the first step; ``skipped`` holds each earlier step's error.
    """

    value: Out
    step: str
    level: int
    skipped: tuple[tuple[str, BaseException], ...] = field(default=())

    @property
    def degraded(self) -> bool:
        """True when the answer did not come from the first step."""
        return self.level > 0


class DegradationPolicy(Generic[In, Out]):
    """Runs ``steps`` in order and answers with the first that succeeds.

    An error that ``degrade_on`` accepts moves on to the next step; any other error is
    raised at once. When every step fails, :class:`DegradationExhausted` carries each
    step's error.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[DegradationStep[In, Out]],
        *,
        degrade_on: Callable[[BaseException], bool] = degrade_on_outage,
    ) -> None:
        if not steps:
            raise ConfigError(f"{name}.steps", [], "give at least one step")
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"{name}.steps", names, "give every step a different name")
        self.name = name
        self.steps = tuple(steps)
        self._degrade_on = degrade_on

    async def run(self, value: In) -> Degraded[Out]:
        """Answer ``value`` with the best step that works."""
        skipped: list[tuple[str, BaseException]] = []
        for level, step in enumerate(self.steps):
            try:
                out = await step.run(value)
            except Exception as exc:
                if not self._degrade_on(exc):
                    raise
                log.warning(
                    "degradation.step_failed", policy=self.name, step=step.name, error=repr(exc)
                )
                skipped.append((step.name, exc))
                continue
            if level:
                log.info("degradation.degraded", policy=self.name, step=step.name, level=level)
            return Degraded(out, step.name, level, tuple(skipped))
        raise DegradationExhausted(self.name, skipped)
