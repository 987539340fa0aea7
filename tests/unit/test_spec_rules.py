"""Rules a deploy would enforce on the spec alone are the spec's own: ``validate``
reports them with their line and column, before any ``up``."""

from __future__ import annotations

import pytest

from fleetops.spec import check_spec_text, json_schema

SPEC = """\
fleet: {name: demo}
api: {host: HOST, port: 0}
clusters:
  triage:
    agents:
      - {name: classify, entrypoint: "agents.triage:classify"}
"""


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "localhost.example.com"])
def test_an_api_host_other_than_loopback_is_a_spec_error(host: str) -> None:
    issues = check_spec_text(SPEC.replace("HOST", host))
    assert isinstance(issues, list)
    [issue] = issues
    assert (issue.path, issue.line, issue.column, issue.value) == ("api.host", 2, 13, f'"{host}"')
    assert "loopback" in issue.message
    assert "127.0.0.1" in issue.fix


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", '"::1"'])
def test_a_loopback_api_host_is_valid(host: str) -> None:
    spec = check_spec_text(SPEC.replace("HOST", host))
    assert not isinstance(spec, list), spec


LIMITS = """\
fleet: {name: demo}
clusters:
  triage:
    agents:
      - name: classify
        entrypoint: "agents.triage:classify"
        retry: {max_attempts: 1000000001}
    replicas: 100000
    concurrency: 1000000000000
    resource_quotas: {max_agents: 1001}
    health_checks: {lease_timeout: 99999999999d, failure_detector: {window: 10000000000}}
    scaling: {min_replicas: 2000, max_replicas: 5000}
store: {url: "sqlite:///f.db", keep_dead: 3651d}
"""


def test_counts_and_durations_past_their_maximum_name_the_field_value_and_range() -> None:
    issues = check_spec_text(LIMITS)
    assert isinstance(issues, list)
    found = {issue.path: (issue.line, issue.value, issue.fix) for issue in issues}
    assert found == {
        "clusters.triage.agents[0].retry.max_attempts": (
            7,
            "1000000001",
            "use a value from 1 to 1000000000",
        ),
        "clusters.triage.replicas": (8, "100000", "use a value from 0 to 1000"),
        "clusters.triage.concurrency": (9, "1000000000000", "use a value from 1 to 10000"),
        "clusters.triage.resource_quotas.max_agents": (10, "1001", "use a value from 1 to 1000"),
        "clusters.triage.health_checks.lease_timeout": (
            11,
            '"99999999999d"',
            "use a duration of at most 3650d",
        ),
        "clusters.triage.health_checks.failure_detector.window": (
            11,
            "10000000000",
            "use a value from 2 to 1000000000",
        ),
        "clusters.triage.scaling.min_replicas": (12, "2000", "use a value from 0 to 1000"),
        "clusters.triage.scaling.max_replicas": (12, "5000", "use a value from 1 to 1000"),
        "store.keep_dead": (13, '"3651d"', "use a duration of at most 3650d"),
    }


def test_the_largest_allowed_values_are_valid_and_in_the_schema() -> None:
    text = (
        LIMITS.replace("1000000001", "1000000000")
        .replace("100000\n", "1000\n")
        .replace("1000000000000", "10000")
        .replace("1001", "1000")
        .replace("99999999999d", "3650d")
        .replace("10000000000", "1000000000")
        .replace("min_replicas: 2000, max_replicas: 5000", "min_replicas: 1000, max_replicas: 1000")
        .replace("3651d", "3650d")
    )
    spec = check_spec_text(text)
    assert not isinstance(spec, list), spec
    schema = json_schema()["$defs"]
    cluster = schema["ClusterSpec"]["properties"]
    assert (cluster["replicas"]["maximum"], cluster["concurrency"]["maximum"]) == (1000, 10000)
    lease = schema["HealthChecks"]["properties"]["lease_timeout"]["anyOf"][0]
    assert lease["maximum"] == 10 * 365 * 86400
    assert schema["RetrySettings"]["properties"]["max_attempts"]["maximum"] == 1_000_000_000
