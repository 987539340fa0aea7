"""``python -m fleetops.runtime CONFIG_JSON``: run one worker process.

The supervisor starts workers this way; the JSON names the store, the worker's id
and cluster, its agents' entrypoints and its settings. SIGTERM or SIGINT drains.

``python -m fleetops.runtime --spare [STORE_KIND [SUPERVISOR_PID]]`` starts a warm
spare: it imports what a worker needs (a third of a second and more of a worker's
start, longer on a busy machine), reads a line of JSON on stdin and loads the agents
it names (``{"python_path": [...], "agents": ["module:function", ...],
"event_loop": "auto"}``: one cluster's own code, whose imports can take seconds, in
the event loop its worker will run), writes ``SPARE_READY`` on stdout, and then
waits for another line on stdin, a worker's config, to become that worker at once. The
supervisor keeps one ready to replace a worker of the cluster that died (see
fleetops.runtime._supervisor). A spare whose stdin closes before that line (its
supervisor stopped) exits with 0 without starting anything; on Linux, the kernel
ends one whose supervisor dies before it is taken, even in the middle of an import.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..providers import Gateway
from ..queue import QueueClient
from ..telemetry import configure_json_logging, get_logger
from ..telemetry._logs import StderrRotator, stderr_to
from ..telemetry._tracing import otlp_endpoint_from_env
from ._agent import AgentSpec, load_agent
from ._gc import tune_for_serving
from ._loop import new_event_loop
from ._worker import (
    MAX_TRACEBACK_CHARS,
    RECYCLE_EXIT_CODE,
    SPARE_READY,
    Worker,
    WorkerSettings,
    cut_text,
)

log = get_logger("fleetops.worker")


async def _main(config: dict[str, object]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _add_python_path(config.get("python_path", []))  # type: ignore[arg-type]
    specs = [load_agent(str(e)) for e in config["agents"]]  # type: ignore[attr-defined]
    settings = WorkerSettings(**config.get("settings", {}))  # type: ignore[arg-type]
    cluster = str(config["cluster"])
    gateway, routes, named, pricing = _from_spec(config.get("spec"), cluster)  # type: ignore[arg-type]
    agents = {s.name: s for s in specs} | named
    # Everything loaded by now (modules, agents, the spec) lives as long as the process:
    # keep it out of the collector's passes, which would otherwise walk all of it and
    # stall the event loop; and pass over the young generation less often (see _gc).
    tune_for_serving()
    # hot store calls run on the event loop (SQLite at durability normal; see QueueClient)
    async with QueueClient(
        str(config["store"]), inline=True, outcome_sync_delay=settings.outcome_sync_delay
    ) as client:
        worker = Worker(
            client,
            worker_id=str(config["worker_id"]),
            cluster=str(config["cluster"]),
            agents=agents,
            settings=settings,
            parent_pid=config.get("parent_pid"),  # type: ignore[arg-type]
            gateway=gateway,
            routes=routes,
            otlp_endpoint=otlp_endpoint_from_env(),
            pricing=pricing,
        )
        rotating = None
        if config.get("log_file"):
            rotator = StderrRotator(
                Path(str(config["log_file"])), int(str(config["log_max_bytes"]))
            )
            every = float(str(config["log_check_seconds"]))
            rotating = asyncio.create_task(_rotate_logs(rotator, every), name="log-rotation")
        try:
            await worker.run(stop)
        finally:
            if rotating is not None:
                rotating.cancel()
            if gateway is not None:
                await gateway.aclose()
    return 3 if worker.dead else RECYCLE_EXIT_CODE if worker.recycled else 0


def _add_python_path(paths: list[str]) -> None:
    """Put a cluster's ``python_path`` in front of ``sys.path``, as a worker runs with."""
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, str(path))


