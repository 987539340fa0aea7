"""The fleet-wide operations sections: observability, alerting and recovery.

Their defaults are the values the project was seeded with: retention tiers of 24 hours
(high resolution), 7 days (medium) and 90 days (low); warning and critical thresholds
for the fleet metrics; escalation after 15 minutes (critical) and 60 minutes (warning);
the ``agent_failure``, ``cluster_failure``, ``network_partition`` and
``consensus_failure`` recovery strategies.
"""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from ._types import (
    SPEC_CONFIG,
    Fraction,
    Number,
    PositiveCount,
    PositiveSeconds,
    Problem,
    TimeOfDay,
    human_duration,
    raise_problems,
)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
RecoveryAction = Literal[
    "redistribute_agent_workload",
    "restart_failed_agent",
    "spawn_replacement_agent",
    "notify_operations_team",
    "restart_cluster",
    "fence_stale_leases",
    "retry_consensus",
    "quarantine_faulty_agents",
]
_Actions = Annotated[tuple[RecoveryAction, ...], Field(min_length=1)]


# --- observability ------------------------------------------------------------------------------


class RetentionTier(BaseModel):
    """How long one resolution of metric history is kept."""

    model_config = SPEC_CONFIG

    keep: PositiveSeconds
    """How long samples at this resolution are kept."""
    resolution: PositiveSeconds
    """The step between stored samples."""


class Retention(BaseModel):
    """Metric history tiers, from fine and short to coarse and long."""

    model_config = SPEC_CONFIG

    high: RetentionTier = RetentionTier(keep=24 * 3600, resolution=10)
    medium: RetentionTier = RetentionTier(keep=7 * 86400, resolution=300)
    low: RetentionTier = RetentionTier(keep=90 * 86400, resolution=3600)

    @model_validator(mode="after")
    def _tiers_in_order(self) -> Retention:
        problems = []
        tiers = (("high", self.high), ("medium", self.medium), ("low", self.low))
        for name, tier in tiers:
            if tier.resolution >= tier.keep:
                problems.append(
                    Problem(
                        (name, "resolution"),
                        tier.resolution,
                        "the resolution is not shorter than the time kept",
                        f"use a resolution shorter than {name}.keep",
                    )
                )
        for (finer, a), (coarser, b) in zip(tiers, tiers[1:], strict=False):
            if b.keep <= a.keep:
                problems.append(
                    Problem(
                        (coarser, "keep"),
                        b.keep,
                        f"{coarser} keeps history no longer than {finer}",
                        f"keep {coarser} longer than {finer} ({human_duration(a.keep)})",
                    )
                )
            if b.resolution < a.resolution:
                problems.append(
                    Problem(
                        (coarser, "resolution"),
                        b.resolution,
                        f"{coarser} is finer than {finer}",
                        f"use a resolution of at least {human_duration(a.resolution)}",
                    )
                )
        raise_problems(problems)
        return self


class ObservabilitySettings(BaseModel):
    """Metric history."""

    model_config = SPEC_CONFIG

    retention: Retention = Retention()


# --- alerting -----------------------------------------------------------------------------------


class ThresholdLevel(BaseModel):
    """The values at which the fleet metrics raise an alert of one severity."""

    model_config = SPEC_CONFIG

    coordination_p95_seconds: Annotated[Number, Field(gt=0)]
    """p95 of agent_coordination_efficiency above this alerts."""
    consensus_success_rate: Fraction
    """consensus_success_rate below this alerts."""
    message_latency_p95_ms: Annotated[Number, Field(gt=0)]
    """p95 of message_delivery_latency above this (milliseconds) alerts."""
    utilization: Fraction
    """agent_utilization above this alerts."""
    reasoning_chain_length_p95: PositiveCount | None = None
    """p95 of reasoning_chain_length above this alerts; no alert when left out."""
    planning_success_rate: Fraction | None = None
    """planning_success_rate below this alerts; no alert when left out."""


_HIGHER_IS_WORSE = ("coordination_p95_seconds", "message_latency_p95_ms", "utilization")
_LOWER_IS_WORSE = ("consensus_success_rate", "planning_success_rate")


