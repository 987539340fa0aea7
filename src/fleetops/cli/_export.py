"""``fleetops export …``: monitoring configuration for Prometheus, Grafana, Kubernetes."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from ..spec import FleetSpec
from ..telemetry.exports import (
    grafana_dashboard,
    kubernetes_monitoring,
    prometheus_rules,
    to_json,
    to_yaml,
    to_yaml_documents,
)
from ..telemetry.exports._kubernetes import check_label, check_namespace
from ._common import EXIT_FAILURE, EXIT_USAGE, fail, out, user_errors
from ._spec import load_or_exit

app = typer.Typer(
    help="Write monitoring configuration: Prometheus rules, a Grafana dashboard, "
    "Kubernetes ServiceMonitor and PrometheusRule.",
    no_args_is_help=True,
)

FILE_HELP = "Where to write it ('-': standard output)."
SPEC_HELP = "A fleet spec: thresholds and names come from it (default: the seed's defaults)."


def _spec(path: Path | None) -> FleetSpec | None:
    return None if path is None else load_or_exit(path)


def _write(name: str, text: str, what: str) -> None:
    if name == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if not name:
        fail("cannot write '': name a file, or '-' for standard output", EXIT_USAGE)
    file = Path(name)
    if not file.parent.is_dir():
        fail(
            f"cannot write {file}: the directory {file.parent} does not exist; "
            "create it first or name another file",
            EXIT_USAGE,
        )
    try:
        file.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}", EXIT_FAILURE)
    out.print(f"[green]✓[/] wrote {what} to {escape(str(file))}", highlight=False)


@app.command("prometheus-rules")
def prometheus_rules_command(
    file: str = typer.Argument(..., help=FILE_HELP),
    spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
) -> None:
    """Prometheus recording rules and alert rules at the warning and critical thresholds.

    Check the file with `promtool check rules FILE` and list it under `rule_files`.
    """
    rules = prometheus_rules(_spec(spec))
    records = sum(1 for group in rules["groups"] for rule in group["rules"] if "record" in rule)
    alerts = sum(1 for group in rules["groups"] for rule in group["rules"] if "alert" in rule)
    _write(file, to_yaml(rules), f"{records} recording and {alerts} alert rules")


@app.command("grafana")
def grafana_command(
    file: str = typer.Argument(..., help=FILE_HELP),
    spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
) -> None:
    """A Grafana dashboard (JSON) of the fleet's metrics.

    Panels for the six multi-agent metrics (with the spec's thresholds), throughput,
    errors, latency, LLM tokens and cost, workers and queues. Import it in Grafana
    (Dashboards → New → Import) and pick a Prometheus data source.
    """
    dashboard = grafana_dashboard(_spec(spec))
    count = sum(1 for panel in dashboard["panels"] if panel["type"] != "row")
    _write(file, to_json(dashboard), f"a dashboard with {count} panels")


@app.command("k8s-monitoring")
def k8s_monitoring_command(
    file: str = typer.Argument(..., help=FILE_HELP),
    spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
    namespace: str | None = typer.Option(
        None, help="Put both resources in this namespace (default: kubectl's current one)."
    ),
    label: list[str] = typer.Option(
        [],
        help="KEY=VALUE added to both resources' labels, e.g. the release label your "
        "Prometheus Operator selects on; repeat for more.",
    ),
) -> None:
    """A Prometheus Operator ServiceMonitor and PrometheusRule (one YAML file, two documents).

    Apply it with `kubectl apply -f FILE`.
    """
    labels = {}
    with user_errors():
        for item in label:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                fail(
                    f"--label {item!r} is not KEY=VALUE; write it as e.g. release=prometheus",
                    EXIT_USAGE,
                )
            labels[key.strip()] = check_label(key.strip(), value.strip(), "--label")[1]
        if namespace is not None:
            check_namespace(namespace, "--namespace")
    documents = kubernetes_monitoring(_spec(spec), namespace=namespace, labels=labels)
    _write(file, to_yaml_documents(documents), "a ServiceMonitor and a PrometheusRule")
