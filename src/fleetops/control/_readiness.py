"""The production-readiness score: named, weighted checks, each passed or failed, and why.

The rubric (weights add up to 100; docs/readiness.md explains each):

=========================  ======  ==================================================
check                      weight  passes when
=========================  ======  ==================================================
deployment_phases              20  every deployment phase completed
workers_heartbeating           15  every cluster runs its desired workers, all beating
integration_smoke              15  a smoke task crossed every cluster and route
durable_store                  10  PostgreSQL, or SQLite with durability ``full``
redundancy                     10  every cluster runs at least two workers
resource_quotas                10  every cluster caps concurrent tasks and tokens/min
failure_detection               5  heartbeats are ≥ 5 per lease and phi threshold ≥ 8
provider_resilience             5  every cluster's provider is simulated or has fallback
api_exposure                    5  the API listens on loopback only (no auth yet)
dead_letters                    5  no task dead-lettered in the last hour
=========================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..spec import FleetSpec, SimulatedProviderSpec
from ..spec._models import is_loopback_host

WEIGHTS: dict[str, int] = {
    "deployment_phases": 20,
    "workers_heartbeating": 15,
    "integration_smoke": 15,
    "durable_store": 10,
    "redundancy": 10,
    "resource_quotas": 10,
    "failure_detection": 5,
    "provider_resilience": 5,
    "api_exposure": 5,
    "dead_letters": 5,
}


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    name: str
    weight: int
    passed: bool
    why: str


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    score: int
    checks: tuple[ReadinessCheck, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"readiness_score": self.score, "readiness_checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True, slots=True)
class FleetFacts:
    """What the checks look at, gathered by the control plane."""

    phases_completed: int
    phases_total: int
    failed_phase: str | None
    live_workers: dict[str, int]
    desired_workers: dict[str, int]
    smoke_passed: bool | None
    smoke_detail: str
    dead_letters_last_hour: int
    api_host: str


def score(spec: FleetSpec, facts: FleetFacts) -> ReadinessReport:
    checks = [
        _phases(facts),
        _workers(facts),
        _smoke(facts),
        _store(spec),
        _redundancy(spec, facts),
        _quotas(spec),
        _detection(spec),
        _providers(spec),
        _api(facts),
        _dead_letters(facts),
    ]
    total = sum(c.weight for c in checks if c.passed)
    return ReadinessReport(total, tuple(checks))


def _check(name: str, passed: bool, why: str) -> ReadinessCheck:
    return ReadinessCheck(name, WEIGHTS[name], passed, why)


def _phases(f: FleetFacts) -> ReadinessCheck:
    if f.failed_phase:
        return _check("deployment_phases", False, f"phase {f.failed_phase} failed")
    ok = f.phases_completed == f.phases_total
    return _check(
        "deployment_phases", ok, f"{f.phases_completed} of {f.phases_total} phases completed"
    )


def _workers(f: FleetFacts) -> ReadinessCheck:
    short = {
        c: (f.live_workers.get(c, 0), want)
        for c, want in f.desired_workers.items()
        if f.live_workers.get(c, 0) < want
    }
    if short:
        detail = ", ".join(f"{c}: {have}/{want}" for c, (have, want) in sorted(short.items()))
        return _check("workers_heartbeating", False, f"clusters short of workers: {detail}")
    total = sum(f.desired_workers.values())
    return _check("workers_heartbeating", True, f"all {total} desired workers are heartbeating")


def _smoke(f: FleetFacts) -> ReadinessCheck:
    if f.smoke_passed is None:
        return _check("integration_smoke", False, "no smoke test has run")
    return _check("integration_smoke", f.smoke_passed, f.smoke_detail)


def _store(spec: FleetSpec) -> ReadinessCheck:
    url = spec.store_url()
    if url.startswith(("postgresql://", "postgres://")):
        return _check("durable_store", True, "PostgreSQL")
    if "durability=normal" in url:
        return _check(
            "durable_store",
            False,
            "SQLite with durability normal: the last commits may be lost on power loss; "
            "set store.durability: full",
        )
    return _check(
        "durable_store", True, "SQLite in WAL mode, every acknowledged write synced to disk"
    )


def _redundancy(spec: FleetSpec, f: FleetFacts) -> ReadinessCheck:
    single = sorted(c for c, n in f.desired_workers.items() if n < 2)
    if single:
        return _check(
            "redundancy",
            False,
            f"single worker (a single point of failure): {', '.join(single)}; set replicas: 2",
        )
    return _check("redundancy", True, "every cluster runs two or more workers")


def _quotas(spec: FleetSpec) -> ReadinessCheck:
    missing = sorted(
        name
        for name, c in spec.clusters.items()
        if c.resource_quotas.max_concurrent_tasks is None
        or c.resource_quotas.tokens_per_minute is None
    )
    if missing:
        return _check(
            "resource_quotas",
            False,
            f"no max_concurrent_tasks or tokens_per_minute quota: {', '.join(missing)}",
        )
    return _check("resource_quotas", True, "every cluster caps concurrent tasks and tokens")


def _detection(spec: FleetSpec) -> ReadinessCheck:
    weak = []
    for name, c in spec.clusters.items():
        hc = c.health_checks
        if hc.lease_timeout < 5 * hc.heartbeat_interval or hc.failure_detector.threshold < 8:
            weak.append(name)
    if weak:
        return _check(
            "failure_detection",
            False,
            f"leases shorter than 5 heartbeats or phi threshold below 8: {', '.join(weak)}",
        )
    return _check("failure_detection", True, "heartbeats and phi threshold leave margin")


def _providers(spec: FleetSpec) -> ReadinessCheck:
    providers = spec.provider_specs()
    fragile = []
    for name, c in spec.clusters.items():
        provider = providers[c.provider]
        if isinstance(provider, SimulatedProviderSpec):
            continue
        if not getattr(provider, "fallbacks", ()):
            fragile.append(name)
    if fragile:
        return _check(
            "provider_resilience",
            False,
            f"a real provider without fallback: {', '.join(sorted(fragile))}",
        )
    return _check("provider_resilience", True, "every provider is simulated or has a fallback")


def _api(f: FleetFacts) -> ReadinessCheck:
    if is_loopback_host(f.api_host):
        return _check("api_exposure", True, f"API on loopback ({f.api_host})")
    return _check("api_exposure", False, f"API on {f.api_host} without authentication")


def _dead_letters(f: FleetFacts) -> ReadinessCheck:
    if f.dead_letters_last_hour:
        return _check(
            "dead_letters",
            False,
            f"{f.dead_letters_last_hour} task(s) dead-lettered in the last hour",
        )
    return _check("dead_letters", True, "no task dead-lettered in the last hour")
