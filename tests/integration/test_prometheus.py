"""A real Prometheus scrapes a real fleet; promtool checks the exported rules and /metrics.

The support-desk example runs with ``fleetops up`` on a free port; a Prometheus of its
own (scraping every second, loading the exported rules) must then answer every seed
metric with the catalogue's labels. These tests fail, not skip, when ``prometheus`` or
``promtool`` is missing: CI must run them.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fleetops.spec import load_spec
from fleetops.store import TERMINAL_STATES
from fleetops.telemetry import catalog
from fleetops.telemetry.exports import grafana_dashboard, prometheus_rules, to_yaml

FLEETOPS = [sys.executable, "-m", "fleetops.cli"]
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "support-desk"
REQUESTS = 18
REQUEST_RATE = 3.0  # per second: keeps the agents busy across several telemetry snapshots


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH. Install Prometheus and promtool, e.g. on Debian or "
            "Ubuntu: apt-get install -y --no-install-recommends prometheus"
        )
    return path


def fleetops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [*FLEETOPS, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def wait_for(what: str, check: Callable[[], Any], within: float = 30.0) -> Any:
    """Poll ``check`` until it answers something truthy; fail saying ``what`` after ``within``."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {within:.0f} s waiting for {what} (last answer: {last!r})")


# --- the exported rules under promtool ------------------------------------------------------


