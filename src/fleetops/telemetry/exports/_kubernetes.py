"""Prometheus Operator resources for a fleet: a ServiceMonitor and a PrometheusRule.

The ServiceMonitor selects the Service in front of the fleet's control plane by the
labels ``app.kubernetes.io/name: fleetops`` and ``app.kubernetes.io/instance: FLEET``
and scrapes ``/metrics`` on its port named ``http``, as often as the spec's
high-resolution history step (``observability.resolution.high``). The PrometheusRule
carries the same rule groups as ``fleetops export prometheus-rules``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...spec import FleetSpec, ObservabilitySettings
from ._rules import prometheus_duration, rule_groups

API_VERSION = "monitoring.coreos.com/v1"
#: The name of the Service port that serves the API (and ``/metrics``).
PORT_NAME = "http"
METRICS_PATH = "/metrics"


def resource_name(spec: FleetSpec | None) -> str:
    """A DNS-1123 name for the fleet's resources: ``fleetops`` or ``fleetops-NAME``."""
    if spec is None:
        return "fleetops"
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.fleet.name.lower()).strip("-")
    return f"fleetops-{slug}"[:63].rstrip("-")


def selector_labels(spec: FleetSpec | None) -> dict[str, str]:
    """The labels the fleet's Service carries and the ServiceMonitor selects."""
    labels = {"app.kubernetes.io/name": "fleetops"}
    if spec is not None:
        labels["app.kubernetes.io/instance"] = resource_name(spec).removeprefix("fleetops-")
    return labels


def _metadata(
    spec: FleetSpec | None, namespace: str | None, labels: Mapping[str, str]
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": resource_name(spec)}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {**selector_labels(spec), **labels}
    return metadata


def kubernetes_monitoring(
    spec: FleetSpec | None = None,
    *,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A ServiceMonitor and a PrometheusRule (``monitoring.coreos.com/v1``).

    ``labels`` are added to both resources' metadata, e.g. the ``release`` label a
    Prometheus Operator's ``serviceMonitorSelector`` and ``ruleSelector`` match.
    """
    extra = dict(labels or {})
    observability = spec.observability if spec is not None else ObservabilitySettings()
    service_monitor = {
        "apiVersion": API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": _metadata(spec, namespace, extra),
        "spec": {
            "selector": {"matchLabels": selector_labels(spec)},
            "endpoints": [
                {
                    "port": PORT_NAME,
                    "path": METRICS_PATH,
                    "interval": prometheus_duration(observability.resolution.high),
                }
            ],
        },
    }
    prometheus_rule = {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _metadata(spec, namespace, extra),
        "spec": {"groups": rule_groups(spec)},
    }
    return [service_monitor, prometheus_rule]
