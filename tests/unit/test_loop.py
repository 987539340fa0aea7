"""The workers' event loop: epoll, waited on with select() for sub-millisecond timers."""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

import pytest

from fleetops.runtime._loop import PreciseEpollSelector, new_event_loop

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


def test_the_loop_runs_timers_sockets_and_threads() -> None:
    loop = new_event_loop()

    async def main() -> tuple[str, int, bytes]:
        order: list[str] = []

        async def later(delay: float, name: str) -> None:
            await asyncio.sleep(delay)
            order.append(name)

        await asyncio.gather(later(0.003, "c"), later(0.0002, "a"), later(0.001, "b"))
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

    try:
        server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
        assert loop.run_until_complete(main()) == ("abc", 7, b"ping\n")
        server.close()
    finally:
        loop.close()
