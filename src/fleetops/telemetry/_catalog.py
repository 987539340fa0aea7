"""Every metric fleetops exports: name, type, labels, unit and meaning.

The six seed metrics keep the names the seed fixed; everything else is prefixed
``fleetops_``, and the LLM metrics follow the OpenTelemetry GenAI semantic
conventions (``gen_ai.client.token.usage`` → ``gen_ai_client_token_usage``).
``docs/metrics.md`` says how each is measured and what an agent calls to feed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MILLISECONDS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
STEPS_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)
TOKENS_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    #: how per-worker values of a gauge combine into the fleet's value
    merge: Literal["sum", "avg", "max", "last"] = "sum"


# --- the seed's six multi-agent metrics -------------------------------------------------------

AGENT_COORDINATION_EFFICIENCY = MetricDef(
    "agent_coordination_efficiency",
    "histogram",
    ("cluster", "coordination_type"),
    "Seconds from a coordinating task's start until every task it coordinated answered.",
    SECONDS_BUCKETS,
)
CONSENSUS_SUCCESS_RATE = MetricDef(
    "consensus_success_rate",
    "gauge",
    ("cluster",),
    "Share of consensus rounds (votes) that reached a decision, over the last 100 rounds.",
    merge="avg",
)
MESSAGE_DELIVERY_LATENCY = MetricDef(
    "message_delivery_latency",
    "histogram",
    ("source_cluster", "target_cluster"),
    "Milliseconds from a message (child task) being sent until an agent starts on it.",
    MILLISECONDS_BUCKETS,
)
AGENT_UTILIZATION = MetricDef(
    "agent_utilization",
    "gauge",
    ("cluster", "worker"),
    "Busy share of a worker's agent slots (running tasks / concurrency), 0 to 1.",
    merge="last",
)
REASONING_CHAIN_LENGTH = MetricDef(
    "reasoning_chain_length",
    "histogram",
    ("cluster", "agent"),
    "Steps (thought, tool call, observation rounds) in an agent's reasoning chain.",
    STEPS_BUCKETS,
)
PLANNING_SUCCESS_RATE = MetricDef(
    "planning_success_rate",
    "gauge",
    ("cluster", "agent"),
    "Share of plans that succeeded, over the agent's last 100 plans.",
    merge="avg",
)
SEED_METRICS = (
    AGENT_COORDINATION_EFFICIENCY,
    CONSENSUS_SUCCESS_RATE,
    MESSAGE_DELIVERY_LATENCY,
    AGENT_UTILIZATION,
    REASONING_CHAIN_LENGTH,
    PLANNING_SUCCESS_RATE,
)

# --- runtime ---------------------------------------------------------------------------------

TASKS_FINISHED = MetricDef(
    "fleetops_task_attempts_total",
    "counter",
    ("cluster", "agent", "outcome"),
    "Task attempts by outcome: succeeded, failed, dead_lettered, released, lease_lost.",
)
TASK_DURATION = MetricDef(
    "fleetops_task_duration_seconds",
    "histogram",
    ("cluster", "agent"),
    "Seconds an attempt ran in its agent.",
    SECONDS_BUCKETS,
)
QUEUE_WAIT = MetricDef(
    "fleetops_task_queue_wait_seconds",
    "histogram",
    ("cluster", "agent"),
    "Seconds from a task's submission (or retry time) to its attempt's start.",
    SECONDS_BUCKETS,
)
TASKS = MetricDef(
    "fleetops_tasks", "gauge", ("cluster", "agent", "state"), "Tasks in the store by state."
)
QUEUE_DEPTH = MetricDef("fleetops_queue_depth", "gauge", ("cluster",), "Tasks waiting to run.")
LEASE_EXPIRATIONS = MetricDef(
    "fleetops_lease_expirations_total",
    "counter",
    ("cluster",),
    "Leases that expired without their holder renewing them.",
)
REDELIVERIES = MetricDef(
    "fleetops_redeliveries_total",
    "counter",
    ("cluster",),
    "Tasks taken from a lost worker and queued again.",
)
WORKER_RESTARTS = MetricDef(
    "fleetops_worker_restarts_total",
    "counter",
    ("cluster", "reason"),
    "Worker processes restarted after a crash (exited) or a hang (suspected).",
)
HEARTBEAT_PHI = MetricDef(
    "fleetops_heartbeat_phi",
    "gauge",
    ("cluster", "worker"),
    "Phi-accrual suspicion of each live worker (8 or more: presumed dead).",
    merge="last",
)
WORKERS = MetricDef("fleetops_workers", "gauge", ("cluster",), "Live, heartbeating workers.")
WORKERS_DESIRED = MetricDef(
    "fleetops_workers_desired", "gauge", ("cluster",), "Workers the spec (or scaler) asks for."
)

# --- LLM calls (OpenTelemetry GenAI semantic conventions) ------------------------------------

GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "cluster",
)
GENAI_TOKEN_USAGE = MetricDef(
    "gen_ai_client_token_usage",
    "histogram",
    (*GENAI_LABELS, "gen_ai_token_type"),
    "Tokens used per LLM call, by type (input, output).",
    TOKENS_BUCKETS,
)
GENAI_OPERATION_DURATION = MetricDef(
    "gen_ai_client_operation_duration_seconds",
    "histogram",
    (*GENAI_LABELS, "error_type"),
    "Seconds per LLM call (each attempt, fallbacks included).",
    SECONDS_BUCKETS,
)
GENAI_TIME_TO_FIRST_CHUNK = MetricDef(
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "histogram",
    GENAI_LABELS,
    "Seconds to the first streamed chunk of an LLM answer.",
    SECONDS_BUCKETS,
)
LLM_COST = MetricDef(
    "fleetops_llm_cost_dollars_total",
    "counter",
    ("cluster", "gen_ai_provider_name", "gen_ai_request_model"),
    "Money spent on LLM calls, from the provider's token prices.",
)
SPANS_DROPPED = MetricDef(
    "fleetops_spans_dropped_total",
    "counter",
    ("cluster",),
    "Finished spans a worker dropped because its span buffer was full (store too slow or down).",
)

RUNTIME_METRICS = (
    TASKS_FINISHED,
    TASK_DURATION,
    QUEUE_WAIT,
    TASKS,
    QUEUE_DEPTH,
    LEASE_EXPIRATIONS,
    REDELIVERIES,
    WORKER_RESTARTS,
    HEARTBEAT_PHI,
    WORKERS,
    WORKERS_DESIRED,
    SPANS_DROPPED,
)
GENAI_METRICS = (GENAI_TOKEN_USAGE, GENAI_OPERATION_DURATION, GENAI_TIME_TO_FIRST_CHUNK, LLM_COST)
ALL_METRICS = SEED_METRICS + RUNTIME_METRICS + GENAI_METRICS
BY_NAME = {m.name: m for m in ALL_METRICS}
