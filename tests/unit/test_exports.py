"""The monitoring exports: rules, the Grafana dashboard and the Kubernetes resources.

Rules may only reference metrics the catalogue defines (or rules recorded beside
them), thresholds come from the spec, and every document parses as what it claims.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest
import yaml

from fleetops import ConfigError
from fleetops.spec import FleetSpec, check_spec_text, format_issues
from fleetops.telemetry import catalog
from fleetops.telemetry.exports import (
    Thresholds,
    alert_rules,
    grafana_dashboard,
    kubernetes_monitoring,
    prometheus_rules,
    recording_rules,
    rule_groups,
    to_json,
    to_yaml,
    to_yaml_documents,
)

SPEC = textwrap.dedent("""\
    fleet: {name: Support_Desk}
    clusters:
      intake:
        agents: [{name: classify, entrypoint: "mod:classify"}]
    observability:
      resolution: {high: 30s}
    alerting:
      thresholds:
        warning:
          coordination_p95_seconds: 3
          consensus_success_rate: 0.9
          reasoning_chain_length_p95: 6
          planning_success_rate: 0.8
        critical:
          message_latency_p95_ms: 2500
          utilization: 0.99
          reasoning_chain_length_p95: 12
      escalation: {critical_after: 5m, warning_after: 2h}
    """)

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


def spec() -> FleetSpec:
    result = check_spec_text(SPEC, path="fleet.yaml")
    assert isinstance(result, FleetSpec), format_issues(result)
    return result


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        following = expr[match.end() :].lstrip()
        if following.startswith("("):  # a function
            continue
        if match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def exported_series() -> set[str]:
    """Every series name fleetops exposes on /metrics."""
    names = set()
    for metric in catalog.ALL_METRICS:
        if metric.kind == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        else:
            names.add(metric.name)
    return names


def all_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def alerts_by(rules: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["alert"], r["labels"]["severity"]): r for r in rules if "alert" in r}


def threshold(rule: dict[str, Any]) -> float:
    return float(rule["expr"].rsplit(" ", 1)[1])


def test_metric_names_finds_selectors_only() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, cluster) (rate(x_bucket{a="b(c)"}[5m]))) / y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_rules_reference_only_catalogue_metrics_and_recorded_rules() -> None:
    groups = rule_groups(spec())
    rules = all_rules(groups)
    recorded = {r["record"] for r in rules if "record" in r}
    known = exported_series() | recorded
    for rule in rules:
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)
    # recorded names follow Prometheus's level:metric:operations convention
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


def test_p95_recording_rules_aggregate_by_the_catalogue_labels() -> None:
    by_record = {r["record"]: r["expr"] for r in recording_rules()}
    for metric in (
        catalog.AGENT_COORDINATION_EFFICIENCY,
        catalog.MESSAGE_DELIVERY_LATENCY,
        catalog.REASONING_CHAIN_LENGTH,
    ):
        name = f"{'_'.join(metric.labels)}:{metric.name}:p95_5m"
        labels = ", ".join(("le", *metric.labels))
        assert by_record[name] == (
            f"histogram_quantile(0.95, sum by ({labels}) (rate({metric.name}_bucket[5m])))"
        )


def test_without_a_spec_the_alerts_use_the_seed_thresholds() -> None:
    alerts = alerts_by(alert_rules())
    assert threshold(alerts["AgentCoordinationSlow", "warning"]) == 5
    assert threshold(alerts["AgentCoordinationSlow", "critical"]) == 10
    assert threshold(alerts["ConsensusSuccessRateLow", "warning"]) == 0.85
    assert threshold(alerts["ConsensusSuccessRateLow", "critical"]) == 0.70
    assert threshold(alerts["MessageDeliveryLatencyHigh", "warning"]) == 1000
    assert threshold(alerts["MessageDeliveryLatencyHigh", "critical"]) == 5000
    assert threshold(alerts["AgentUtilizationHigh", "warning"]) == 0.80
    assert threshold(alerts["AgentUtilizationHigh", "critical"]) == 0.95
    assert alerts["ConsensusSuccessRateLow", "warning"]["expr"].startswith(
        "consensus_success_rate < "
    )
    assert alerts["AgentCoordinationSlow", "warning"]["expr"].startswith(
        "cluster_coordination_type:agent_coordination_efficiency:p95_5m > "
    )
    # no threshold in the seed: no alert
    names = {name for name, _ in alerts}
    assert "ReasoningChainTooLong" not in names
    assert "PlanningSuccessRateLow" not in names
    assert alerts["AgentCoordinationSlow", "critical"]["annotations"]["escalate_after"] == "15m"
    assert alerts["AgentCoordinationSlow", "warning"]["annotations"]["escalate_after"] == "1h"


def test_thresholds_and_escalation_come_from_the_spec() -> None:
    alerts = alerts_by(all_rules(rule_groups(spec())))
    assert threshold(alerts["AgentCoordinationSlow", "warning"]) == 3
    assert threshold(alerts["AgentCoordinationSlow", "critical"]) == 10  # kept its default
    assert threshold(alerts["ConsensusSuccessRateLow", "warning"]) == 0.9
    assert threshold(alerts["MessageDeliveryLatencyHigh", "critical"]) == 2500
    assert threshold(alerts["AgentUtilizationHigh", "critical"]) == 0.99
    assert threshold(alerts["ReasoningChainTooLong", "warning"]) == 6
    assert threshold(alerts["ReasoningChainTooLong", "critical"]) == 12
    assert threshold(alerts["PlanningSuccessRateLow", "warning"]) == 0.8
    assert ("PlanningSuccessRateLow", "critical") not in alerts
    assert alerts["AgentCoordinationSlow", "critical"]["annotations"]["escalate_after"] == "5m"
    assert alerts["AgentCoordinationSlow", "warning"]["annotations"]["escalate_after"] == "2h"
    description = alerts["AgentCoordinationSlow", "warning"]["annotations"]["description"]
    assert "3s" in description and "alerting.thresholds.warning.coordination_p95_seconds" in (
        description
    )
    assert [g["name"] for g in rule_groups(spec())] == [
        "fleetops-Support_Desk.recording",
        "fleetops-Support_Desk.alerts",
    ]


def test_every_alert_has_a_severity_a_duration_and_annotations() -> None:
    rules = alert_rules(Thresholds.from_spec(spec()))
    assert rules
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"\d+(ms|s|m|h|d)", rule["for"])
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations)
        assert all(annotations[key].strip() for key in ("summary", "description", "runbook"))


def test_rules_file_is_yaml_with_groups() -> None:
    text = to_yaml(prometheus_rules(spec()))
    parsed = yaml.safe_load(text)
    assert parsed == prometheus_rules(spec())
    assert [len(group["rules"]) > 0 for group in parsed["groups"]] == [True, True]


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_grafana_dashboard_has_a_panel_for_each_seed_metric() -> None:
    dashboard = json.loads(to_json(grafana_dashboard(spec())))
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = panel_exprs(dashboard)
    for metric in catalog.SEED_METRICS:
        selected = {
            title
            for title, expr in exprs
            if metric.name in {n.removesuffix("_bucket") for n in metric_names(expr)}
        }
        assert selected, f"no panel shows {metric.name}"
    known = exported_series()
    for title, expr in exprs:
        assert metric_names(expr) <= known, (title, expr)
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in (
        "Throughput (succeeded tasks)",
        "Error ratio",
        "Task duration p95",
        "LLM tokens per second",
        "LLM cost per hour",
        "Workers: live and desired",
        "Queue depth",
    ):
        assert wanted in titles


def test_grafana_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    dashboard = grafana_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert "$__rate_interval" in target["expr"] or "rate(" not in target["expr"]


def test_grafana_thresholds_follow_the_spec() -> None:
    panels = {p["title"]: p for p in grafana_dashboard(spec())["panels"]}

    def steps(title: str) -> list[tuple[str, float | None]]:
        found = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [(s["color"], s["value"]) for s in found]

    assert steps("Coordination time p95") == [("green", None), ("orange", 3), ("red", 10)]
    assert steps("Agent utilization") == [("green", None), ("orange", 0.8), ("red", 0.99)]
    assert steps("Consensus success rate") == [("red", None), ("orange", 0.7), ("green", 0.9)]
    assert steps("Planning success rate") == [("orange", None), ("green", 0.8)]


def test_kubernetes_documents_parse_with_the_right_kinds() -> None:
    text = to_yaml_documents(
        kubernetes_monitoring(spec(), namespace="agents", labels={"release": "prom"})
    )
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["ServiceMonitor", "PrometheusRule"]
    for document in documents:
        assert document["apiVersion"] == "monitoring.coreos.com/v1"
        metadata = document["metadata"]
        assert metadata["name"] == "fleetops-support-desk"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", metadata["name"])
        assert metadata["namespace"] == "agents"
        assert metadata["labels"]["release"] == "prom"
    monitor, rule = documents
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "fleetops",
        "app.kubernetes.io/instance": "support-desk",
    }
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "30s"}
    assert rule["spec"]["groups"] == rule_groups(spec())


def test_kubernetes_documents_without_a_spec() -> None:
    monitor, rule = kubernetes_monitoring()
    assert "namespace" not in monitor["metadata"]
    assert monitor["metadata"]["name"] == "fleetops"
    assert monitor["spec"]["endpoints"][0]["interval"] == "10s"
    assert rule["spec"]["groups"] == rule_groups()


@pytest.mark.parametrize(
    ("namespace", "labels", "field", "value", "fix"),
    [
        (None, {"a b": "c"}, "labels", "a b=c", "the key's name 'a b' is not a label name"),
        (None, {"k": "v" * 64}, "labels", "k=" + "v" * 64, "the value (64 characters)"),
        (None, {"k": "-v"}, "labels", "k=-v", "is not a label value"),
        (None, {"k" * 64: "v"}, "labels", "k" * 64 + "=v", "is not a label name"),
        (None, {"Example.com/k": "v"}, "labels", "Example.com/k=v", "not a DNS subdomain"),
        ("Bad_NS!", {}, "namespace", "Bad_NS!", "lowercase letters, digits or '-'"),
        ("", {}, "namespace", "", "leave it out for kubectl's current namespace"),
        ("n" * 64, {}, "namespace", "n" * 64, "use 1 to 63"),
    ],
)
def test_kubernetes_refuses_what_kubernetes_would(
    namespace: str | None, labels: dict[str, str], field: str, value: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        kubernetes_monitoring(spec(), namespace=namespace, labels=labels)
    assert (raised.value.field, raised.value.value) == (field, value)
    assert fix in raised.value.fix


def test_kubernetes_takes_what_kubernetes_takes() -> None:
    labels = {"example.com/team": "a.b_c-d", "release": "", "k" * 63: "v" * 63}
    monitor, _ = kubernetes_monitoring(spec(), namespace="n" * 63, labels=labels)
    assert monitor["metadata"]["labels"].items() >= labels.items()
