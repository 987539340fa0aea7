"""The fleet spec: one YAML document describing a whole fleet, as frozen pydantic models.

::

    fleet: {name: support-desk}
    store: sqlite:///.fleetops/fleet.db
    clusters:
      triage:
        agents:
          - {name: classify, entrypoint: "agents.triage:classify"}
        replicas: 2
        routes: [resolve]
      resolve:
        agents:
          - {name: answer, entrypoint: "agents.resolve:answer"}

Every model forbids unknown keys. Checks that involve several fields report each
problem with its own path; see :mod:`fleetops.spec._types`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, WithJsonSchema, model_validator

from .._clock import Clock
from ..providers import Provider
from ..queue import RetryPolicy
from ..runtime import ClusterPlan, DetectorSettings, RestartPolicy, WorkerSettings
from ..store import DEFAULT_STORE_URL
from ._operations import AlertingSettings, ObservabilitySettings, RecoverySettings
from ._providers import BUILTIN_PROVIDER, SPEC_CONFIG, ProviderSpec, SimulatedProviderSpec
from ._types import (
    Count,
    EntryPoint,
    Name,
    Number,
    PositiveCount,
    PositiveSeconds,
    Problem,
    Seconds,
    did_you_mean,
    human_duration,
    raise_problems,
)

_RETRY = RetryPolicy()
_WORKER = WorkerSettings()
_DETECTOR = DetectorSettings()
_RESTART = RestartPolicy()

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470
DEFAULT_REPLICAS = 1
SQLITE_DURABILITY = ("full", "normal")


# --- fleet, store, api --------------------------------------------------------------------------


class FleetMetadata(BaseModel):
    """Who this fleet is."""

    model_config = SPEC_CONFIG

    name: Name
    """The fleet's name, shown in the dashboard, alerts and incidents."""


class StoreSettings(BaseModel):
    """Where all durable state lives; a plain URL string is accepted too."""

    model_config = SPEC_CONFIG

    url: Annotated[str, Field(strict=True, min_length=1)] = DEFAULT_STORE_URL
    """sqlite:///relative.db, sqlite:////absolute.db, a file path, or postgresql://..."""
    durability: Literal["full", "normal"] | None = None
    """SQLite only: 'full' syncs every commit to disk, 'normal' may lose the last
    commits on power loss (never on a process crash)."""

    @model_validator(mode="after")
    def _check(self) -> StoreSettings:
        raise_problems(_store_problems(self.url, self.durability))
        return self

    def resolved_url(self, base_dir: str | os.PathLike[str] | None = None) -> str:
        """The URL to open, with ``durability`` applied.

        A relative SQLite path is made absolute against ``base_dir`` (the spec file's
        directory), so the fleet finds its store wherever the command runs.
        """
        url = self.url
        if base_dir is not None and not url.startswith(_POSTGRES_SCHEMES):
            path, query = _sqlite_path(url)
            if path and not os.path.isabs(path):
                url = f"sqlite:///{(Path(base_dir) / path).absolute()}{query}"
        if self.durability is not None:
            url += ("&" if "?" in url else "?") + f"durability={self.durability}"
        return url


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _sqlite_path(url: str) -> tuple[str, str]:
    """The file path and ``?query`` of a SQLite URL, read the way the store opens it."""
    if not url.startswith("sqlite://"):
        return url, ""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return path, f"?{parts.query}" if parts.query else ""


