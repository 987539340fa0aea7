"""The fleet spec: loading, every-error-at-once reporting with lines, defaults, schema, plans."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path

import pytest

from fleetops import UsageError
from fleetops.providers import MissingAPIKey
from fleetops.providers import SimulatedProvider as SimulatedLLM
from fleetops.runtime import ClusterPlan
from fleetops.spec import (
    FleetSpec,
    SimulatedProviderSpec,
    SpecError,
    SpecIssue,
    check_spec,
    check_spec_text,
    format_issues,
    json_schema,
    load_spec,
    load_spec_text,
)

MINIMAL = """\
fleet: {name: demo}
clusters:
  triage:
    agents:
      - {name: classify, entrypoint: "agents.triage:classify"}
"""

FULL = """\
fleet:
  name: support-desk
store: {url: "sqlite:///state/fleet.db", durability: normal}
api: {host: "::1", port: 9000}
providers:
  fast:
    latency: {median: 50ms, p95: 200ms}
    error_rate: 0.01
    rate_limit_rate: 0.02
    seed: 7
  gpt:
    kind: openai
    base_url: https://api.openai.com/v1
    model: gpt-4o-mini
    api_key_env: MY_OPENAI_KEY
clusters:
  triage:
    agents:
      - name: classify
        entrypoint: agents.triage:classify
        timeout: 30s
        retry: {max_attempts: 5, backoff_base: 1, backoff_max: 1m, max_redeliveries: 3}
      - {name: route, entrypoint: "agents.triage:route"}
    replicas: 2
    concurrency: 50
    provider: fast
    routes: [resolve]
    resource_quotas:
      max_agents: 6
      max_concurrent_tasks: 200
      tokens_per_minute: 100000
      cost_per_hour: 2.5
    health_checks:
      heartbeat_interval: 500ms
      lease_timeout: 5s
      failure_detector: {threshold: 10, min_std: 0.2, acceptable_pause: 1s}
      restart: {intensity: 3, period: 30s}
    scaling: {min_replicas: 1, max_replicas: 6}
  resolve:
    agents:
      - {name: answer, entrypoint: "agents.resolve:answer"}
    provider: gpt
alerting:
  escalation:
    business_hours: {timezone: Europe/Berlin, start: 08:30, end: 18:00}
"""


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, needle: str) -> int:
    """The 1-based number of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the spec")


def issues_of(text: str) -> list[SpecIssue]:
    result = check_spec_text(textwrap.dedent(text))
    assert isinstance(result, list), "the spec was expected to be invalid"
    return result


def only_issue(result: FleetSpec | list[SpecIssue]) -> SpecIssue:
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


def by_path(issues: list[SpecIssue]) -> dict[str, SpecIssue]:
    return {issue.path: issue for issue in issues}


# --- valid specs --------------------------------------------------------------------------------


def test_a_full_spec_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))

    assert spec.fleet.name == "support-desk"
    assert spec.api.host == "::1" and spec.api.port == 9000
    triage = spec.clusters["triage"]
    assert [a.name for a in triage.agents] == ["classify", "route"]
    assert triage.agents[0].timeout == 30.0
    retry = triage.agents[0].retry
    assert retry is not None and retry.policy().backoff_max == 60.0
    assert triage.agents[1].retry is None
    assert triage.resource_quotas.cost_per_hour == 2.5
    assert triage.health_checks.failure_detector.acceptable_pause == 1.0
    assert triage.scaling is not None and triage.scaling.max_replicas == 6
    assert spec.provider_for("triage").kind == "simulated"
    assert spec.provider_for("resolve").kind == "openai"
    hours = spec.alerting.escalation.business_hours
    assert (hours.start.hour, hours.start.minute, hours.end.hour) == (8, 30, 18)
    assert spec.tokens_per_minute() == {"triage": 100000}
    assert spec.source == tmp_path / "fleet.yaml"


