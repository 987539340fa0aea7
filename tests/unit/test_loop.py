"""The workers' event loop: uvloop by default, or epoll waited on with select() for
sub-millisecond timers; and the benchmark's work is never cut short by an early timer."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

import pytest
import uvloop

from fleetops import TaskInfo
from fleetops._exceptions import ConfigError
from fleetops.bench._agents import sleep as sleep_agent
from fleetops.runtime import WorkerSettings
from fleetops.runtime._loop import PreciseEpollSelector, new_event_loop, resolve_event_loop

pytestmark = pytest.mark.skipif(not hasattr(selectors, "EpollSelector"), reason="epoll is Linux's")


def test_a_ready_descriptor_ends_the_wait_and_is_reported() -> None:
    selector = PreciseEpollSelector()
    a, b = socket.socketpair()
    try:
        selector.register(a, selectors.EVENT_READ, "data")
        assert selector.select(0.0) == []
        assert selector.select(0.001) == []  # nothing ready: the timeout passes
        b.send(b"x")
        began = time.monotonic()
        events = selector.select(30.0)
        assert time.monotonic() - began < 10  # woken by the data, not by the timeout
        assert [(key.data, mask) for key, mask in events] == [("data", selectors.EVENT_READ)]
    finally:
        selector.close()
        a.close()
        b.close()


def test_each_kind_gives_its_loop_and_auto_prefers_uvloop() -> None:
    assert resolve_event_loop("auto") == "uvloop"  # a dependency where it builds
    for kind, expected in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop)):
        loop = new_event_loop(kind)
        assert isinstance(loop, expected)
        loop.close()
    loop = new_event_loop("asyncio")
    assert isinstance(loop, asyncio.SelectorEventLoop)
    assert isinstance(loop._selector, PreciseEpollSelector)  # type: ignore[attr-defined]
    loop.close()


def test_an_unknown_loop_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        new_event_loop("tokio")
    assert caught.value.field == "event_loop" and caught.value.value == "tokio"
    assert "auto, uvloop, asyncio" in caught.value.fix
    with pytest.raises(ConfigError, match="event_loop"):
        WorkerSettings(event_loop="tokio")


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_the_loop_runs_timers_sockets_and_threads(kind: str) -> None:
    loop = new_event_loop(kind)

    async def main() -> tuple[str, int, bytes]:
        order: list[str] = []

        async def later(delay: float, name: str) -> None:
            await asyncio.sleep(delay)
            order.append(name)

        # apart by more than a scheduler's time slice: a process descheduled between
        # arming two timers (a loaded CI machine) must not reorder them
        await asyncio.gather(later(0.03, "c"), later(0.0002, "a"), later(0.015, "b"))
        from_thread = await asyncio.get_running_loop().run_in_executor(None, lambda: 7)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"ping\n")
        echoed = await reader.readline()
        writer.close()
        return "".join(order), from_thread, echoed

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    try:
        ran = loop.run_until_complete(main())
    finally:
        # a listening server left open would keep uvloop's close() waiting for ever:
        # a failure must fail the test, not hang it
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert ran == ("abc", 7, b"ping\n")


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_the_benchmark_sleep_is_never_shorter_than_asked(kind: str) -> None:
    """uvloop's millisecond clock fires a timer up to a millisecond early; the
    benchmark's work must not shrink with it (it would shrink the overhead measured)."""
    seconds = 0.004

    async def main() -> list[float]:
        task = TaskInfo(1, "c", "sleep", {"seconds": seconds}, 1, 1, 0, None, None, {})
        runs = []
        for i in range(200):  # starting at every phase of the loop's millisecond tick
            runs.append(asyncio.create_task(sleep_agent(task, None)))  # type: ignore[arg-type]
            await asyncio.sleep(0.00013 * (i % 7))
        return [float(r["slept"]) for r in await asyncio.gather(*runs)]

    loop = new_event_loop(kind)
    try:
        slept = loop.run_until_complete(main())
    finally:
        loop.close()
    assert min(slept) >= seconds, f"slept {min(slept) * 1000:.3f} ms, asked {seconds * 1000} ms"