def _store_problems(url: str, durability: str | None) -> list[Problem]:
    if url.startswith(_POSTGRES_SCHEMES):
        if durability is None:
            return []
        return [
            Problem(
                ("durability",),
                durability,
                "durability applies to SQLite stores only",
                "remove it; PostgreSQL durability is configured on the server",
            )
        ]
    if "://" in url and not url.startswith("sqlite://"):
        return [
            Problem(
                ("url",),
                url,
                f"unsupported store scheme {url.split('://', 1)[0]!r}",
                "use sqlite:///path/to/fleet.db or postgresql://user@host:5432/db",
            )
        ]
    path, query = _sqlite_path(url)
    options = parse_qs(query[1:])
    problems = []
    if not path:
        problems.append(
            Problem(("url",), url, "no database file", "name a file: sqlite:///.fleetops/fleet.db")
        )
    unknown = sorted(set(options) - {"durability"})
    if unknown:
        problems.append(
            Problem(
                ("url",),
                url,
                f"unknown option(s) {', '.join(unknown)}",
                "remove them; only ?durability=full|normal is understood",
            )
        )
    in_url = options.get("durability", [])
    if any(level not in SQLITE_DURABILITY for level in in_url):
        problems.append(
            Problem(("url",), url, "unknown durability", "use durability=full or durability=normal")
        )
    if in_url and durability is not None:
        problems.append(
            Problem(
                ("durability",),
                durability,
                "durability is given twice, here and in the URL",
                "keep one of them",
            )
        )
    return problems


def _store_from_url(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


StoreField = Annotated[
    StoreSettings,
    BeforeValidator(_store_from_url),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "the store URL"},
                StoreSettings.model_json_schema(),
            ]
        }
    ),
]


class ApiSettings(BaseModel):
    """Where the HTTP API and dashboard listen."""

    model_config = SPEC_CONFIG

    host: Annotated[str, Field(strict=True, min_length=1)] = DEFAULT_API_HOST
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = DEFAULT_API_PORT


# --- clusters -----------------------------------------------------------------------------------


class RetrySettings(BaseModel):
    """Retry policy for one agent's tasks (see :class:`fleetops.RetryPolicy`)."""

    model_config = SPEC_CONFIG

    max_attempts: PositiveCount = _RETRY.max_attempts
    """Failed attempts (the handler raised or timed out) before the task is dead-lettered."""
    backoff_base: Seconds = _RETRY.backoff_base
    """The first retry waits up to this long; each later one up to twice as long."""
    backoff_max: Seconds = _RETRY.backoff_max
    """No retry waits longer than this."""
    max_redeliveries: Count = _RETRY.max_redeliveries
    """Attempts lost to a dying worker before the task is dead-lettered as poison."""

    @model_validator(mode="after")
    def _check(self) -> RetrySettings:
        if self.backoff_max < self.backoff_base:
            raise_problems(
                [
                    Problem(
                        ("backoff_max",),
                        self.backoff_max,
                        f"backoff_max is below backoff_base ({human_duration(self.backoff_base)})",
                        "use a backoff_max no smaller than backoff_base",
                    )
                ]
            )
        return self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            max_redeliveries=self.max_redeliveries,
        )


class AgentDefinition(BaseModel):
    """One agent of a cluster: its name and the async function that implements it."""

    model_config = SPEC_CONFIG

    name: Name
    """The agent's name; tasks are addressed to 'cluster/name'."""
    entrypoint: EntryPoint
    """'package.module:function'; modules next to the spec file import."""
    timeout: PositiveSeconds | None = None
    """Per-attempt timeout; none when left out."""
    retry: RetrySettings | None = None
    """Overrides the retry policy the agent was registered with."""


class ResourceQuotas(BaseModel):
    """Upper bounds for one cluster; a limit left out is unbounded."""

    model_config = SPEC_CONFIG

    max_agents: PositiveCount | None = None
    """Most replicas (worker processes hosting this cluster's agents) ever running."""
    max_concurrent_tasks: PositiveCount | None = None
    """Most tasks of this cluster running at once, across all its workers."""
    tokens_per_minute: PositiveCount | None = None
    """LLM tokens (prompt + completion) per minute across the cluster."""
    cost_per_hour: Annotated[Number, Field(ge=0)] | None = None
    """LLM spend per hour, priced with the provider's pricing."""


