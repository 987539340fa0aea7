"""The event loop a worker runs on.

``auto`` (the default) is uvloop where it is installed (it is a dependency on Linux
and macOS), else the precise asyncio loop below; ``uvloop`` and ``asyncio`` ask for
one of them.

Why uvloop: a worker under load spends its time in the event loop's machinery as
much as in its agents. uvloop runs a timer's callback and the task it wakes in the
same pass, where asyncio queues the wakeup behind everything else that is ready, so
under load every ``asyncio.sleep`` in an agent returns about one pass later. Measured
with ``fleetops bench queue`` at 12,500 tasks/s (10 ms sleeps, 2 workers), the
median overhead per task fell from 2.4–2.9 to 1.9–2.3 ms, the sleeps' lateness from
0.55 to 0.35 ms.

What uvloop costs: its clock ticks in milliseconds, so a timer may fire up to a
millisecond early (MagicStack/uvloop#739; asyncio's documentation allows early
wakeups). At low load the precise loop below is a little quicker (0.8 against
1.0 ms per task at 2,000 tasks/s). Choose ``asyncio`` where that matters.

Why uvloop keeps its millisecond timers: a subclass of uvloop's loop whose
``call_at`` kept its own heap of exact deadlines and woke on a ``timerfd`` (one
descriptor for all of them, armed for the earliest, with 0 or 0.4 ms of slack to
wake once for several) made the bench's sleeps later, not sooner: 0.64-1.12 ms at
the median against 0.42-0.54 with no slack, 0.65-0.81 against 0.39-0.51 with 0.4 ms
(3 pairs each at half the maximum, on a 2-core VM), and the median overhead higher in
4 of the 6 pairs. Under load uvloop runs most timers in a pass that something else
woke anyway; the exact deadlines add a wakeup of their own, which on a busy machine
waits for a CPU (even idle, a timerfd wakeup took 0.07-0.27 ms there).

The precise asyncio loop: ``epoll_wait`` takes its timeout in whole milliseconds, so
asyncio rounds every wait up: a timer due in 0.2 ms fires after 1 ms, and on average
every timer fires about half a millisecond late. This loop waits with ``select()``
on the epoll descriptor itself, which takes microseconds, and then collects the
events without waiting.
"""

from __future__ import annotations

import asyncio
import select
import selectors

from .._exceptions import ConfigError

#: The values of ``WorkerSettings.event_loop`` (and of a cluster's ``event_loop``).
EVENT_LOOPS = ("auto", "uvloop", "asyncio")

#: select() cannot watch descriptors from FD_SETSIZE (1024) on.
_SELECT_LIMIT = 1024


def check_event_loop(kind: str, field: str = "event_loop") -> None:
    """Refuse a ``kind`` not in :data:`EVENT_LOOPS`, naming ``field``."""
    if kind not in EVENT_LOOPS:
        raise ConfigError(field, kind, f"use one of {', '.join(EVENT_LOOPS)}")


def resolve_event_loop(kind: str, field: str = "event_loop") -> str:
    """The loop ``kind`` stands for here: 'uvloop' or 'asyncio'."""
    check_event_loop(kind, field)
    if kind == "asyncio":
        return kind
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if kind == "uvloop":
            raise ConfigError(
                field, kind, "install uvloop (pip install uvloop) or use 'auto'"
            ) from None
        return "asyncio"
    return "uvloop"


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (one of :data:`EVENT_LOOPS`)."""
    if resolve_event_loop(kind) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
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
