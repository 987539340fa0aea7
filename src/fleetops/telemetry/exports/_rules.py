"""Prometheus recording and alert rules for a fleet, with the spec's thresholds.

Recording rules follow Prometheus's ``level:metric:operations`` naming: the level
lists the labels kept, so ``cluster_agent:fleetops_task_duration_seconds:p95_5m``
is the p95 of task durations per cluster and agent over five minutes. Alert rules
come in pairs, one per severity, under one alert name, so Alertmanager can inhibit
the warning while the critical fires. The seed metrics' alerts read their thresholds
from ``alerting.thresholds`` of the spec; the runtime alerts use the module defaults
below.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ...spec import AlertingSettings, FleetSpec, ThresholdLevel
from .. import _catalog as catalog
from .._catalog import MetricDef

Severity = Literal["warning", "critical"]

#: The window of every rate and quantile.
WINDOW = "5m"
#: How long a condition must hold before its alert fires.
FOR = 300.0
#: Utilisation swings with every burst; it must stay high this long to alert.
UTILIZATION_FOR = 600.0
#: Share of task attempts that fail (failed, dead-lettered, lost with their worker).
TASK_ERROR_RATIO = {"warning": 0.05, "critical": 0.25}
#: Outcomes of ``fleetops_task_attempts_total`` that count as errors; ``released``
#: (handed back on a drain) is neither a success nor an error.
ERROR_OUTCOMES = ("failed", "dead_lettered", "lease_lost")
#: A cluster with fewer live workers than desired for this long is degraded.
WORKERS_MISSING_FOR = 300.0
#: A cluster with no live worker for this long is down.
CLUSTER_DOWN_FOR = 60.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What the alert rules are built from: thresholds per severity and escalation."""

    levels: dict[Severity, ThresholdLevel]
    escalate_after: dict[Severity, float]

    @classmethod
    def from_spec(cls, spec: FleetSpec | AlertingSettings | None = None) -> Thresholds:
        """The spec's ``alerting`` section, or the seed's defaults without a spec."""
        alerting = spec.alerting if isinstance(spec, FleetSpec) else spec or AlertingSettings()
        return cls(
            levels={
                "warning": alerting.thresholds.warning,
                "critical": alerting.thresholds.critical,
            },
            escalate_after={
                "warning": alerting.escalation.warning_after,
                "critical": alerting.escalation.critical_after,
            },
        )


def prometheus_duration(seconds: float) -> str:
    """``300`` as ``5m``, ``90`` as ``90s``, ``0.25`` as ``250ms`` (integer units only)."""
    millis = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis >= size and millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def level_name(labels: tuple[str, ...]) -> str:
    """The ``level`` part of a recording rule's name: the labels it keeps."""
    return "_".join(labels) if labels else "fleet"


def p95_record(metric: MetricDef, by: tuple[str, ...] | None = None) -> str:
    return f"{level_name(metric.labels if by is None else by)}:{metric.name}:p95_{WINDOW}"


def histogram_p95(
    metric: MetricDef, by: tuple[str, ...] | None = None, matchers: str = "", window: str = WINDOW
) -> str:
    """``histogram_quantile(0.95, …)`` of a catalogue histogram, by ``by`` (all its labels)."""
    keep = ", ".join(("le", *(metric.labels if by is None else by)))
    return (
        f"histogram_quantile(0.95, sum by ({keep}) "
        f"(rate({metric.name}_bucket{matchers}[{window}])))"
    )


# --- recording rules -------------------------------------------------------------------------

TASK_ATTEMPTS = catalog.TASKS_FINISHED
ERRORS_MATCHER = '{outcome=~"' + "|".join(ERROR_OUTCOMES) + '"}'
COUNTED_MATCHER = '{outcome!="released"}'
SUCCEEDED_MATCHER = '{outcome="succeeded"}'
LLM_ERRORS_MATCHER = '{error_type!=""}'
#: LLM series are kept per cluster and provider (not per model and error type).
LLM_BY = ("cluster", "gen_ai_provider_name")