def test_defaults_are_the_seed_values() -> None:
    spec = load_spec_text(MINIMAL)

    warning, critical = spec.alerting.thresholds.warning, spec.alerting.thresholds.critical
    assert (
        warning.coordination_p95_seconds,
        warning.consensus_success_rate,
        warning.message_latency_p95_ms,
        warning.utilization,
    ) == (5.0, 0.85, 1000.0, 0.80)
    assert (
        critical.coordination_p95_seconds,
        critical.consensus_success_rate,
        critical.message_latency_p95_ms,
        critical.utilization,
    ) == (10.0, 0.70, 5000.0, 0.95)
    retention = spec.observability.retention
    assert (retention.high, retention.medium, retention.low) == (24 * 3600, 7 * 86400, 90 * 86400)
    assert spec.alerting.escalation.critical_after == 15 * 60
    assert spec.alerting.escalation.warning_after == 60 * 60
    agent_failure = spec.recovery.agent_failure
    assert agent_failure.detect_within == 30
    assert set(agent_failure.actions) == {
        "restart_failed_agent",
        "redistribute_agent_workload",
        "spawn_replacement_agent",
        "notify_operations_team",
    }
    for strategy in ("cluster_failure", "network_partition", "consensus_failure"):
        assert getattr(spec.recovery, strategy).actions
    assert spec.store.url == "sqlite:///.fleetops/fleet.db"
    assert (spec.api.host, spec.api.port) == ("127.0.0.1", 8470)
    cluster = spec.clusters["triage"]
    assert (cluster.replicas, cluster.concurrency, cluster.provider) == (1, 100, "simulated")
    assert cluster.routes == () and cluster.scaling is None


def test_durations_take_units_and_yaml_1_2_scalars_stay_text() -> None:
    spec = load_spec_text(
        MINIMAL
        + """\
alerting:
  escalation:
    critical_after: 1h30m
    business_hours: {start: 07:45, end: 17:00, days: [mon, sat]}
observability:
  retention: {high: 36h}
  resolution: {high: 1500ms}
"""
    )
    assert spec.alerting.escalation.critical_after == 5400.0
    assert spec.alerting.escalation.business_hours.end.hour == 17  # not the number 1020
    assert spec.observability.retention.high == 36 * 3600
    assert spec.observability.resolution.high == 1.5
    no_is_a_name = MINIMAL.replace("triage:", "no:")
    assert list(load_spec_text(no_is_a_name).clusters) == ["no"]  # not the boolean false


def test_one_value_of_a_section_can_be_set_alone() -> None:
    spec = load_spec_text(
        MINIMAL
        + """\
alerting: {thresholds: {critical: {utilization: 0.99}}}
recovery: {agent_failure: {detect_within: 10s}}
observability: {retention: {low: 365d}}
"""
    )
    thresholds = spec.alerting.thresholds
    assert (thresholds.critical.utilization, thresholds.critical.consensus_success_rate) == (
        0.99,
        0.70,
    )
    assert thresholds.warning.utilization == 0.80
    agent_failure = spec.recovery.agent_failure
    assert agent_failure.detect_within == 10 and agent_failure.actions[0] == (
        "redistribute_agent_workload"
    )
    assert spec.observability.retention.low == 365 * 86400
    assert spec.observability.retention.medium == 7 * 86400


def test_a_validated_spec_dumps_and_validates_again() -> None:
    spec = load_spec_text(FULL)
    dumped = spec.model_dump(mode="json")
    assert FleetSpec.model_validate(json.loads(json.dumps(dumped))).model_dump() == (
        spec.model_dump()
    )


# --- every mistake at once, with its line -------------------------------------------------------