class FailureDetectorSettings(BaseModel):
    """The phi-accrual failure detector watching worker heartbeats."""

    model_config = SPEC_CONFIG

    threshold: Annotated[Number, Field(gt=0)] = _DETECTOR.threshold
    """Suspect a worker when phi exceeds this (8 means a 1e-8 chance of a false alarm)."""
    min_std: PositiveSeconds = _DETECTOR.min_std
    """Floor for the learned heartbeat interval deviation."""
    acceptable_pause: Seconds = _DETECTOR.acceptable_pause
    """Heartbeat silence tolerated before phi starts rising."""
    window: Annotated[int, Field(strict=True, ge=2)] = _DETECTOR.window
    """Heartbeat intervals remembered."""


class RestartSettings(BaseModel):
    """How the supervisor restarts a cluster's failed workers."""

    model_config = SPEC_CONFIG

    intensity: PositiveCount = _RESTART.intensity
    """More restarts than this within 'period' mark the cluster degraded."""
    period: PositiveSeconds = _RESTART.period
    backoff_base: Seconds = _RESTART.backoff_base
    backoff_max: Seconds = _RESTART.backoff_max

    @model_validator(mode="after")
    def _check(self) -> RestartSettings:
        if self.backoff_max < self.backoff_base:
            raise_problems(
                [
                    Problem(
                        ("backoff_max",),
                        self.backoff_max,
                        f"backoff_max is below backoff_base ({human_duration(self.backoff_base)})",
                        "use a backoff_max no smaller than backoff_base",
                    )
                ]
            )
        return self


class HealthChecks(BaseModel):
    """Heartbeats, leases, failure detection and restarts for one cluster."""

    model_config = SPEC_CONFIG

    heartbeat_interval: PositiveSeconds = _WORKER.heartbeat_interval
    """How often a worker heartbeats and extends its leases."""
    lease_timeout: PositiveSeconds = _WORKER.lease_seconds
    """A task whose lease is not extended within this long goes back to the queue."""
    failure_detector: FailureDetectorSettings = FailureDetectorSettings()
    restart: RestartSettings = RestartSettings()

    @model_validator(mode="after")
    def _check(self) -> HealthChecks:
        if self.lease_timeout < 2 * self.heartbeat_interval:
            raise_problems(
                [
                    Problem(
                        ("lease_timeout",),
                        self.lease_timeout,
                        "the lease would expire before two heartbeats could extend it",
                        "use at least twice heartbeat_interval "
                        f"({human_duration(self.heartbeat_interval)})",
                    )
                ]
            )
        return self


class ScalingBounds(BaseModel):
    """The range the autoscaler keeps a cluster's replicas in."""

    model_config = SPEC_CONFIG

    min_replicas: Count = DEFAULT_REPLICAS
    max_replicas: PositiveCount


