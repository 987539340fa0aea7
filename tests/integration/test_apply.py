"""ControlPlane.apply against a real store, with a supervisor that records what it is
asked to run instead of starting worker processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fleetops import FleetOpsError
from fleetops.control import ControlPlane
from fleetops.queue import QueueClient
from fleetops.runtime import ClusterPlan
from fleetops.spec import load_spec


def fleet(concurrency: int) -> str:
    return (
        "fleet: {name: demo}\n"
        "clusters:\n"
        "  triage:\n"
        '    agents: [{name: smoke, entrypoint: "fleetops.control._smoke:smoke"}]\n'
        f"    concurrency: {concurrency}\n"
    )


class RecordingSupervisor:
    """What a supervisor is asked to run; ``roll`` fails while ``failing`` is set, after
    taking the new plan on, as a rolled-out worker that never heartbeats leaves it."""

    def __init__(self, plans: list[ClusterPlan]) -> None:
        self.plans = {p.name: p for p in plans}
        self._desired = {p.name: p.replicas for p in plans}
        self.failing = False
        self.spares = 1

    def set_spares(self, spares: int) -> None:
        self.spares = spares

    async def roll(self, plan: ClusterPlan) -> None:
        self.plans[plan.name] = plan
        self._desired[plan.name] = plan.replicas
        if self.failing:
            raise TimeoutError

    def desired(self, cluster: str) -> int:
        return self._desired[cluster]

    def scale(self, cluster: str, replicas: int) -> None:
        self._desired[cluster] = replicas


def test_a_roll_that_fails_is_recorded_and_the_spec_applied_again_repairs_it(
    tmp_path: Path,
) -> None:
    """A failed roll left the cluster on the new plan while the plane kept the old
    spec: applying the old spec again found nothing to do, and the cluster stayed
    broken. Now the failure is an error of its own, recorded, and the next apply
    compares with what the supervisor runs."""
    (tmp_path / "fleet.yaml").write_text(fleet(4), encoding="utf-8")
    plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)
    plane.state_dir.mkdir()
    supervisor = RecordingSupervisor(plane.cluster_plans())
    plane.supervisor = supervisor  # type: ignore[assignment]
    good = plane.cluster_plans()[0]

    async def main() -> list[str]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            supervisor.failing = True
            with pytest.raises(FleetOpsError, match="apply it .* again"):
                await plane.apply(fleet(8), reason="more slots")
            assert plane.spec.clusters["triage"].concurrency == 4
            assert supervisor.plans["triage"] != good  # what a failed roll leaves
            supervisor.failing = False
            result = await plane.apply(fleet(4), reason="back")
            changes = await client.run(client.store.list_changes, 10, 0)
            assert [(c.kind, c.reason) for c in changes] == [
                ("apply_failed", "more slots"),
                ("apply", "back"),
            ]
            notes = {d["path"]: d["after"] for d in json.loads(changes[0].diff)}
            assert "timed out" in notes["error"]
            return result.actions

    actions = asyncio.run(main())
    assert actions == ["rolled out cluster triage (1 worker(s))"]
    assert supervisor.plans["triage"] == good


def test_a_smoke_test_that_gives_up_cancels_its_tasks(tmp_path: Path) -> None:
    """No worker runs the smoke task in time (here: none runs at all): the test fails,
    and its task is cancelled, not left queued for whenever a worker comes (where it
    would run, and call the other clusters' smoke agents, for nobody)."""
    (tmp_path / "fleet.yaml").write_text(fleet(4), encoding="utf-8")
    plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)
    plane.state_dir.mkdir()
    plane.supervisor = RecordingSupervisor(plane.cluster_plans())  # type: ignore[assignment]

    async def main() -> tuple[bool, str, list[tuple[str, str | None]]]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            passed, detail = await plane.smoke_test(within=0.2)
            records = await client.run(client.store.list_tasks, None, "triage")
            return passed, detail, [(r.state, r.dead_reason) for r in records]

    passed, detail, tasks = asyncio.run(main())
    assert not passed and "triage: queued not finished in time" in detail
    assert tasks == [("cancelled", "the smoke test gave up on it after 0.2 s")]