def test_three_different_mistakes_are_all_reported_with_their_lines() -> None:
    text = """\
    fleet: {name: demo}
    clusters:
      triage:
        agents:
          - {name: classify, entrypoint: "agents.triage:classify"}
        replica: 2
        routes: [resolve, billing]
      resolve:
        agents:
          - {name: answer, entrypoint: "agents.resolve:answer"}
        concurrency: lots
    """
    issues = issues_of(text)

    assert [(i.path, i.line) for i in issues] == [
        ("clusters.triage.replica", line_of(text, "replica: 2")),
        ("clusters.triage.routes[1]", line_of(text, "routes:")),
        ("clusters.resolve.concurrency", line_of(text, "concurrency: lots")),
    ]
    replica, route, concurrency = issues
    assert replica.message == "unknown key" and "did you mean 'replicas'?" in replica.fix
    assert route.value == '"billing"' and route.column == text.splitlines()[6].index("billing") - 3
    assert "resolve" in route.fix and "triage" in route.fix
    assert concurrency.value == '"lots"' and "whole number" in concurrency.message


def test_unknown_keys_are_rejected_with_their_path() -> None:
    text = """\
    fleet: {name: demo, owner: me}
    aplerting: {}
    providers:
      sim: {seed: 1, temperature: 0.2}
    clusters:
      triage:
        agents:
          - {name: classify, entrypoint: "a:b", retries: 3}
        health_checks:
          failure_detector: {treshold: 9}
    """
    issues = by_path(issues_of(text))

    assert set(issues) == {
        "fleet.owner",
        "aplerting",
        "providers.sim.temperature",
        "clusters.triage.agents[0].retries",
        "clusters.triage.health_checks.failure_detector.treshold",
    }
    assert all(issue.message == "unknown key" for issue in issues.values())
    assert issues["aplerting"].line == 2 and issues["aplerting"].column == 1
    assert "did you mean 'alerting'?" in issues["aplerting"].fix
    assert (
        "did you mean 'threshold'?"
        in issues["clusters.triage.health_checks.failure_detector.treshold"].fix
    )
    assert "allowed keys here: name, entrypoint, timeout, retry" in (
        issues["clusters.triage.agents[0].retries"].fix
    )


CROSS_FIELD_CASES = [
    pytest.param(
        "routes: [reslove]",
        "clusters.triage.routes[0]",
        "no cluster has this name",
        "did you mean 'resolve'?",
        id="route-to-unknown-cluster",
    ),
    pytest.param(
        "provider: gpt",
        "clusters.triage.provider",
        "no provider has this name",
        "define it under 'providers'",
        id="provider-not-defined",
    ),
    pytest.param(
        "replicas: 5\n        resource_quotas: {max_agents: 4}",
        "clusters.triage.replicas",
        "more replicas than resource_quotas.max_agents (4)",
        "use at most 4 replicas",
        id="replicas-above-max-agents",
    ),
    pytest.param(
        "scaling: {min_replicas: 1, max_replicas: 9}\n        resource_quotas: {max_agents: 4}",
        "clusters.triage.scaling.max_replicas",
        "max_replicas is above resource_quotas.max_agents (4)",
        "use at most 4",
        id="scaling-above-max-agents",
    ),
    pytest.param(
        "scaling: {min_replicas: 3, max_replicas: 2}",
        "clusters.triage.scaling.min_replicas",
        "min_replicas is above max_replicas (2)",
        "no larger than max_replicas",
        id="scaling-min-above-max",
    ),
    pytest.param(
        "replicas: 3\n        scaling: {min_replicas: 1, max_replicas: 2}",
        "clusters.triage.replicas",
        "replicas is outside scaling bounds 1..2",
        "from 1 to 2",
        id="replicas-outside-scaling",
    ),
    pytest.param(
        "health_checks: {heartbeat_interval: 1s, lease_timeout: 1500ms}",
        "clusters.triage.health_checks.lease_timeout",
        "the lease would expire before two heartbeats could extend it",
        "twice heartbeat_interval (1s)",
        id="lease-shorter-than-two-heartbeats",
    ),
]