UTILIZATION_RECORD = f"cluster:{catalog.AGENT_UTILIZATION.name}:avg"
THROUGHPUT_RECORD = f"cluster_agent:fleetops_task_throughput:rate{WINDOW}"
ATTEMPTS_RECORD = f"cluster_agent_outcome:{TASK_ATTEMPTS.name.removesuffix('_total')}:rate{WINDOW}"
ERROR_RATIO_RECORD = f"cluster_agent:fleetops_task_errors:ratio_rate{WINDOW}"
TOKENS_RECORD = f"cluster_gen_ai_token_type:{catalog.GENAI_TOKEN_USAGE.name}:rate{WINDOW}"
LLM_ERROR_RATIO_RECORD = (
    f"cluster_gen_ai_provider_name:gen_ai_client_operation_errors:ratio_rate{WINDOW}"
)
LLM_COST_RECORD = f"cluster:{catalog.LLM_COST.name.removesuffix('_total')}_per_hour:rate{WINDOW}"


def _rate(name: str, matchers: str = "") -> str:
    return f"rate({name}{matchers}[{WINDOW}])"


def recording_rules() -> list[dict[str, str]]:
    """The recording rules: p95s, averages, throughput, error ratios, tokens and cost."""
    rules = [
        {"record": p95_record(metric, by), "expr": histogram_p95(metric, by)}
        for metric, by in (
            (catalog.AGENT_COORDINATION_EFFICIENCY, None),
            (catalog.MESSAGE_DELIVERY_LATENCY, None),
            (catalog.REASONING_CHAIN_LENGTH, None),
            (catalog.TASK_DURATION, None),
            (catalog.QUEUE_WAIT, None),
            (catalog.GENAI_OPERATION_DURATION, LLM_BY),
        )
    ]
    attempts = TASK_ATTEMPTS.name
    calls = catalog.GENAI_OPERATION_DURATION.name + "_count"
    cost = catalog.LLM_COST
    rules += [
        {
            "record": UTILIZATION_RECORD,
            "expr": f"avg by (cluster) ({catalog.AGENT_UTILIZATION.name})",
        },
        {
            "record": ATTEMPTS_RECORD,
            "expr": f"sum by (cluster, agent, outcome) ({_rate(attempts)})",
        },
        {
            "record": THROUGHPUT_RECORD,
            "expr": f"sum by (cluster, agent) ({_rate(attempts, SUCCEEDED_MATCHER)})",
        },
        {
            "record": ERROR_RATIO_RECORD,
            "expr": (
                f"sum by (cluster, agent) ({_rate(attempts, ERRORS_MATCHER)})\n"
                f"/\nsum by (cluster, agent) ({_rate(attempts, COUNTED_MATCHER)})"
            ),
        },
        {
            "record": TOKENS_RECORD,
            "expr": (
                "sum by (cluster, gen_ai_token_type) "
                f"({_rate(catalog.GENAI_TOKEN_USAGE.name + '_sum')})"
            ),
        },
        {
            "record": LLM_ERROR_RATIO_RECORD,
            "expr": (
                "sum by (cluster, gen_ai_provider_name) "
                f"({_rate(calls, LLM_ERRORS_MATCHER)})\n/\n"
                f"sum by (cluster, gen_ai_provider_name) ({_rate(calls)})"
            ),
        },
        {
            "record": LLM_COST_RECORD,
            "expr": f"sum by (cluster) ({_rate(cost.name)}) * 3600",
        },
    ]
    return rules


# --- alert rules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SeedAlert:
    alert: str
    field: str
    expr: str  # the value compared with the threshold
    higher_is_worse: bool
    what: str  # summary, with Go template placeholders
    unit: str  # how a value and the threshold are printed
    runbook: str
    for_seconds: float = FOR


