"""A bulkhead: a cap on concurrent calls, with a bounded queue in front of it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from ._errors import BulkheadFull

T = TypeVar("T")


class Bulkhead:
    """Lets at most ``max_concurrent`` calls run at once and ``max_queue`` more wait.

    A call that finds the queue full is refused at once with :class:`BulkheadFull`, so
    a slow dependency cannot pile up unbounded work. With ``max_wait`` a queued call
    also gives up after waiting that long on the clock. Slots are handed to waiters in
    arrival order. Use :meth:`call` or ``async with bulkhead:``.
    """

    def __init__(
        self,
        name: str,
        *,
        max_concurrent: int,
        max_queue: int = 0,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ConfigError(f"{name}.max_concurrent", max_concurrent, "use 1 or more")
        if max_queue < 0:
            raise ConfigError(f"{name}.max_queue", max_queue, "use 0 or more")
        if max_wait is not None and max_wait < 0:
            raise ConfigError(f"{name}.max_wait", max_wait, "use 0 or more seconds, or None")
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_wait = max_wait
        self._clock: Clock = clock or SystemClock()
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        """Calls running now."""
        return self._active

    @property
    def queued(self) -> int:
        """Calls waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` in a slot, waiting for one if the queue has room."""
        async with self:
            return await fn()

    async def __aenter__(self) -> None:
        await self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    async def _enter(self) -> None:
        if self._active < self.max_concurrent and not self.queued:
            self._active += 1
            return
        if self.queued >= self.max_queue:
            raise BulkheadFull(
                self.name, self.max_concurrent, self.max_queue, "all slots busy and queue full"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            if self.max_wait is None:
                await waiter
            else:
                await self._wait_or_time_out(waiter, self.max_wait)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._leave()  # a slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
            raise
        # _leave handed us its slot without decrementing _active

    async def _wait_or_time_out(self, waiter: asyncio.Future[None], max_wait: float) -> None:
        timer = asyncio.ensure_future(self._clock.sleep(max_wait))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            await asyncio.wait({timer})
        if not waiter.done():
            raise BulkheadFull(
                self.name,
                self.max_concurrent,
                self.max_queue,
                f"no slot freed up within max_wait={max_wait:g} s",
            )

    def _leave(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1