@pytest.mark.parametrize(("extra", "path", "message", "fix"), CROSS_FIELD_CASES)
def test_cross_field_errors_name_the_field_and_line(
    extra: str, path: str, message: str, fix: str
) -> None:
    text = f"""\
    fleet: {{name: demo}}
    clusters:
      triage:
        agents:
          - {{name: classify, entrypoint: "agents.triage:classify"}}
        {extra}
      resolve:
        agents:
          - {{name: answer, entrypoint: "agents.resolve:answer"}}
    """
    [issue] = issues_of(text)
    assert (issue.path, issue.message) == (path, message)
    assert fix in issue.fix
    assert issue.line == line_of(text, path.split(".")[-1].split("[")[0] + ":")


def test_agent_and_cluster_names_and_entrypoints_are_checked() -> None:
    text = """\
    fleet: {name: demo}
    clusters:
      triage:
        agents:
          - {name: classify, entrypoint: "agents.triage:classify"}
          - {name: classify, entrypoint: "agents.triage.classify"}
          - {name: a/b, entrypoint: "agents:"}
      billing/eu:
        agents:
          - {name: invoice, entrypoint: "agents.billing:invoice"}
    """
    issues = by_path(issues_of(text))

    entrypoint = issues["clusters.triage.agents[1].entrypoint"]
    assert entrypoint.line == line_of(text, "agents.triage.classify")
    assert entrypoint.fix == "add the function after a colon, e.g. 'agents.triage.classify:handle'"
    assert "name the function after the colon" in issues["clusters.triage.agents[2].entrypoint"].fix
    assert issues["clusters.triage.agents[2].name"].message == "a name may not contain '/'"
    cluster = issues['clusters["billing/eu"]']
    assert (cluster.line, cluster.column) == (line_of(text, "billing/eu"), 3)
    assert "'cluster/agent'" in cluster.fix

    # Once every agent is individually valid, the duplicate name is reported too.
    fixed = text.replace("agents.triage.classify", "agents.triage:other").replace(
        '{name: a/b, entrypoint: "agents:"}', '{name: c, entrypoint: "agents:c"}'
    )
    issues = by_path(issues_of(fixed))
    duplicate = issues["clusters.triage.agents[1].name"]
    assert duplicate.message == "agent name used twice in this cluster (also agents[0])"
    assert duplicate.line == line_of(fixed, "agents.triage:other")


def test_section_checks_report_every_problem_of_the_section() -> None:
    text = (
        MINIMAL
        + """\
observability:
  retention: {medium: 12h}
  resolution: {low: 30s}
alerting:
  thresholds:
    critical:
      coordination_p95_seconds: 2
      consensus_success_rate: 0.9
      message_latency_p95_ms: 5000
      utilization: 0.95
"""
    )
    issues = by_path(issues_of(text))

    assert set(issues) == {
        "observability.retention.medium",
        "observability.resolution.low",
        "alerting.thresholds.critical.coordination_p95_seconds",
        "alerting.thresholds.critical.consensus_success_rate",
    }
    kept = issues["observability.retention.medium"]
    assert kept.value == '"12h"'  # as written, not in seconds
    assert kept.fix == "keep it longer than high (1d)"
    assert issues["alerting.thresholds.critical.consensus_success_rate"].line == line_of(
        text, "consensus_success_rate: 0.9"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:5432/test?bogus=1", 'parameter: "bogus"'),
        ("postgresql://postgres:s3cret@[::1/test", 'matching "]"'),
        ("postgresql://%zz:s3cret@127.0.0.1/test", 'token: "%zz"'),
    ],
)
@pytest.mark.parametrize("form", ["store: {url: URL}", "store: URL"])
def test_a_postgres_url_libpq_cannot_read_is_reported_without_its_password(
    url: str, reason: str, form: str
) -> None:
    text = MINIMAL + form.replace("URL", f'"{url}"') + "\n"
    [issue] = issues_of(text)
    assert issue.path == ("store.url" if "{" in form else "store")
    assert issue.line == line_of(text, "store:")
    assert issue.message.startswith("not a PostgreSQL URL: ") and reason in issue.message
    assert issue.fix.startswith("write postgresql://user:password@host:5432/database")
    assert issue.value is not None and ("@127.0.0.1" in issue.value or "@[::1" in issue.value)
    assert "s3cret" not in format_issues([issue])