def test_the_fleets_warm_spares_reach_its_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recovery.agent_failure.warm_spares is what the supervisor keeps (default 1)."""
    seen: list[int] = []

    class Recorder:
        def __init__(self, store_url: str, plans: list[ClusterPlan], **options: object) -> None:
            seen.append(options["spares"])  # type: ignore[arg-type]
            self.ready = asyncio.Event()
            self.ready.set()

        async def run(self, stop: asyncio.Event) -> None:
            await stop.wait()

    monkeypatch.setattr("fleetops.control._plane.Supervisor", Recorder)
    for extra, spares in (("", 1), ("recovery: {agent_failure: {warm_spares: 0}}\n", 0)):
        (tmp_path / "fleet.yaml").write_text(fleet(4) + extra, encoding="utf-8")
        plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)

        async def start(plane: ControlPlane = plane) -> None:
            async with asyncio.TaskGroup() as tg:
                plane._tg = tg
                await plane._agent_clusters()
                plane._supervisor_stop.set()

        asyncio.run(start())
        assert seen[-1] == spares
    assert seen == [1, 0]


def test_applying_a_new_number_of_warm_spares_changes_the_supervisors(tmp_path: Path) -> None:
    """Compared with what the supervisor keeps, not with the spec applied before; set
    last, so that a change failing part-way leaves them as they were."""
    (tmp_path / "fleet.yaml").write_text(fleet(4), encoding="utf-8")
    plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)
    plane.state_dir.mkdir()
    supervisor = RecordingSupervisor(plane.cluster_plans())
    supervisor.spares = 3  # not what the spec says
    plane.supervisor = supervisor  # type: ignore[assignment]
    no_spares = "recovery: {agent_failure: {warm_spares: 0}}\n"

    async def main() -> list[list[str]]:
        async with QueueClient(plane.store_url) as client:
            plane.client = client
            done = [(await plane.apply(fleet(4) + no_spares, reason="none")).actions]
            done.append((await plane.apply(fleet(4) + no_spares, reason="again")).actions)
            supervisor.failing = True
            with pytest.raises(FleetOpsError, match="apply it .* again"):
                await plane.apply(fleet(8), reason="a roll that fails")
            assert supervisor.spares == 0  # as the spec still applied has them
            supervisor.failing = False
            done.append((await plane.apply(fleet(8), reason="fixed")).actions)
            return done

    assert asyncio.run(main()) == [
        ["warm spares per cluster from 3 to 0"],
        [],
        ["rolled out cluster triage (1 worker(s))", "warm spares per cluster from 0 to 1"],
    ]
    assert supervisor.spares == 1


def test_a_deploy_of_another_spec_keeps_the_one_applied_last_and_says_so(
    tmp_path: Path,
) -> None:
    """An apply through the API leaves its spec in no file of the user's: a later
    `fleetops up fleet.yaml` replaced it unseen. It is kept, and the deploy says so."""
    (tmp_path / "fleet.yaml").write_text(fleet(4), encoding="utf-8")
    plane = ControlPlane(load_spec(tmp_path / "fleet.yaml"), serve_api=False)
    plane.state_dir.mkdir()
    applied = plane.state_dir / "applied-spec.yaml"
    previous = plane.state_dir / "applied-spec.previous.yaml"
    applied.write_text(plane.spec_text, encoding="utf-8")  # the same: nothing to keep
    assert plane._keep_previous_spec(applied) == ""
    assert not previous.exists()
    applied.write_text(fleet(8), encoding="utf-8")  # applied since, through the API
    said = plane._keep_previous_spec(applied)
    assert "kept in .fleetops/applied-spec.previous.yaml" in said
    assert previous.read_text(encoding="utf-8") == fleet(8)
