"""Retry policy: how many failures a task may have, and how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .._exceptions import ConfigError

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_MAX_REDELIVERIES = 10


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (the AWS architecture blog's variant).

    ``max_attempts`` counts attempts whose handler raised or timed out; after that
    many the task is dead-lettered with the last error. Attempts lost to a dying
    worker count separately, against ``max_redeliveries``: a task that keeps killing
    the workers it lands on is a poison task and is dead-lettered too.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_redeliveries: int = DEFAULT_MAX_REDELIVERIES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("retry.max_attempts", self.max_attempts, "use 1 or more")
        # Written so that NaN and infinity fail the checks too.
        if not (math.isfinite(self.backoff_base) and self.backoff_base >= 0):
            raise ConfigError(
                "retry.backoff_base", self.backoff_base, "use a finite number of seconds, 0 or more"
            )
        if not (math.isfinite(self.backoff_max) and self.backoff_max >= self.backoff_base):
            raise ConfigError(
                "retry.backoff_max",
                self.backoff_max,
                "use a finite number of seconds no smaller than backoff_base",
            )
        if self.max_redeliveries < 0:
            raise ConfigError("retry.max_redeliveries", self.max_redeliveries, "use 0 or more")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th failure: uniform in [0, capped exp]."""
        try:
            grown = math.ldexp(self.backoff_base, max(0, failures - 1))
        except OverflowError:  # 2 ** failures is past any float: the cap applies
            grown = math.inf
        return rng.uniform(0.0, min(self.backoff_max, grown))

    def gives_up_after(self, failures: int) -> bool:
        """True when ``failures`` failed attempts exhaust the policy."""
        return failures >= self.max_attempts
