"""An event loop whose timers fire on time, not on the next millisecond.

``epoll_wait`` takes its timeout in whole milliseconds, so asyncio rounds every
wait up: a timer due in 0.2 ms fires after 1 ms, and on average every timer fires
about half a millisecond late. A worker runs thousands of short timers a second (its
agents' sleeps and timeouts, retries of a busy store), so it waits with ``select()``
on the epoll descriptor itself, which takes microseconds, and then collects the
events without waiting.
"""

from __future__ import annotations

import asyncio
import select
import selectors

#: select() cannot watch descriptors from FD_SETSIZE (1024) on.
_SELECT_LIMIT = 1024


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop with precise timers where epoll exists (Linux); the
    default event loop elsewhere."""
    if hasattr(selectors, "EpollSelector"):
        return asyncio.SelectorEventLoop(PreciseEpollSelector())
    return asyncio.new_event_loop()


class PreciseEpollSelector(selectors.EpollSelector):
    """An epoll selector that sleeps for exactly the timeout it is given."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0 and self.fileno() < _SELECT_LIMIT:
            # readable when any registered descriptor is ready; wakes on time otherwise
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)
