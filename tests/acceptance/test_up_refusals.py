"""``fleetops up`` refuses a user's mistake as ``validate`` does: exit status 2, the
field, the value and the fix, and nothing made in the fleet's directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FLEETOPS = [sys.executable, "-m", "fleetops.cli"]

SPEC = """\
fleet: {name: refused}
api: {host: HOST, port: 0}
clusters:
  only:
    agents: [{name: work, entrypoint: "ENTRYPOINT"}]
"""
AGENTS = """\
from fleetops import agent

@agent(name="work")
async def work(task, ctx):
    return None
"""


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETOPS, *args], capture_output=True, text=True, timeout=120, cwd=directory
    )


def _fleet(tmp_path: Path, host: str = "127.0.0.1", entrypoint: str = "agents:work") -> Path:
    (tmp_path / "agents.py").write_text(AGENTS)
    text = SPEC.replace("HOST", host).replace("ENTRYPOINT", entrypoint)
    (tmp_path / "fleet.yaml").write_text(text)
    return tmp_path


def test_a_public_api_host_is_refused_by_validate_and_up_alike(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, host="0.0.0.0")
    validated = _run(fleet, "validate", "fleet.yaml")
    assert validated.returncode == 2, validated.stdout
    assert "fleet.yaml:2:13: api.host: not a loopback address" in validated.stderr
    assert '(got "0.0.0.0")' in validated.stderr
    up = _run(fleet, "up", "fleet.yaml", "--smoke", "--json")
    assert up.returncode == 2, (up.stdout, up.stderr)
    assert "fleet.yaml:2:13: api.host" in up.stderr
    assert sorted(p.name for p in fleet.iterdir()) == ["agents.py", "fleet.yaml"]
