"""How long the metric history keeps each resolution.

Three tiers, as the project was seeded: raw samples for 24 hours, one row per series
per minute for 7 days, one row per series per hour for 90 days. Each rollup row holds
the count, sum, min, max and last value of its bucket and the counter increase within
it, so every query function can be answered from any tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._exceptions import ConfigError

DEFAULT_RAW_SECONDS = 24 * 3600.0
DEFAULT_MEDIUM_SECONDS = 7 * 86400.0
DEFAULT_LOW_SECONDS = 90 * 86400.0
DEFAULT_MEDIUM_STEP_SECONDS = 60.0
DEFAULT_LOW_STEP_SECONDS = 3600.0

#: The tier names, finest first; queries and reports use them.
TIERS = ("raw", "medium", "low")


def human_seconds(seconds: float) -> str:
    """``86400`` → ``'24h'``, ``604800`` → ``'7d'``, ``90`` → ``'90s'``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and not (unit == "d" and seconds < 2 * size):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each tier is kept, and the bucket width of the two rollup tiers.

    All values are seconds. ``raw`` samples are kept as ingested; ``medium`` holds one
    row per series per ``medium_step``; ``low`` one row per series per ``low_step``.
    Coarser tiers must be kept longer, and ``low_step`` must be a whole multiple of
    ``medium_step`` because low rows are made from medium rows.
    """

    raw: float = DEFAULT_RAW_SECONDS
    medium: float = DEFAULT_MEDIUM_SECONDS
    low: float = DEFAULT_LOW_SECONDS
    medium_step: float = DEFAULT_MEDIUM_STEP_SECONDS
    low_step: float = DEFAULT_LOW_STEP_SECONDS

    def __post_init__(self) -> None:
        for name in ("raw", "medium", "low", "medium_step", "low_step"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"retention.{name}", value, "use a positive number of seconds")
        for name in ("medium_step", "low_step"):
            value = getattr(self, name)
            if value != int(value):
                raise ConfigError(
                    f"retention.{name}", value, "use a whole number of seconds, such as 60"
                )
        if self.low_step % self.medium_step:
            raise ConfigError(
                "retention.low_step",
                self.low_step,
                f"use a whole multiple of medium_step ({human_seconds(self.medium_step)}), "
                "since each low row is made of whole medium rows",
            )
        if self.low_step <= self.medium_step:
            raise ConfigError(
                "retention.low_step",
                self.low_step,
                f"use a step wider than medium_step ({human_seconds(self.medium_step)})",
            )
        for tier, step in (("raw", self.medium_step), ("medium", self.low_step)):
            kept = getattr(self, tier)
            if kept <= step:
                coarser = "medium_step" if tier == "raw" else "low_step"
                raise ConfigError(
                    f"retention.{tier}",
                    kept,
                    f"keep {tier} longer than {coarser} ({human_seconds(step)}), "
                    "or its rows expire before they are rolled up",
                )
        for finer, coarser in (("raw", "medium"), ("medium", "low")):
            if getattr(self, coarser) <= getattr(self, finer):
                raise ConfigError(
                    f"retention.{coarser}",
                    getattr(self, coarser),
                    f"keep {coarser} longer than {finer} ({human_seconds(getattr(self, finer))})",
                )
        if self.low <= self.low_step:
            raise ConfigError(
                "retention.low",
                self.low,
                f"keep low longer than low_step ({human_seconds(self.low_step)})",
            )

    def keep(self, tier: str) -> float:
        """Seconds that ``tier`` (``raw``, ``medium`` or ``low``) is kept."""
        return float(getattr(self, tier))

    def step(self, tier: str) -> float:
        """The bucket width of ``tier`` in seconds; 0 for ``raw``."""
        return 0.0 if tier == "raw" else float(getattr(self, f"{tier}_step"))