def test_exported_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    spec = str(EXAMPLE_DIR / "fleet.yaml")
    for name, args in {
        "defaults.yml": (),
        "support-desk.yml": ("--spec", spec),
    }.items():
        proc = fleetops("export", "prometheus-rules", name, *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        checked = promtool("check", "rules", str(tmp_path / name))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout
    # the PrometheusRule carries the same groups, which promtool accepts as a rules file
    proc = fleetops("export", "k8s-monitoring", "k8s.yaml", "--spec", spec, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, rule = yaml.safe_load_all((tmp_path / "k8s.yaml").read_text())
    (tmp_path / "from-k8s.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = promtool("check", "rules", str(tmp_path / "from-k8s.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _buckets(
    metric: catalog.MetricDef, labels: dict[str, str], lower: float, upper: float
) -> list[dict[str, str]]:
    """Bucket series whose observations all fall in (lower, upper], ten a minute."""
    series = []
    for bound in (lower, upper, math.inf):
        le = "+Inf" if math.isinf(bound) else repr(float(bound))
        values = "0+0x20" if bound == lower else "0+10x20"
        series.append(_series(f"{metric.name}_bucket", {**labels, "le": le}, values))
    return series


def test_alerts_fire_at_the_spec_thresholds(tmp_path: Path) -> None:
    """promtool's rule tests: each value is past the warning threshold, some past critical."""
    proc = fleetops(
        "export",
        "prometheus-rules",
        "rules.yml",
        "--spec",
        str(EXAMPLE_DIR / "fleet.yaml"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    intake = {"cluster": "intake", "coordination_type": "research"}
    route = {"source_cluster": "intake", "target_cluster": "research"}
    research = {"cluster": "research", "agent": "investigate"}
    series = [
        # p95 interpolates to 9.75 s: above warning (5 s), below critical (10 s)
        *_buckets(catalog.AGENT_COORDINATION_EFFICIENCY, intake, 5.0, 10.0),
        # p95 2425 ms: above warning (1000 ms), below critical (5000 ms)
        *_buckets(catalog.MESSAGE_DELIVERY_LATENCY, route, 1000, 2500),
        # p95 7.9 steps: above the example's warning (6); it sets no critical
        *_buckets(catalog.REASONING_CHAIN_LENGTH, research, 6, 8),
        _series("consensus_success_rate", {"cluster": "review"}, "0.8x20"),  # warning only
        _series("consensus_success_rate", {"cluster": "other"}, "1x20"),  # healthy
        _series("agent_utilization", {"cluster": "review", "worker": "w1"}, "0.96x20"),
        _series("agent_utilization", {"cluster": "review", "worker": "w2"}, "0.98x20"),
        _series("planning_success_rate", research, "0.1x20"),  # the example sets no threshold
    ]

    def firing(alert: str, severity: str, **labels: str) -> dict[str, Any]:
        inner = ",".join(
            f'{k}="{v}"'
            for k, v in {
                "alertname": alert,
                "alertstate": "firing",
                "severity": severity,
                **labels,
            }.items()
        )
        return {"labels": f"ALERTS{{{inner}}}", "value": 1}

    expected = [
        firing("AgentCoordinationSlow", "warning", **intake),
        firing("MessageDeliveryLatencyHigh", "warning", **route),
        firing("ReasoningChainTooLong", "warning", **research),
        firing("ConsensusSuccessRateLow", "warning", cluster="review"),
        firing("AgentUtilizationHigh", "warning", cluster="review"),
        firing("AgentUtilizationHigh", "critical", cluster="review"),
    ]
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": "15m",
                        "exp_samples": expected,
                    },
                    # nothing fires before the alerts' "for" has passed
                    {"expr": 'ALERTS{alertstate="firing"}', "eval_time": "3m", "exp_samples": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    checked = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_export_with_an_invalid_spec_reports_its_problems_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent("""\
        fleet: {name: bad}
        clusters:
          a:
            agents: [{name: x, entrypoint: "m:x"}]
        alerting:
          thresholds:
            warning: {utilization: 1.5}
        """)
    )
    for command in ("prometheus-rules", "k8s-monitoring"):
        proc = fleetops("export", command, "out.txt", "--spec", "bad.yaml", cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "bad.yaml:7:" in proc.stderr and "utilization" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out.txt").exists()
    proc = fleetops("export", "grafana", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schemaVersion"] >= 36


# --- a real fleet scraped by a real Prometheus ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The support-desk example, deployed with ``fleetops up`` on a free port."""
    base = tmp_path / "support-desk"
    shutil.copytree(EXAMPLE_DIR, base, ignore=shutil.ignore_patterns(".fleetops", "__pycache__"))
    env = dict(os.environ, COLUMNS="200")
    with open(tmp_path / "fleet.log", "w") as log:
        proc = subprocess.Popen(
            [*FLEETOPS, "up", "fleet.yaml", "--json", "--no-live", "--api-port", "0"],
            cwd=base,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    try:
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline() or "{}")
        assert report.get("deployment_successful"), (
            report,
            (tmp_path / "fleet.log").read_text(),
        )
        yield base, report["api_url"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, (tmp_path / "fleet.log").read_text()


@pytest.fixture
def prometheus(tmp_path: Path, fleet: tuple[Path, str]) -> Iterator[httpx.Client]:
    """A Prometheus scraping the fleet every second, with the exported rules loaded."""
    binary = tool("prometheus")
    base, api = fleet
    rules = prometheus_rules(load_spec(base / "fleet.yaml"))
    (base / "rules.yml").write_text(to_yaml(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(base / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "fleetops",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [api.removeprefix("http://")]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as log:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def ready() -> bool:
                if server.poll() is not None:
                    pytest.fail("prometheus exited: " + (tmp_path / "prometheus.log").read_text())
                try:
                    return client.get("/-/ready").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for("Prometheus to be ready", ready)
            yield client
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def submit_workload(api: str) -> list[int]:
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    workload = importlib.import_module("support_desk.workload")
    ids = []
    with httpx.Client(base_url=api, timeout=10) as http:
        for request in workload.generate_requests(REQUESTS, seed=23):
            answer = http.post(
                "/api/v1/tasks",
                json={
                    "agent": "intake/classify",
                    "payload": request,
                    "idempotency_key": request["request_id"],
                },
            )
            assert answer.status_code == 201, answer.text
            ids.append(int(answer.json()["id"]))
            time.sleep(1 / REQUEST_RATE)

        def all_finished() -> bool:
            states = [http.get(f"/api/v1/tasks/{i}").json()["state"] for i in ids]
            return all(state in TERMINAL_STATES for state in states)

        wait_for("the requests to finish", all_finished, within=45)
    return ids


#: Seed metrics that the support-desk workload makes non-zero (utilisation: at some point).
NON_ZERO = {
    "agent_coordination_efficiency_bucket",
    "consensus_success_rate",
    "message_delivery_latency_bucket",
    "reasoning_chain_length_bucket",
    "planning_success_rate",
}


@pytest.mark.timeout(150)
def test_prometheus_scrapes_every_seed_metric_with_its_labels(
    fleet: tuple[Path, str], prometheus: httpx.Client
) -> None:
    _, api = fleet
    submit_workload(api)

    # what the fleet serves is valid exposition text by promtool's rules
    with httpx.Client(base_url=api, timeout=10) as http:
        text = http.get("/metrics").text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr

    wait_for(
        "Prometheus to scrape the fleet",
        lambda: [r for r in query(prometheus, 'up{job="fleetops"}') if r["value"][1] == "1"],
    )
    for metric in catalog.SEED_METRICS:
        name = f"{metric.name}_bucket" if metric.kind == "histogram" else metric.name
        expected = {"__name__", "job", "instance", *metric.labels}
        if metric.kind == "histogram":
            expected.add("le")

        def scraped(name: str = name) -> list[dict[str, Any]]:
            result = query(prometheus, name)
            if name in NON_ZERO and not any(float(r["value"][1]) > 0 for r in result):
                return []
            return result

        result = wait_for(f"{name} in Prometheus", scraped)
        for series in result:
            assert set(series["metric"]) == expected, (name, series["metric"])
            assert all(series["metric"][label] for label in metric.labels), series
    for series in query(prometheus, "agent_utilization"):
        assert 0 <= float(series["value"][1]) <= 1, series
    busy = query(prometheus, "max_over_time(agent_utilization[5m]) > 0")
    assert busy, "no worker was ever seen busy while the workload ran"

    # the exported rules evaluate without errors on the real data, and record series
    def rules_evaluated() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(r["health"] != "unknown" for r in rules) else []

    rules = wait_for("the rules to be evaluated", rules_evaluated)
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
    for recorded in (
        "cluster_coordination_type:agent_coordination_efficiency:p95_5m",
        "source_cluster_target_cluster:message_delivery_latency:p95_5m",
        "cluster_agent:reasoning_chain_length:p95_5m",
        "cluster:agent_utilization:avg",
        "cluster_agent:fleetops_task_throughput:rate5m",
    ):
        wait_for(f"{recorded} to be recorded", partial(query, prometheus, recorded))

    # every query of the Grafana dashboard is valid PromQL; the seed metrics' panels show data
    row = ""
    for panel in grafana_dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$cluster", ".*")
            result = query(prometheus, expr)
            if row == "Multi-agent metrics":
                assert result, (panel["title"], expr)