class ClusterSpec(BaseModel):
    """A named pool of agents with its own quotas, health checks and scaling bounds."""

    model_config = SPEC_CONFIG

    agents: Annotated[tuple[AgentDefinition, ...], Field(min_length=1)]
    replicas: Count = DEFAULT_REPLICAS
    """Worker processes to run (the autoscaler moves it within 'scaling')."""
    concurrency: PositiveCount = _WORKER.concurrency
    """Tasks one worker runs at once."""
    resource_quotas: ResourceQuotas = ResourceQuotas()
    health_checks: HealthChecks = HealthChecks()
    routes: tuple[Name, ...] = ()
    """Clusters this cluster's agents may send tasks to."""
    provider: Name = BUILTIN_PROVIDER
    """The provider behind ctx.llm for this cluster's agents."""
    scaling: ScalingBounds | None = None
    """Leave out to keep 'replicas' fixed."""

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        problems: list[Problem] = []
        seen: dict[str, int] = {}
        for index, agent in enumerate(self.agents):
            if agent.name in seen:
                problems.append(
                    Problem(
                        ("agents", index, "name"),
                        agent.name,
                        f"agent name used twice in this cluster (also agents[{seen[agent.name]}])",
                        "give every agent of a cluster its own name",
                    )
                )
            seen.setdefault(agent.name, index)
        for index, route in enumerate(self.routes):
            if route in self.routes[:index]:
                problems.append(
                    Problem(("routes", index), route, "route listed twice", "list once")
                )
        max_agents = self.resource_quotas.max_agents
        if max_agents is not None and self.replicas > max_agents:
            problems.append(
                Problem(
                    ("replicas",),
                    self.replicas,
                    f"more replicas than resource_quotas.max_agents ({max_agents})",
                    f"use at most {max_agents} replicas or raise max_agents",
                )
            )
        if self.scaling is not None:
            problems += self._scaling_problems(self.scaling, max_agents)
        raise_problems(problems)
        return self

    def _scaling_problems(self, scaling: ScalingBounds, max_agents: int | None) -> list[Problem]:
        low, high = scaling.min_replicas, scaling.max_replicas
        if low > high:
            return [
                Problem(
                    ("scaling", "min_replicas"),
                    low,
                    f"min_replicas is above max_replicas ({high})",
                    "use a min_replicas no larger than max_replicas",
                )
            ]
        problems = []
        if max_agents is not None and high > max_agents:
            problems.append(
                Problem(
                    ("scaling", "max_replicas"),
                    high,
                    f"max_replicas is above resource_quotas.max_agents ({max_agents})",
                    f"use at most {max_agents} or raise max_agents",
                )
            )
        if not low <= self.replicas <= high:
            problems.append(
                Problem(
                    ("replicas",),
                    self.replicas,
                    f"replicas is outside scaling bounds {low}..{high}",
                    f"use a value from {low} to {high}",
                )
            )
        return problems

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(
            concurrency=self.concurrency,
            heartbeat_interval=self.health_checks.heartbeat_interval,
            lease_seconds=self.health_checks.lease_timeout,
        )

    def detector_settings(self) -> DetectorSettings:
        detector = self.health_checks.failure_detector
        return DetectorSettings(
            threshold=detector.threshold,
            min_std=detector.min_std,
            acceptable_pause=detector.acceptable_pause,
            window=detector.window,
        )

    def restart_policy(self) -> RestartPolicy:
        restart = self.health_checks.restart
        return RestartPolicy(
            backoff_base=restart.backoff_base,
            backoff_max=restart.backoff_max,
            intensity=restart.intensity,
            period=restart.period,
        )


# --- the fleet ----------------------------------------------------------------------------------


