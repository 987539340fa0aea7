"""Phi-accrual failure detection (Hayashibara et al., 2004; as in Akka and Cassandra).

Instead of a fixed timeout, the detector learns the distribution of heartbeat
intervals and answers, at any moment, how unlikely it is that the next heartbeat is
merely late: ``phi = -log10(P(interval > elapsed))``. ``phi = 8`` means a one in 10^8
chance of a false alarm under the learned distribution.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .._exceptions import ConfigError

DEFAULT_THRESHOLD = 8.0
DEFAULT_MIN_STD = 0.1
DEFAULT_ACCEPTABLE_PAUSE = 0.75
DEFAULT_WINDOW = 200


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """``threshold`` phi to suspect; floors and allowances for noisy heartbeats."""

    threshold: float = DEFAULT_THRESHOLD
    min_std: float = DEFAULT_MIN_STD
    acceptable_pause: float = DEFAULT_ACCEPTABLE_PAUSE
    window: int = DEFAULT_WINDOW
    first_interval: float = 0.2

    def __post_init__(self) -> None:
        for name in ("threshold", "min_std", "acceptable_pause", "first_interval"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"failure_detector.{name}", value, "use a finite number")
        if self.first_interval <= 0:
            raise ConfigError(
                "failure_detector.first_interval", self.first_interval, "use seconds > 0"
            )
        if self.threshold <= 0:
            raise ConfigError("failure_detector.threshold", self.threshold, "use a value > 0")
        if self.min_std <= 0:
            raise ConfigError("failure_detector.min_std", self.min_std, "use seconds > 0")
        if self.acceptable_pause < 0:
            raise ConfigError(
                "failure_detector.acceptable_pause", self.acceptable_pause, "use seconds >= 0"
            )
        if self.window < 2:
            raise ConfigError("failure_detector.window", self.window, "use 2 or more")


class PhiAccrualFailureDetector:
    """Tracks one monitored process's heartbeats; times are on any one clock."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._intervals: deque[float] = deque(maxlen=self.settings.window)
        self._last: float | None = None
        first = self.settings.first_interval
        # Seed with a plausible history so a fresh process is not suspected at once.
        self._intervals.extend([first - first / 4, first + first / 4])

    @property
    def last_heartbeat(self) -> float | None:
        return self._last

    def heartbeat(self, at: float) -> None:
        if self._last is not None and at > self._last:
            self._intervals.append(at - self._last)
        self._last = at if self._last is None else max(self._last, at)

    def phi(self, now: float) -> float:
        if self._last is None:
            return 0.0
        n = len(self._intervals)
        mean = sum(self._intervals) / n
        variance = sum((x - mean) ** 2 for x in self._intervals) / n
        std = max(math.sqrt(variance), self.settings.min_std)
        elapsed = now - self._last
        y = (elapsed - (mean + self.settings.acceptable_pause)) / std
        # Akka's logistic approximation of the normal CDF's tail, in log space.
        e = math.exp(-y * (1.5976 + 0.070566 * y * y)) if y > -40 else math.inf
        if y > 0:
            p_later = e / (1.0 + e)
        else:
            p_later = 1.0 - 1.0 / (1.0 + e)
        if p_later <= 0:
            return math.inf
        return -math.log10(p_later)

    def is_available(self, now: float) -> bool:
        return self.phi(now) < self.settings.threshold
