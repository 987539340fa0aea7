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

from ..._exceptions import ConfigError
from ...spec import FleetSpec, ObservabilitySettings
from ._rules import prometheus_duration, rule_groups

API_VERSION = "monitoring.coreos.com/v1"
#: The name of the Service port that serves the API (and ``/metrics``).
PORT_NAME = "http"
METRICS_PATH = "/metrics"


#: Kubernetes' rules for names (k8s.io/apimachinery validation): a DNS-1123 label
#: (a namespace), a DNS-1123 subdomain (a label key's prefix), a qualified name (a
#: label key's name) and a label value, which may also be empty.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_NAME_CHARS = "letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"


def check_namespace(namespace: str, field: str = "namespace") -> str:
    """``namespace`` if Kubernetes takes it as one (a DNS-1123 label); else a ConfigError."""
    if len(namespace) <= 63 and _DNS_LABEL.fullmatch(namespace):
        return namespace
    raise ConfigError(
        field,
        namespace,
        "use 1 to 63 lowercase letters, digits or '-', beginning and ending with a letter "
        "or digit, e.g. monitoring; leave it out for kubectl's current namespace",
    )


def check_label(key: str, value: str, field: str = "labels") -> tuple[str, str]:
    """``(key, value)`` if Kubernetes takes them as a label; else a ConfigError naming
    which part is wrong."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ConfigError(
            field,
            f"{key}={value}",
            f"the key's prefix {prefix!r} is not a DNS subdomain: use lowercase letters, "
            "digits, '-' and '.', e.g. example.com/team",
        )
    if not (len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name)):
        raise ConfigError(
            field,
            f"{key}={value}",
            f"the key's name {name!r} is not a label name: use 1 to 63 {_NAME_CHARS}",
        )
    if value and not (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
        raise ConfigError(
            field,
            f"{key}={value}",
            f"the value ({len(value)} characters) is not a label value: use at most 63 "
            f"{_NAME_CHARS}, or nothing",
        )
    return key, value


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
    if namespace is not None:
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
    Prometheus Operator's ``serviceMonitorSelector`` and ``ruleSelector`` match. A
    namespace or a label Kubernetes would refuse is a ConfigError.
    """
    if namespace is not None:
        check_namespace(namespace)
    extra = dict(check_label(key, value) for key, value in (labels or {}).items())
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