class AlertThresholds(BaseModel):
    """Warning and critical thresholds; critical must be at least as severe as warning."""

    model_config = SPEC_CONFIG

    warning: ThresholdLevel = ThresholdLevel(
        coordination_p95_seconds=5.0,
        consensus_success_rate=0.85,
        message_latency_p95_ms=1000.0,
        utilization=0.80,
    )
    critical: ThresholdLevel = ThresholdLevel(
        coordination_p95_seconds=10.0,
        consensus_success_rate=0.70,
        message_latency_p95_ms=5000.0,
        utilization=0.95,
    )

    @model_validator(mode="after")
    def _critical_is_worse(self) -> AlertThresholds:
        problems = []
        fields = _HIGHER_IS_WORSE + ("reasoning_chain_length_p95",) + _LOWER_IS_WORSE
        for field in fields:
            warning = getattr(self.warning, field)
            critical = getattr(self.critical, field)
            if warning is None or critical is None:
                continue
            if field in _LOWER_IS_WORSE and critical > warning:
                problems.append(
                    Problem(
                        ("critical", field),
                        critical,
                        f"critical is less severe than warning ({warning:g})",
                        f"use a value no higher than warning.{field}",
                    )
                )
            elif field not in _LOWER_IS_WORSE and critical < warning:
                problems.append(
                    Problem(
                        ("critical", field),
                        critical,
                        f"critical is less severe than warning ({warning:g})",
                        f"use a value no lower than warning.{field}",
                    )
                )
        raise_problems(problems)
        return self


class BusinessHours(BaseModel):
    """The working week; outside it is after hours."""

    model_config = SPEC_CONFIG

    timezone: Annotated[str, Field(strict=True, min_length=1)] = "UTC"
    """An IANA time zone name, e.g. Europe/Berlin."""
    days: Annotated[tuple[Weekday, ...], Field(min_length=1)] = ("mon", "tue", "wed", "thu", "fri")
    start: TimeOfDay = time(9, 0)
    """Local start of the working day, 'HH:MM'."""
    end: TimeOfDay = time(17, 0)
    """Local end of the working day, 'HH:MM'."""

    @model_validator(mode="after")
    def _check(self) -> BusinessHours:
        problems = []
        if not _known_timezone(self.timezone):
            problems.append(
                Problem(
                    ("timezone",),
                    self.timezone,
                    "unknown time zone",
                    "use an IANA time zone name such as UTC, Europe/Berlin or America/New_York",
                )
            )
        if self.end <= self.start:
            problems.append(
                Problem(
                    ("end",),
                    self.end.strftime("%H:%M"),
                    f"the working day ends before it starts ({self.start:%H:%M})",
                    "use an end time later than start",
                )
            )
        seen: set[str] = set()
        for index, day in enumerate(self.days):
            if day in seen:
                problems.append(Problem(("days", index), day, "day listed twice", "list it once"))
            seen.add(day)
        raise_problems(problems)
        return self


def _known_timezone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        # Without a time zone database nothing can be checked; accept the name.
        return not zoneinfo.available_timezones()
    return True


class Escalation(BaseModel):
    """When an unacknowledged alert escalates to the next level."""

    model_config = SPEC_CONFIG

    critical_after: PositiveSeconds = 15 * 60.0
    """An unacknowledged critical alert escalates after this long."""
    warning_after: PositiveSeconds = 60 * 60.0
    """An unacknowledged warning escalates after this long."""
    business_hours: BusinessHours = BusinessHours()


class AlertingSettings(BaseModel):
    """Alert thresholds and escalation."""

    model_config = SPEC_CONFIG

    thresholds: AlertThresholds = AlertThresholds()
    escalation: Escalation = Escalation()


# --- recovery -----------------------------------------------------------------------------------


class RecoveryStrategy(BaseModel):
    """How fast a failure must be detected and the steps run, in order, to recover."""

    model_config = SPEC_CONFIG

    detect_within: PositiveSeconds
    """The failure must be detected within this long."""
    actions: _Actions
    """The recovery steps, run in this order."""

    @model_validator(mode="after")
    def _unique_actions(self) -> RecoveryStrategy:
        seen: set[str] = set()
        problems = []
        for index, action in enumerate(self.actions):
            if action in seen:
                problems.append(
                    Problem(("actions", index), action, "action listed twice", "list it once")
                )
            seen.add(action)
        raise_problems(problems)
        return self


class RecoverySettings(BaseModel):
    """The recovery strategy for each kind of failure."""

    model_config = SPEC_CONFIG

    agent_failure: RecoveryStrategy = RecoveryStrategy(
        detect_within=30.0,
        actions=(
            "redistribute_agent_workload",
            "restart_failed_agent",
            "spawn_replacement_agent",
            "notify_operations_team",
        ),
    )
    cluster_failure: RecoveryStrategy = RecoveryStrategy(
        detect_within=60.0,
        actions=("redistribute_agent_workload", "restart_cluster", "notify_operations_team"),
    )
    network_partition: RecoveryStrategy = RecoveryStrategy(
        detect_within=30.0, actions=("fence_stale_leases", "notify_operations_team")
    )
    consensus_failure: RecoveryStrategy = RecoveryStrategy(
        detect_within=60.0,
        actions=("retry_consensus", "quarantine_faulty_agents", "notify_operations_team"),
    )