_COORDINATION = catalog.AGENT_COORDINATION_EFFICIENCY
_LATENCY = catalog.MESSAGE_DELIVERY_LATENCY
_CHAIN = catalog.REASONING_CHAIN_LENGTH

SEED_ALERTS = (
    _SeedAlert(
        "AgentCoordinationSlow",
        "coordination_p95_seconds",
        p95_record(_COORDINATION),
        True,
        "p95 coordination time of {{ $labels.coordination_type }} in cluster "
        "{{ $labels.cluster }} is {{ $value | humanizeDuration }}",
        "s",
        "Coordinated tasks wait on their slowest child: check the target clusters' queue "
        "depth and utilization (`fleetops status`), then scale them or raise their "
        "concurrency.",
    ),
    _SeedAlert(
        "ConsensusSuccessRateLow",
        "consensus_success_rate",
        catalog.CONSENSUS_SUCCESS_RATE.name,
        False,
        "consensus succeeds in {{ $value | humanizePercentage }} of rounds in cluster "
        "{{ $labels.cluster }}",
        "%",
        "Votes end without a decision: look for a voter that fails or disagrees with the "
        "others (`fleetops tasks --cluster CLUSTER --state dead`) and for LLM errors; the "
        "consensus_failure recovery strategy applies.",
    ),
    _SeedAlert(
        "MessageDeliveryLatencyHigh",
        "message_latency_p95_ms",
        p95_record(_LATENCY),
        True,
        "p95 delivery of messages from {{ $labels.source_cluster }} to "
        "{{ $labels.target_cluster }} takes {{ $value | humanize }} ms",
        "ms",
        "Messages wait in the target cluster's queue: check its queue depth, live workers "
        "and quotas (max_concurrent_tasks); scale it with `fleetops apply`.",
    ),
    _SeedAlert(
        "AgentUtilizationHigh",
        "utilization",
        UTILIZATION_RECORD,
        True,
        "agents of cluster {{ $labels.cluster }} are {{ $value | humanizePercentage }} busy",
        "%",
        "The cluster is near capacity: raise replicas (within resource_quotas.max_agents) "
        "or concurrency with `fleetops apply`, or shed load.",
        UTILIZATION_FOR,
    ),
    _SeedAlert(
        "ReasoningChainTooLong",
        "reasoning_chain_length_p95",
        p95_record(_CHAIN),
        True,
        "p95 reasoning chain of {{ $labels.agent }} in cluster {{ $labels.cluster }} "
        "is {{ $value | humanize }} steps",
        "steps",
        "The agent loops without reaching an answer: inspect its recent traces for "
        "repeated tool calls, and check its tools and prompt.",
    ),
    _SeedAlert(
        "PlanningSuccessRateLow",
        "planning_success_rate",
        catalog.PLANNING_SUCCESS_RATE.name,
        False,
        "plans of {{ $labels.agent }} in cluster {{ $labels.cluster }} succeed "
        "{{ $value | humanizePercentage }} of the time",
        "%",
        "Plans fail: inspect the agent's failed tasks and traces, and the LLM provider's "
        "error rate.",
    ),
)


def _show(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:g}%"
    if unit == "s":
        return prometheus_duration(value)
    return f"{value:g} {unit}"


def _seed_alert(alert: _SeedAlert, severity: Severity, t: Thresholds) -> dict[str, Any] | None:
    threshold = getattr(t.levels[severity], alert.field)
    if threshold is None:
        return None
    op, side = (">", "above") if alert.higher_is_worse else ("<", "below")
    window = prometheus_duration(alert.for_seconds)
    return {
        "alert": alert.alert,
        "expr": f"{alert.expr} {op} {threshold:g}",
        "for": window,
        "labels": {"severity": severity},
        "annotations": {
            "summary": alert.what,
            "description": (
                f"{side.capitalize()} the {severity} threshold of "
                f"{_show(threshold, alert.unit)} (alerting.thresholds.{severity}."
                f"{alert.field}) for {window}."
            ),
            "runbook": alert.runbook,
            "escalate_after": prometheus_duration(t.escalate_after[severity]),
        },
    }