class FleetSpec(BaseModel):
    """A whole fleet: its clusters, providers, store, API and operations settings."""

    model_config = SPEC_CONFIG

    fleet: FleetMetadata
    store: StoreField = StoreSettings()
    api: ApiSettings = ApiSettings()
    providers: dict[Name, ProviderSpec] = {}
    """LLM providers by name; 'simulated' exists even when not listed here."""
    clusters: Annotated[dict[Name, ClusterSpec], Field(min_length=1)]
    observability: ObservabilitySettings = ObservabilitySettings()
    alerting: AlertingSettings = AlertingSettings()
    recovery: RecoverySettings = RecoverySettings()

    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_references(self) -> FleetSpec:
        raise_problems(
            reference_problems(
                {
                    "providers": dict(self.providers),
                    "clusters": {
                        name: {"routes": list(c.routes), "provider": c.provider}
                        for name, c in self.clusters.items()
                    },
                }
            )
        )
        return self

    @property
    def source(self) -> Path | None:
        """The file this spec was loaded from, if any."""
        return self._source

    @property
    def base_dir(self) -> Path | None:
        """The directory relative paths and agent modules are resolved against."""
        return self._source.parent if self._source is not None else None

    def with_source(self, path: str | os.PathLike[str]) -> FleetSpec:
        """A copy that resolves relative paths against ``path``'s directory."""
        copy = self.model_copy()
        copy._source = Path(path).absolute()
        return copy

    def provider_specs(self) -> dict[str, ProviderSpec]:
        """Every provider by name, the built-in ``simulated`` one included."""
        return {BUILTIN_PROVIDER: SimulatedProviderSpec(), **self.providers}

    def provider_for(self, cluster: str) -> ProviderSpec:
        """The provider the named cluster's agents call."""
        return self.provider_specs()[self.clusters[cluster].provider]

    def build_providers(
        self, *, clock: Clock | None = None, environ: Mapping[str, str] | None = None
    ) -> list[Provider]:
        """A provider object for every provider spec, for the gateway; the caller closes them.

        Raises :class:`~fleetops.providers.MissingAPIKey` when an API key variable is unset.
        """
        built: list[Provider] = []
        for name, spec in self.provider_specs().items():
            if isinstance(spec, SimulatedProviderSpec):
                built.append(spec.build(name, clock=clock))
            else:
                built.append(spec.build(name, clock=clock, environ=environ))
        return built

    def tokens_per_minute(self) -> dict[str, int]:
        """Each cluster's token quota, for the gateway; clusters without one are left out."""
        return {
            name: cluster.resource_quotas.tokens_per_minute
            for name, cluster in self.clusters.items()
            if cluster.resource_quotas.tokens_per_minute is not None
        }

    def store_url(self) -> str:
        """The store URL to open, relative SQLite paths resolved against the spec's directory."""
        return self.store.resolved_url(self.base_dir)

    def cluster_plans(self, *, python_path: tuple[str, ...] | None = None) -> list[ClusterPlan]:
        """What the supervisor runs for each cluster, in spec order.

        Agent modules are imported with the spec file's directory on ``sys.path``
        unless ``python_path`` says otherwise.
        """
        if python_path is None:
            python_path = (str(self.base_dir),) if self.base_dir is not None else ()
        return [
            ClusterPlan(
                name=name,
                agents=tuple(agent.entrypoint for agent in cluster.agents),
                replicas=cluster.replicas,
                worker=cluster.worker_settings(),
                python_path=python_path,
            )
            for name, cluster in self.clusters.items()
        ]


def reference_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Routes to clusters and providers that the spec does not define.

    Works on the raw document as well as on a validated one, so that these problems
    are reported together with any others; shapes that are wrong are skipped here
    (the models report them).
    """
    clusters = data.get("clusters")
    if not isinstance(clusters, Mapping):
        return []
    providers = data.get("providers")
    provider_names = {BUILTIN_PROVIDER}
    if isinstance(providers, Mapping):
        provider_names |= {str(p) for p in providers}
    cluster_names = {str(c) for c in clusters}
    problems = []
    for name, cluster in clusters.items():
        if not isinstance(cluster, Mapping):
            continue
        routes = cluster.get("routes")
        if isinstance(routes, list | tuple):
            for index, route in enumerate(routes):
                if isinstance(route, str) and route not in cluster_names:
                    problems.append(
                        Problem(
                            ("clusters", name, "routes", index),
                            route,
                            "no cluster has this name",
                            f"{did_you_mean(route, cluster_names)}use one of: "
                            f"{', '.join(sorted(cluster_names))}",
                        )
                    )
        provider = cluster.get("provider")
        if isinstance(provider, str) and provider not in provider_names:
            problems.append(
                Problem(
                    ("clusters", name, "provider"),
                    provider,
                    "no provider has this name",
                    f"{did_you_mean(provider, provider_names)}define it under 'providers' "
                    f"or use one of: {', '.join(sorted(provider_names))}",
                )
            )
    return problems


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the spec, for editors that complete and check YAML."""
    schema = FleetSpec.model_json_schema()
    _close_named_mappings(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "fleetops fleet spec",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def _close_named_mappings(schema: Any) -> None:
    """Mappings keyed by names accept no key outside the name pattern (e.g. 'a/b')."""
    if isinstance(schema, dict):
        if "patternProperties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _close_named_mappings(value)
    elif isinstance(schema, list):
        for value in schema:
            _close_named_mappings(value)
