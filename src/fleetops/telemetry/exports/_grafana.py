"""A Grafana dashboard for a fleet: the six seed metrics, tasks, latency, LLM, workers.

Queries read the raw metrics (not the recording rules), so the dashboard works on any
Prometheus that scrapes the fleet. A ``${datasource}`` variable picks the Prometheus
data source and ``$cluster`` the clusters shown; the seed metrics' panels draw the
spec's warning and critical thresholds as lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...spec import FleetSpec
from .. import _catalog as catalog
from .._catalog import MetricDef
from ._rules import ERROR_OUTCOMES, TASK_ERROR_RATIO, Thresholds, histogram_p95

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
PANEL_HEIGHT = 8
GRID_WIDTH = 24


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    min: float | None = None
    max: float | None = None
    #: (colour, from value) steps; the first starts at minus infinity
    steps: tuple[tuple[str, float | None], ...] = ()
    stacked: bool = False


def _cluster(label: str = "cluster") -> str:
    return f'{label}=~"$cluster"'


def _p95(metric: MetricDef, label: str = "cluster", by: tuple[str, ...] | None = None) -> str:
    return histogram_p95(metric, by, matchers=f"{{{_cluster(label)}}}", window=RATE)


def _legend(labels: tuple[str, ...]) -> str:
    return " ".join("{{" + label + "}}" for label in labels)


def _higher_is_worse(warning: float | None, critical: float | None) -> tuple[Any, ...]:
    steps: list[tuple[str, float | None]] = [("green", None)]
    if warning is not None:
        steps.append(("orange", warning))
    if critical is not None:
        steps.append(("red", critical))
    return tuple(steps)


def _lower_is_worse(warning: float | None, critical: float | None) -> tuple[Any, ...]:
    if warning is None and critical is None:
        return ()
    steps: list[tuple[str, float | None]] = [("red" if critical is not None else "orange", None)]
    if critical is not None and warning is not None:
        steps.append(("orange", critical))
    steps.append(("green", warning if warning is not None else critical))
    return tuple(steps)


def _seed_panels(t: Thresholds) -> list[Panel]:
    warn, crit = t.levels["warning"], t.levels["critical"]
    coordination = catalog.AGENT_COORDINATION_EFFICIENCY
    latency = catalog.MESSAGE_DELIVERY_LATENCY
    chain = catalog.REASONING_CHAIN_LENGTH
    consensus = catalog.CONSENSUS_SUCCESS_RATE
    utilization = catalog.AGENT_UTILIZATION
    planning = catalog.PLANNING_SUCCESS_RATE
    return [
        Panel(
            "Coordination time p95",
            coordination.help,
            (Query(_p95(coordination), _legend(coordination.labels)),),
            unit="s",
            min=0,
            steps=_higher_is_worse(warn.coordination_p95_seconds, crit.coordination_p95_seconds),
        ),
        Panel(
            "Consensus success rate",
            consensus.help,
            (Query(f"{consensus.name}{{{_cluster()}}}", _legend(consensus.labels)),),
            unit="percentunit",
            min=0,
            max=1,
            steps=_lower_is_worse(warn.consensus_success_rate, crit.consensus_success_rate),
        ),
        Panel(
            "Message delivery latency p95",
            latency.help,
            (Query(_p95(latency, "target_cluster"), _legend(latency.labels).replace(" ", " → ")),),
            unit="ms",
            min=0,
            steps=_higher_is_worse(warn.message_latency_p95_ms, crit.message_latency_p95_ms),
        ),
        Panel(
            "Agent utilization",
            utilization.help,
            (
                Query(f"avg by (cluster) ({utilization.name}{{{_cluster()}}})", "{{cluster}}"),
                Query(f"{utilization.name}{{{_cluster()}}}", "{{cluster}} {{worker}}"),
            ),
            unit="percentunit",
            min=0,
            max=1,
            steps=_higher_is_worse(warn.utilization, crit.utilization),
        ),
        Panel(
            "Reasoning chain length p95",
            chain.help,
            (Query(_p95(chain), _legend(chain.labels)),),
            min=0,
            steps=_higher_is_worse(
                warn.reasoning_chain_length_p95, crit.reasoning_chain_length_p95
            ),
        ),
        Panel(
            "Planning success rate",
            planning.help,
            (Query(f"{planning.name}{{{_cluster()}}}", _legend(planning.labels)),),
            unit="percentunit",
            min=0,
            max=1,
            steps=_lower_is_worse(warn.planning_success_rate, crit.planning_success_rate),
        ),
    ]


def _task_panels(t: Thresholds) -> list[Panel]:
    attempts = catalog.TASKS_FINISHED.name
    errors = "|".join(ERROR_OUTCOMES)
    return [
        Panel(
            "Throughput (succeeded tasks)",
            "Task attempts that succeeded, per second.",
            (
                Query(
                    f'sum by (cluster, agent) (rate({attempts}{{{_cluster()}, outcome="succeeded"}}'
                    f"[{RATE}]))",
                    "{{cluster}}/{{agent}}",
                ),
            ),
            unit="ops",
            min=0,
        ),
        Panel(
            "Error ratio",
            "Share of task attempts that failed, were dead-lettered or were lost with their "
            "worker.",
            (
                Query(
                    f'sum by (cluster, agent) (rate({attempts}{{{_cluster()}, outcome=~"{errors}"}}'
                    f"[{RATE}]))\n/\nsum by (cluster, agent) "
                    f'(rate({attempts}{{{_cluster()}, outcome!="released"}}[{RATE}]))',
                    "{{cluster}}/{{agent}}",
                ),
            ),
            unit="percentunit",
            min=0,
            steps=_higher_is_worse(TASK_ERROR_RATIO["warning"], TASK_ERROR_RATIO["critical"]),
        ),
        Panel(
            "Attempts by outcome",
            catalog.TASKS_FINISHED.help,
            (
                Query(
                    f"sum by (cluster, outcome) (rate({attempts}{{{_cluster()}}}[{RATE}]))",
                    "{{cluster}} {{outcome}}",
                ),
            ),
            unit="ops",
            min=0,
            stacked=True,
        ),
    ]


def _latency_panels(t: Thresholds) -> list[Panel]:
    duration, wait = catalog.TASK_DURATION, catalog.QUEUE_WAIT
    llm = catalog.GENAI_OPERATION_DURATION
    llm_by = ("cluster", "gen_ai_provider_name")
    return [
        Panel(
            "Task duration p95",
            duration.help,
            (Query(_p95(duration), "{{cluster}}/{{agent}}"),),
            unit="s",
            min=0,
        ),
        Panel(
            "Queue wait p95",
            wait.help,
            (Query(_p95(wait), "{{cluster}}/{{agent}}"),),
            unit="s",
            min=0,
        ),
        Panel(
            "LLM call duration p95",
            llm.help,
            (Query(_p95(llm, by=llm_by), _legend(llm_by)),),
            unit="s",
            min=0,
        ),
    ]


def _llm_panels(t: Thresholds) -> list[Panel]:
    tokens, cost = catalog.GENAI_TOKEN_USAGE, catalog.LLM_COST
    calls = catalog.GENAI_OPERATION_DURATION.name + "_count"
    return [
        Panel(
            "LLM tokens per second",
            tokens.help,
            (
                Query(
                    f"sum by (cluster, gen_ai_token_type) "
                    f"(rate({tokens.name}_sum{{{_cluster()}}}[{RATE}]))",
                    "{{cluster}} {{gen_ai_token_type}}",
                ),
            ),
            unit="short",
            min=0,
            stacked=True,
        ),
        Panel(
            "LLM cost per hour",
            cost.help,
            (
                Query(
                    f"sum by (cluster) (rate({cost.name}{{{_cluster()}}}[{RATE}])) * 3600",
                    "{{cluster}}",
                ),
            ),
            unit="currencyUSD",
            min=0,
        ),
        Panel(
            "LLM error ratio",
            "Share of LLM calls that failed (each attempt, fallbacks included), by provider.",
            (
                Query(
                    "sum by (cluster, gen_ai_provider_name) "
                    f'(rate({calls}{{{_cluster()}, error_type!=""}}[{RATE}]))\n/\n'
                    "sum by (cluster, gen_ai_provider_name) "
                    f"(rate({calls}{{{_cluster()}}}[{RATE}]))",
                    "{{cluster}} {{gen_ai_provider_name}}",
                ),
            ),
            unit="percentunit",
            min=0,
        ),
    ]


def _worker_panels(t: Thresholds) -> list[Panel]:
    workers, desired = catalog.WORKERS, catalog.WORKERS_DESIRED
    depth, restarts = catalog.QUEUE_DEPTH, catalog.WORKER_RESTARTS
    return [
        Panel(
            "Workers: live and desired",
            workers.help,
            (
                Query(f"{workers.name}{{{_cluster()}}}", "{{cluster}} live"),
                Query(f"{desired.name}{{{_cluster()}}}", "{{cluster}} desired"),
            ),
            min=0,
        ),
        Panel(
            "Queue depth",
            depth.help,
            (Query(f"{depth.name}{{{_cluster()}}}", "{{cluster}}"),),
            min=0,
        ),
        Panel(
            "Worker restarts",
            restarts.help,
            (
                Query(
                    f"sum by (cluster, reason) (increase({restarts.name}{{{_cluster()}}}[{RATE}]))",
                    "{{cluster}} {{reason}}",
                ),
            ),
            min=0,
        ),
    ]


def _thresholds(steps: tuple[tuple[str, float | None], ...]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": colour, "value": value} for colour, value in steps]
        or [{"color": "green", "value": None}],
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "thresholds": _thresholds(panel.steps),
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.steps else "off"},
        },
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for index, query in enumerate(panel.queries)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _templating() -> dict[str, Any]:
    clusters = f"label_values({catalog.WORKERS_DESIRED.name}, cluster)"
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            {
                "name": "cluster",
                "label": "Cluster",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": clusters, "refId": "clusters"},
                "definition": clusters,
                "current": {},
                "hide": 0,
                "includeAll": True,
                "allValue": ".*",
                "multi": True,
                "refresh": 2,
                "sort": 1,
                "options": [],
            },
        ]
    }


ROWS = (
    ("Multi-agent metrics", _seed_panels),
    ("Tasks: throughput and errors", _task_panels),
    ("Latency", _latency_panels),
    ("LLM tokens and cost", _llm_panels),
    ("Workers and queues", _worker_panels),
)


def grafana_dashboard(spec: FleetSpec | None = None) -> dict[str, Any]:
    """The dashboard JSON (Grafana 9 and later), thresholds from the spec or the seed's."""
    thresholds = Thresholds.from_spec(spec)
    name = spec.fleet.name if spec is not None else None
    panels: list[dict[str, Any]] = []
    y = 0
    for title, build in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        row = build(thresholds)
        per_line = 3
        width = GRID_WIDTH // per_line
        for index, panel in enumerate(row):
            x = (index % per_line) * width
            if index and index % per_line == 0:
                y += PANEL_HEIGHT
            panels.append(_panel_json(panel, len(panels) + 1, x, y, width))
        y += PANEL_HEIGHT
    return {
        "uid": ("fleetops-" + name.lower())[:40] if name else "fleetops",
        "title": f"fleetops: {name}" if name else "fleetops",
        "description": "Multi-agent fleet: seed metrics, tasks, latency, LLM usage, workers.",
        "tags": ["fleetops", "multi-agent"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": _templating(),
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "panels": panels,
    }