def _runtime_alerts(t: Thresholds) -> Iterator[dict[str, Any]]:
    window = prometheus_duration(FOR)
    for severity in ("warning", "critical"):
        ratio = TASK_ERROR_RATIO[severity]
        yield {
            "alert": "TaskErrorRatioHigh",
            "expr": f"{ERROR_RATIO_RECORD} > {ratio:g}",
            "for": window,
            "labels": {"severity": severity},
            "annotations": {
                "summary": "{{ $value | humanizePercentage }} of attempts of "
                "{{ $labels.cluster }}/{{ $labels.agent }} fail",
                "description": f"More than {ratio:.0%} of task attempts failed, were "
                f"dead-lettered or lost with their worker over {WINDOW}, for {window}.",
                "runbook": "Read the failure reasons (`fleetops tasks --state dead`) and the "
                "workers' logs; check the LLM provider's errors and circuit breakers.",
                "escalate_after": prometheus_duration(t.escalate_after[severity]),
            },
        }
    workers, desired = catalog.WORKERS.name, catalog.WORKERS_DESIRED.name
    yield {
        "alert": "WorkersMissing",
        "expr": f"{workers} < {desired}",
        "for": prometheus_duration(WORKERS_MISSING_FOR),
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "cluster {{ $labels.cluster }} runs {{ $value }} workers, fewer "
            "than desired",
            "description": "Live, heartbeating workers stayed below the desired count for "
            f"{prometheus_duration(WORKERS_MISSING_FOR)}: restarts are failing or "
            "quotas block them.",
            "runbook": "Check `fleetops status` and the supervisor's restart events; a "
            "worker that crashes at start shows its error in the control plane's log.",
            "escalate_after": prometheus_duration(t.escalate_after["warning"]),
        },
    }
    yield {
        "alert": "ClusterDown",
        "expr": f"{workers} == 0 and {desired} > 0",
        "for": prometheus_duration(CLUSTER_DOWN_FOR),
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "cluster {{ $labels.cluster }} has no live worker",
            "description": "No worker of the cluster has heartbeated for "
            f"{prometheus_duration(CLUSTER_DOWN_FOR)}; its tasks wait in the queue.",
            "runbook": "The cluster_failure recovery strategy applies: check `fleetops "
            "status`, the control plane's log and the store; restart the fleet if the "
            "control plane is gone.",
            "escalate_after": prometheus_duration(t.escalate_after["critical"]),
        },
    }


def alert_rules(thresholds: Thresholds | None = None) -> list[dict[str, Any]]:
    """Alert rules for the seed metrics at each severity's threshold, then runtime alerts."""
    t = thresholds or Thresholds.from_spec()
    rules = []
    for alert in SEED_ALERTS:
        for severity in ("warning", "critical"):
            rule = _seed_alert(alert, severity, t)
            if rule is not None:
                rules.append(rule)
    rules.extend(_runtime_alerts(t))
    return rules


def rule_groups(spec: FleetSpec | None = None) -> list[dict[str, Any]]:
    """The rule groups of a Prometheus rules file (and of a PrometheusRule's spec)."""
    name = spec.fleet.name if spec is not None else "fleetops"
    prefix = name if name == "fleetops" else f"fleetops-{name}"
    return [
        {"name": f"{prefix}.recording", "rules": recording_rules()},
        {"name": f"{prefix}.alerts", "rules": alert_rules(Thresholds.from_spec(spec))},
    ]


def prometheus_rules(spec: FleetSpec | None = None) -> dict[str, Any]:
    """A Prometheus rules file: ``{"groups": [...]}``."""
    return {"groups": rule_groups(spec)}