@pytest.mark.parametrize(
    ("section", "path", "message", "fix"),
    [
        (
            "observability: {resolution: {high: 0.001ms}}",
            "observability.resolution.high",
            "shorter than 1s: each step scrapes every worker",
            "use 1s or more (the default is 10s)",
        ),
        (
            "observability: {resolution: {medium: 1500ms}}",
            "observability.resolution.medium",
            "not a whole number of seconds",
            "use whole seconds",
        ),
        (
            "observability: {resolution: {medium: 1m, low: 90s}}",
            "observability.resolution.low",
            "low is not a whole multiple of medium (1m)",
            "use a step of 2m, 1h or another multiple of 1m",
        ),
        (
            "observability: {resolution: {medium: 1m, low: 1m}}",
            "observability.resolution.low",
            "low is not a whole multiple of medium (1m) wider than it",
            "use a step of 2m",
        ),
        (
            "clusters: {triage: {agents: [{name: a, entrypoint: 'm:f'}],"
            " health_checks: {heartbeat_interval: 1ms}}}",
            "clusters.triage.health_checks.heartbeat_interval",
            "shorter than 50ms: each beat is a write to the store",
            "use 50ms or more (the default is 200ms)",
        ),
    ],
)
def test_durations_that_drive_loops_have_a_floor(
    section: str, path: str, message: str, fix: str
) -> None:
    text = "fleet: {name: demo}\n" + section + "\n"
    if "clusters" not in section:
        text = MINIMAL + section + "\n"
    [issue] = issues_of(text)
    assert (issue.path, issue.line) == (path, 2 if "clusters" in section else 6)
    assert issue.message.startswith(message) and issue.fix.startswith(fix)


def test_bad_values_get_a_plain_message_and_fix() -> None:
    text = (
        MINIMAL
        + """\
api: {port: "8470"}
providers:
  sim: {error_rate: 1.5, latency: {median: 2s, p95: 1s}}
  llm: {kind: opnai}
  local: {kind: openai, base_url: localhost:8000}
recovery:
  agent_failure: {detect_within: soon, actions: [restart_failed_agent, reboot], warm_spares: -1}
"""
    )
    issues = by_path(issues_of(text))

    assert issues["api.port"].fix == "write the number without quotes or leading zeros"
    assert issues["providers.sim.error_rate"].message == "must be at most 1"
    assert issues["providers.sim.latency.p95"].message == "p95 is below the median (2s)"
    kind = issues["providers.llm.kind"]
    assert kind.message == "unknown provider kind 'opnai'"
    assert kind.fix.startswith("did you mean 'openai'?")
    assert issues["providers.local.model"].message == "required field is missing"
    assert issues["providers.local.model"].line == line_of(text, "local:")
    assert issues["providers.local.base_url"].message == "not an http(s) URL"
    assert "'30s'" in issues["recovery.agent_failure.detect_within"].fix
    assert "restart_cluster" in issues["recovery.agent_failure.actions[1]"].fix
    assert issues["recovery.agent_failure.warm_spares"].message == "must be at least 0"


def test_credentials_are_never_echoed() -> None:
    text = (
        MINIMAL
        + """\
providers:
  gpt:
    kind: openai
    base_url: https://api.openai.com/v1
    model: gpt-4o-mini
    api_key: sk-live-secret
    api_key_env: sk-other-secret
"""
    )
    issues = by_path(issues_of(text))
    assert "environment variable" in issues["providers.gpt.api_key"].fix
    assert issues["providers.gpt.api_key_env"].value is None
    assert "secret" not in format_issues(list(issues.values()))


