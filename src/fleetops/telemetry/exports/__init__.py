"""Monitoring configuration built from the metric catalogue and a fleet spec.

Prometheus recording and alert rules (thresholds from the spec's ``alerting``
section), a Grafana dashboard, and the Prometheus Operator's ServiceMonitor and
PrometheusRule; ``fleetops export`` writes them. Without a spec, the seed's
defaults apply.
"""

from ._grafana import grafana_dashboard as grafana_dashboard
from ._kubernetes import kubernetes_monitoring as kubernetes_monitoring
from ._rules import Thresholds as Thresholds
from ._rules import alert_rules as alert_rules
from ._rules import prometheus_rules as prometheus_rules
from ._rules import recording_rules as recording_rules
from ._rules import rule_groups as rule_groups
from ._yaml import to_json as to_json
from ._yaml import to_yaml as to_yaml
from ._yaml import to_yaml_documents as to_yaml_documents
