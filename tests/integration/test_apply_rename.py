"""Applying a spec whose only change is the fleet's name says so: the change log's
diff and the actions reported agree (it said "nothing to do" while recording a rename)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fleetops.control import ControlPlane
from fleetops.queue import QueueClient
from fleetops.runtime import ClusterPlan
from fleetops.spec import load_spec


def fleet(name: str) -> str:
    return (
        f"fleet: {{name: {name}}}\n"
        "clusters:\n"
        "  triage:\n"
        '    agents: [{name: smoke, entrypoint: "fleetops.control._smoke:smoke"}]\n'
    )


class StillSupervisor:
    """A supervisor that runs its plans and is asked for nothing else."""

    def __init__(self, plans: list[ClusterPlan]) -> None:
        self.plans = {p.name: p for p in plans}
        self.spares = 1

    def desired(self, cluster: str) -> int:
        return self.plans[cluster].replicas


def test_a_rename_is_reported_as_the_change_it_is(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet("support-desk"), encoding="utf-8")
    plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)
    plane.state_dir.mkdir()
    plane.supervisor = StillSupervisor(plane.cluster_plans())  # type: ignore[assignment]

    async def main() -> tuple[list[str], list[dict[str, object]]]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            result = await plane.apply(fleet("other-name"), reason="rename")
            [change] = await client.run(client.store.list_changes, 10, 0)
            assert change.subject == "fleet/other-name"
            return result.actions, json.loads(change.diff)

    actions, recorded = asyncio.run(main())
    assert [d["path"] for d in recorded if d["op"] == "replace"] == ["fleet.name"]
    [action] = actions
    assert action.startswith("renamed the fleet from support-desk to other-name")
    assert "workers are unchanged" in action
    assert plane.spec.fleet.name == "other-name"