# --- documents that are not a spec --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "message", "fix"),
    [
        ("fleet:\n  name: x\n\tclusters: {}\n", 3, 1, "invalid YAML", "spaces"),
        ('fleet: {name: "demo}\n', 2, 1, "invalid YAML", "close the quote"),
        ("fleet:\n  name: a\n name: b\n", 3, 2, "invalid YAML", "line up the keys"),
        ("a: 1\n---\nb: 2\n", 2, 1, "invalid YAML", "remove the extra '---'"),
        ("fleet: !!python/object:os.system {}\n", 1, 8, "invalid YAML", "remove the '!' tag"),
        ("- fleet\n- clusters\n", 1, 1, "the spec is a list, not a mapping", "'key: value'"),
        ("just text\n", 1, 1, "the spec is a single value", "'key: value'"),
        ("# nothing yet\n", 1, 1, "the spec is empty", "fleet"),
        ("fleet: {name: t}\x07\n", 1, 17, "invalid YAML: unacceptable character", "control"),
        ("fleet:\n  name: \x1b[31mt\n", 2, 9, "invalid YAML: unacceptable character", "control"),
        ("fleet: &f {name: *f}\n", 1, 8, "a value contains itself", "anchor"),
        ("deep: " + "[" * 1000 + "]" * 1000 + "\n", 1, 1, "the spec is nested too deeply", ""),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, n in zip("abcde", "bcdef", strict=True)
            ),
            1,
            1,
            "the spec expands to more than 100000 values",
            "alias",
        ),
    ],
)
def test_yaml_errors_and_non_mappings_get_a_position_and_fix(
    text: str, line: int, column: int, message: str, fix: str
) -> None:
    issue = only_issue(check_spec_text(text))
    assert (issue.line, issue.column) == (line, column)
    assert issue.message.startswith(message)
    assert fix in issue.fix


def test_a_key_written_twice_is_an_error() -> None:
    text = MINIMAL + "fleet: {name: other}\n"
    [issue] = issues_of(text)
    assert (issue.path, issue.line) == ("fleet", 6)
    assert issue.message == "key written twice (first at line 1)"


def test_merge_keys_may_override_and_errors_point_at_the_anchor() -> None:
    text = """\
    fleet: {name: demo}
    clusters:
      triage: &base
        agents:
          - {name: classify, entrypoint: "agents.triage:classify"}
        concurrency: 0
      resolve:
        <<: *base
        replicas: 3
    """
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("clusters.resolve.concurrency", 6),
        ("clusters.triage.concurrency", 6),
    ]
    spec = load_spec_text(text.replace("concurrency: 0", "concurrency: 5"))
    assert (spec.clusters["resolve"].replicas, spec.clusters["resolve"].concurrency) == (3, 5)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = only_issue(check_spec(tmp_path / "nope.yaml"))
    assert missing.line == 0 and "cannot read the file" in missing.message
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"fleet:\n  name: \xff\n")
    issue = only_issue(check_spec(binary))
    assert (issue.line, issue.column, issue.fix) == (2, 9, "save the file as UTF-8")


# --- rendering and raising ----------------------------------------------------------------------


def test_issues_render_as_file_line_column_path_message_value_fix(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("clusters:", "api: {port: -1}\nclusters:"))
    with pytest.raises(SpecError) as raised:
        load_spec(path)

    error = raised.value
    assert isinstance(error, UsageError)
    assert [issue.path for issue in error.issues] == ["api.port"]
    assert format_issues(error.issues, str(path)) == (
        f"{path}:2:13: api.port: must be at least 0 (got -1); fix: use a value at least 0"
    )
    assert str(error).splitlines() == [
        f"{path}: 1 problem in the fleet spec",
        format_issues(error.issues, str(path)),
    ]


