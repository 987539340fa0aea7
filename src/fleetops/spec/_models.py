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

import ipaddress
import os
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    WithJsonSchema,
    model_validator,
)

from .._clock import Clock
from ..providers import Provider
from ..runtime import ClusterPlan
from ..store import DEFAULT_STORE_URL
from ..store._open import POSTGRES_URL_FIX, postgres_url_problem, redact
from ._clusters import ClusterSpec
from ._operations import AlertingSettings, ObservabilitySettings, RecoverySettings
from ._providers import BUILTIN_PROVIDER, ProviderSpec, SimulatedProviderSpec
from ._types import (
    SPEC_CONFIG,
    Name,
    PositiveSeconds,
    Problem,
    did_you_mean,
    raise_problems,
    spec_error,
)

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8470
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
    keep_finished: PositiveSeconds | None = 7 * 86400.0
    """How long succeeded and cancelled tasks are kept after they finished, with
    their attempts and effects; then the control plane deletes them and their
    idempotency keys are free again. null keeps them forever."""
    keep_dead: PositiveSeconds | None = 30 * 86400.0
    """How long dead letters are kept after they were dead-lettered; null: forever."""

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
        problems = []
        unreadable = postgres_url_problem(url)
        if unreadable is not None:
            problems.append(
                Problem(
                    ("url",),
                    redact(url),
                    f"not a PostgreSQL URL: {unreadable}",
                    POSTGRES_URL_FIX,
                )
            )
        if durability is not None:
            problems.append(
                Problem(
                    ("durability",),
                    durability,
                    "durability applies to SQLite stores only",
                    "remove it; PostgreSQL durability is configured on the server",
                )
            )
        return problems
    if "://" in url and not url.startswith("sqlite://"):
        return [
            Problem(
                ("url",),
                redact(url),
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


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_api_host(host: str) -> str:
    if is_loopback_host(host):
        return host
    raise spec_error(
        "not a loopback address: the API has no authentication yet, so it listens on "
        "this machine only",
        f"use 127.0.0.1, ::1 or localhost (the default is {DEFAULT_API_HOST})",
    )


class ApiSettings(BaseModel):
    """Where the HTTP API and dashboard listen."""

    model_config = SPEC_CONFIG

    host: Annotated[str, Field(strict=True, min_length=1), AfterValidator(_check_api_host)] = (
        DEFAULT_API_HOST
    )
    """A loopback address (127.0.0.1, ::1) or localhost: the API has no authentication."""
    port: Annotated[int, Field(strict=True, ge=0, le=65535)] = DEFAULT_API_PORT
    """0 picks a free port; the running fleet's address is then in .fleetops/control.lock."""


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
                    "providers": {
                        name: {"fallbacks": list(getattr(p, "fallbacks", ()))}
                        for name, p in self.providers.items()
                    },
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
        self,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        names: Collection[str] | None = None,
    ) -> list[Provider]:
        """A provider object for each provider spec, for the gateway; the caller closes them.

        ``names`` limits them to those providers (e.g. the one a cluster uses), so a
        key that only another cluster needs does not have to be set. Raises
        :class:`~fleetops.providers.MissingAPIKey` when an API key variable is unset.
        """
        built: list[Provider] = []
        for name, spec in self.provider_specs().items():
            if names is not None and name not in names:
                continue
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
                worker=replace(
                    cluster.worker_settings(),
                    traces_per_second=self.observability.traces_per_second,
                ),
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
    if isinstance(providers, Mapping):
        for pname, pspec in providers.items():
            fallbacks = pspec.get("fallbacks") if isinstance(pspec, Mapping) else None
            if not isinstance(fallbacks, list | tuple):
                continue
            for index, target in enumerate(fallbacks):
                if isinstance(target, str) and (target not in provider_names or target == pname):
                    problems.append(
                        Problem(
                            ("providers", pname, "fallbacks", index),
                            target,
                            "a provider cannot fall back to itself"
                            if target == pname
                            else "no provider has this name",
                            "remove it from the list"
                            if target == pname
                            else f"{did_you_mean(target, provider_names)}use one of: "
                            f"{', '.join(sorted(provider_names - {str(pname)}))}",
                        )
                    )
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
