"""Rules a deploy would enforce on the spec alone are the spec's own: ``validate``
reports them with their line and column, before any ``up``."""

from __future__ import annotations

import pytest

from fleetops.spec import check_spec_text

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