def test_missing_fields_point_at_their_section() -> None:
    text = "fleet: {}\nclusters:\n  triage:\n    replicas: 2\n"
    issues = by_path(issues_of(text))
    assert (issues["fleet.name"].line, issues["fleet.name"].value) == (1, None)
    agents = issues["clusters.triage.agents"]
    assert agents.line == 3 and agents.fix.startswith("add 'agents: [{name: classify")
    assert format_issues([agents]).startswith("<spec>:3:3: clusters.triage.agents: required")


# --- schema -------------------------------------------------------------------------------------


def test_json_schema_is_json_and_describes_the_clusters() -> None:
    schema = json.loads(json.dumps(json_schema()))

    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["required"]) == {"fleet", "clusters"}
    assert schema["additionalProperties"] is False
    cluster = schema["$defs"]["ClusterSpec"]
    assert {
        "agents",
        "replicas",
        "concurrency",
        "resource_quotas",
        "health_checks",
        "routes",
        "provider",
        "scaling",
    } <= set(cluster["properties"])
    assert cluster["additionalProperties"] is False
    assert cluster["properties"]["concurrency"]["description"] == "Tasks one worker runs at once."
    quotas = schema["$defs"]["ResourceQuotas"]["properties"]
    assert {"max_agents", "max_concurrent_tasks", "tokens_per_minute", "cost_per_hour"} <= set(
        quotas
    )
    agent = schema["$defs"]["AgentDefinition"]["properties"]
    assert re.fullmatch(agent["entrypoint"]["pattern"], "agents.triage:classify")
    clusters = schema["properties"]["clusters"]
    assert "/" not in "".join(clusters["patternProperties"])
    assert clusters["additionalProperties"] is False
    assert {"string"} <= {option.get("type") for option in schema["properties"]["store"]["anyOf"]}


# --- what the control plane uses ----------------------------------------------------------------