async def _rotate_logs(rotator: StderrRotator, every: float) -> None:
    """Keep the worker's log file under its size for as long as the worker runs."""
    while True:
        await asyncio.sleep(every)
        try:
            rotator.check()
        except OSError as exc:  # a full disk, say: the logs go on into the old file
            log.warning("log.rotate_failed", path=str(rotator.path), error=str(exc))


def _from_spec(
    spec_path: str | None, cluster: str
) -> tuple[Gateway | None, list[str] | None, dict[str, AgentSpec], dict[str, tuple[float, float]]]:
    """The gateway, routes and agents of ``cluster`` as the fleet spec at ``spec_path``
    sets them: agents under the spec's names, with the spec's timeout and retry policy.

    The cluster's tokens-per-minute quota is shared evenly among its workers.
    """
    if not spec_path:
        return None, None, {}, {}
    from ..providers import Gateway
    from ..spec import load_spec

    spec = load_spec(spec_path)
    cluster_spec = spec.clusters[cluster]
    named: dict[str, AgentSpec] = {}
    for definition in cluster_spec.agents:
        loaded = load_agent(definition.entrypoint)
        named[definition.name] = replace(
            loaded,
            name=definition.name,
            timeout=definition.timeout if definition.timeout is not None else loaded.timeout,
            retry=definition.retry.policy() if definition.retry is not None else loaded.retry,
        )
    quotas = spec.tokens_per_minute()
    share = {}
    if cluster in quotas:
        share = {cluster: max(1, quotas[cluster] // max(1, cluster_spec.replicas))}
    chain = tuple(getattr(spec.provider_for(cluster), "fallbacks", ()))
    gateway = Gateway(
        spec.build_providers(names={cluster_spec.provider, *chain}),
        default=cluster_spec.provider,
        fallbacks={cluster_spec.provider: list(chain)} if chain else None,
        tokens_per_minute=share,
    )
    pricing = {
        name: (provider.pricing.prompt_per_1k, provider.pricing.completion_per_1k)
        for name, provider in spec.provider_specs().items()
    }
    return gateway, list(cluster_spec.routes), named, pricing


#: The argument that starts a warm spare instead of a worker.
SPARE = "--spare"

#: What a worker imports once it runs, beyond this module's own imports: a spare
#: imports them while it waits (the PostgreSQL driver only for a PostgreSQL store).
_WORKER_IMPORTS = ("uvloop", "concurrent.futures.thread", "fleetops.spec")
_POSTGRES_IMPORTS = ("psycopg", "fleetops.store._postgres")


def _serve_as_spare(store_kind: str = "", parent: str = "") -> None:
    """Import ahead what a worker needs and load the agents the first line on stdin
    names (in the event loop it names, as a worker loads them in its own), say so on
    stdout, then wait for a worker's config (the next line) and run as that worker.
    Return if stdin closes first, or if ``parent`` (the supervisor's pid) is gone.
    The worker's log file, if it has one, takes over stderr, which until then went
    to the spare's own."""
    # an import that hangs would never see stdin close: the kernel ends this process
    # when its supervisor dies, until it becomes a worker (which notices by itself)
    _die_with_parent(signal.SIGKILL)
    if parent and os.getppid() != int(parent):  # it died before the kernel was told
        return
    names = _WORKER_IMPORTS + (_POSTGRES_IMPORTS if store_kind == "postgresql" else ())
    for name in names:
        with contextlib.suppress(ImportError):  # uvloop is optional; psycopg, an extra
            importlib.import_module(name)
    # as a worker has it when it loads its agents (the level is the config's, later)
    configure_json_logging(logging.INFO)
    preload = sys.stdin.buffer.readline()
    if not preload.strip():
        return
    wanted: dict[str, Any] = json.loads(preload)
    kind = str(wanted.get("event_loop", "auto"))
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        with _stdout_to_stderr():  # what agents print at import: not in the ready word
            runner.run(_preload(wanted))
        os.write(1, SPARE_READY)
        line = sys.stdin.buffer.readline()
        if not line.strip():
            return
        _die_with_parent(0)
        config: dict[str, Any] = json.loads(line)
        if config.get("log_file"):
            stderr_to(Path(str(config["log_file"])))
        # configured before its agents loaded, as a cold worker is: only the level now
        logging.getLogger("fleetops").setLevel(_log_level(config))
        _run_worker(runner, config)


async def _preload(wanted: dict[str, Any]) -> None:
    """Put ``wanted["python_path"]`` on ``sys.path`` and load the agents of
    ``wanted["agents"]``, as a worker does when it starts (in its running event
    loop, where an agent module may look for one): once taken, the worker
    finds their modules imported. An agent that does not load is said on stderr and
    left to the worker, which then fails to start as a cold one would, with the same
    error in its own log."""
    _add_python_path(list(wanted.get("python_path", [])))
    for entrypoint in wanted.get("agents", []):
        try:
            load_agent(str(entrypoint))
        except (Exception, SystemExit) as exc:  # the module's own code: the worker says so
            log.warning(
                "spare.agent_not_loaded",
                entrypoint=str(entrypoint),
                error=f"{type(exc).__name__}: {exc}",
                detail="left to the worker this spare becomes, which loads it again",
            )


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 (the pipe the supervisor reads) at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_worker(runner: asyncio.Runner, config: dict[str, Any]) -> None:
    """Run as the worker of ``config`` and exit with its exit code. An exception that
    escapes it (an agent module that does not import, a store that refuses the
    worker) is one JSON record in the worker's log, ``worker.crashed`` with its
    traceback, like every other record there, and the process exits 1: a traceback
    printed as plain lines is left out of ``fleetops logs`` and its filters. So is a
    ``sys.exit`` that escapes it (an agent module's, at import: the worker's handlers
    catch their own), which keeps its exit code unless that is
    :data:`RECYCLE_EXIT_CODE` (then 1: a failure, restarted with back-off)."""
    try:
        code = runner.run(_main(config))
    except SystemExit as stop:
        _crashed(config, stop, f"SystemExit: {stop.code}")
        # its code as Python would have exited with it, its message in the record; but
        # never the code a worker leaves with to be replaced at once (no failure)
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        sys.exit(1 if code == RECYCLE_EXIT_CODE else code)
    except Exception as exc:
        _crashed(config, exc, f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    sys.exit(code)


def _crashed(config: dict[str, Any], exc: BaseException, error: str) -> None:
    log.log(
        logging.CRITICAL,
        "worker.crashed",
        worker=config.get("worker_id"),
        cluster=config.get("cluster"),
        error=cut_text(error, MAX_TRACEBACK_CHARS),
        traceback=cut_text(
            "".join(traceback.format_exception(exc)), MAX_TRACEBACK_CHARS, tail=True
        ),
    )


def _log_level(config: dict[str, Any]) -> int:
    level: int = getattr(logging, str(config.get("log_level", "INFO")).upper())
    return level


def _die_with_parent(sig: int) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies (0:
    no more). Elsewhere nothing: a spare there notices its stdin close."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)


def main() -> None:
    # The worker keeps the kernel's default time slice. Asking for a short one
    # (sched_setattr's sched_runtime, 0.1 ms against 1.4 ms; EEVDF lets a woken task
    # with a short slice run sooner) did not lower the bench's median overhead on a
    # 2-core VM at a fixed 15,000 tasks/s: ratio 1.03 over 6 pairs (1 lower) for the
    # workers, 1.04 over 4 (none lower) for the bench's own process alone.
    if sys.argv[1:2] == [SPARE]:
        _serve_as_spare(*sys.argv[2:4])
        return
    config: dict[str, Any] = json.loads(sys.argv[1])
    configure_json_logging(_log_level(config))
    kind = str(config.get("settings", {}).get("event_loop", "auto"))
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        _run_worker(runner, config)


if __name__ == "__main__":
    main()
