"""The live status table of `fleetops up` never blocks the event loop, even when the
terminal stops reading (Ctrl-S, a stalled ssh session)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from rich.console import Console
from rich.table import Table

from fleetops.cli._fleet import LiveTable


def _table(n: int) -> Table:
    table = Table("cluster", "queued")
    table.add_row("intake", str(n))
    return table


def test_a_terminal_that_stops_reading_does_not_stop_the_event_loop() -> None:
    read_end, write_end = os.pipe()  # a terminal nobody reads, already full: writes block
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    terminal = os.fdopen(write_end, "w", buffering=1)
    console = Console(file=terminal, force_terminal=True, width=120)

    views: list[LiveTable] = []

    async def main() -> tuple[int, int, float]:
        view = LiveTable(console, _table(0))
        views.append(view)
        ticks = 0
        began = time.monotonic()
        while time.monotonic() - began < 1.5:  # a status update every 10 ms
            view.show(_table(ticks))
            await asyncio.sleep(0.01)
            ticks += 1
        closing = time.monotonic()
        await view.close(wait=0.2)  # the terminal is still stuck
        return ticks, view.dropped, time.monotonic() - closing

    draining = threading.Event()

    def drain() -> None:  # the terminal reads again only after the test
        draining.wait()
        with os.fdopen(read_end, "rb") as reader:
            while reader.read(65536):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        ticks, dropped, closing = asyncio.run(main())
    finally:
        draining.set()  # the terminal reads again: the stuck writes finish, the view stops
        deadline = time.monotonic() + 5
        while views and views[0].is_started and time.monotonic() < deadline:
            time.sleep(0.01)
        terminal.close()
        reader.join(5)
    assert ticks >= 50, "the event loop was blocked by the terminal"
    assert dropped > 0  # the terminal was stuck: later tables were dropped, not queued
    assert closing < 1.0