def test_cluster_plans_map_onto_the_supervisor(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    plans = spec.cluster_plans()

    assert [plan.name for plan in plans] == ["triage", "resolve"]
    triage = plans[0]
    assert isinstance(triage, ClusterPlan)
    assert triage.agents == ("agents.triage:classify", "agents.triage:route")
    assert triage.replicas == 2
    assert triage.worker.concurrency == 50
    assert (triage.worker.heartbeat_interval, triage.worker.lease_seconds) == (0.5, 5.0)
    assert triage.python_path == (str(tmp_path),)
    assert spec.cluster_plans(python_path=())[1].python_path == ()
    assert load_spec_text(MINIMAL).cluster_plans()[0].python_path == ()

    cluster = spec.clusters["triage"]
    assert cluster.detector_settings().threshold == 10.0
    assert (cluster.restart_policy().intensity, cluster.restart_policy().period) == (3, 30.0)


def test_store_url_is_resolved_against_the_spec_directory(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    assert spec.store_url() == f"sqlite:///{tmp_path}/state/fleet.db?durability=normal"
    short = load_spec_text(MINIMAL + "store: postgresql://fleet@db:5432/fleet\n")
    assert short.store_url() == "postgresql://fleet@db:5432/fleet"
    [issue] = issues_of(MINIMAL + "store: {url: 'postgresql://db/f', durability: normal}\n")
    assert issue.path == "store.durability" and "SQLite stores only" in issue.message


def test_providers_build_the_gateway_objects() -> None:
    spec = load_spec_text(FULL)

    with pytest.raises(MissingAPIKey):
        spec.build_providers(environ={})
    [only] = spec.build_providers(environ={}, names={"fast"})
    assert only.name == "fast"
    providers = spec.build_providers(environ={"MY_OPENAI_KEY": "k"})
    try:
        assert [p.name for p in providers] == ["simulated", "fast", "gpt"]
        fast = providers[1]
        assert isinstance(fast, SimulatedLLM)
        assert (fast.seed, fast.error_rate, fast.latency.p95) == (7, 0.01, 0.2)
    finally:

        async def close() -> None:
            for provider in providers:
                await provider.aclose()

        asyncio.run(close())
    assert isinstance(spec.provider_specs()["simulated"], SimulatedProviderSpec)


# --- the reference page -------------------------------------------------------------------------


def test_the_reference_spec_in_the_docs_is_valid_and_shows_the_defaults() -> None:
    page = Path(__file__).parents[2] / "docs" / "spec.md"
    [text] = re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL)
    spec = load_spec_text(text)
    defaults = load_spec_text(MINIMAL)

    for section in ("store", "api", "observability", "alerting", "recovery"):
        assert getattr(spec, section) == getattr(defaults, section), section
    assert spec.providers["simulated"] == SimulatedProviderSpec()
    documented, default = spec.clusters["triage"], defaults.clusters["triage"]
    assert documented.health_checks == default.health_checks
    assert (documented.replicas, documented.concurrency) == (default.replicas, default.concurrency)
    retry = documented.agents[0].retry
    assert retry is not None and retry.policy() == type(retry.policy())()


def test_provider_fallbacks_must_name_other_providers() -> None:
    text = (
        "fleet: {name: f}\n"
        "providers:\n"
        "  gpt: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m,\n"
        "        fallbacks: [simulated, nope, gpt]}\n"
        "clusters:\n"
        "  a: {agents: [{name: x, entrypoint: 'm:x'}], provider: gpt}\n"
    )
    issues = by_path(issues_of(text))
    assert set(issues) == {"providers.gpt.fallbacks[1]", "providers.gpt.fallbacks[2]"}
    assert issues["providers.gpt.fallbacks[1]"].line == 4
    assert "no provider" in issues["providers.gpt.fallbacks[1]"].message
    assert issues["providers.gpt.fallbacks[2]"].fix == "remove it from the list"
    ok = check_spec_text(text.replace(", nope, gpt", ""))
    assert isinstance(ok, FleetSpec)
    assert ok.provider_for("a").fallbacks == ("simulated",)  # type: ignore[union-attr]


def test_a_workers_memory_limit_reaches_its_settings_and_must_be_positive() -> None:
    spec = load_spec_text(
        MINIMAL.replace("  triage:\n", "  triage:\n    max_worker_memory_mb: 2048\n")
    )
    assert spec.clusters["triage"].worker_settings().max_memory_mb == 2048
    assert load_spec_text(MINIMAL).clusters["triage"].worker_settings().max_memory_mb is None
    [issue] = issues_of(MINIMAL.replace("  triage:\n", "  triage:\n    max_worker_memory_mb: 0\n"))
    assert issue.path == "clusters.triage.max_worker_memory_mb" and issue.line == 4


def test_more_warm_spares_than_the_limit_is_refused() -> None:
    issue = only_issue(check_spec_text(MINIMAL + "recovery: {agent_failure: {warm_spares: 17}}\n"))
    assert (issue.path, issue.message) == (
        "recovery.agent_failure.warm_spares",
        "must be at most 16",
    )
    # and the JSON Schema editors complete the spec with says the same
    spares = json_schema()["$defs"]["AgentFailureRecovery"]["properties"]["warm_spares"]
    assert (spares["minimum"], spares["maximum"]) == (0, 16)


def test_a_spec_path_that_is_no_regular_file_or_far_too_large_is_refused_unread(
    tmp_path: Path,
) -> None:
    """/dev/zero would be read until memory ran out."""
    from fleetops.spec import check_spec
    from fleetops.spec._loader import MAX_SPEC_BYTES

    issues = check_spec("/dev/zero")
    assert isinstance(issues, list) and issues[0].message == "not a regular file"
    big = tmp_path / "fleet.yaml"
    big.write_bytes(b"#" * (MAX_SPEC_BYTES + 1))
    issues = check_spec(big)
    assert isinstance(issues, list) and "larger than 4 MiB" in issues[0].message
