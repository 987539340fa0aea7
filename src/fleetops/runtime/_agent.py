"""Agents: async callables registered by name.

::

    from fleetops import agent

    @agent(name="classify")
    async def classify(task, ctx):
        label = await ctx.effect("label", lambda call: crm.tag(task.payload, key=call.key))
        return {"label": label}
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .._exceptions import ConfigError
from ..queue import RetryPolicy

if TYPE_CHECKING:
    from ._context import Context, TaskInfo

Handler = Callable[["TaskInfo", "Context"], Awaitable[Any]]
F = TypeVar("F", bound=Handler)

_REGISTRY: dict[str, AgentSpec] = {}


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A registered agent: its name, handler, retry policy and per-attempt timeout."""

    name: str
    handler: Handler
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None


@overload
def agent(fn: F, /) -> F: ...
@overload
def agent(
    *, name: str | None = None, retry: RetryPolicy | None = None, timeout: float | None = None
) -> Callable[[F], F]: ...


def agent(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> F | Callable[[F], F]:
    """Register ``async def handle(task, ctx)`` as an agent named ``name``."""

    def register(handler: F) -> F:
        if not inspect.iscoroutinefunction(handler):
            raise ConfigError(
                f"agent {getattr(handler, '__qualname__', handler)!s}",
                handler,
                "an agent must be an 'async def handle(task, ctx)' function",
            )
        agent_name = name or handler.__name__
        if "/" in agent_name:
            raise ConfigError("agent name", agent_name, "leave '/' out: it separates cluster/agent")
        spec = AgentSpec(agent_name, handler, retry or RetryPolicy(), timeout)
        _REGISTRY[agent_name] = spec
        handler.__fleetops_agent__ = spec  # type: ignore[attr-defined]
        return handler  # type: ignore[return-value]

    if fn is not None:
        return register(fn)
    return register


def registered_agents() -> dict[str, AgentSpec]:
    """Every agent registered so far in this process, by name."""
    return dict(_REGISTRY)


def load_agent(entrypoint: str) -> AgentSpec:
    """Import ``module:function`` and answer the agent it registers.

    A plain ``async def`` without ``@agent`` is accepted and registered under its name.
    """
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("entrypoint", entrypoint, "write it as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            "entrypoint",
            entrypoint,
            f"module {module_name!r} does not import ({type(exc).__name__}: {exc}); "
            "check the module path and that it is importable from the fleet's directory",
        ) from exc
    target = getattr(module, attr, None)
    if target is None:
        raise ConfigError(
            "entrypoint", entrypoint, f"module {module_name!r} has no attribute {attr!r}"
        )
    spec = getattr(target, "__fleetops_agent__", None)
    if isinstance(spec, AgentSpec):
        return spec
    if inspect.iscoroutinefunction(target):
        agent(target)
        found: AgentSpec = target.__fleetops_agent__
        return found
    raise ConfigError("entrypoint", entrypoint, "point it at an 'async def handle(task, ctx)'")
