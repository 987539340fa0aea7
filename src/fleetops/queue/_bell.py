"""Doorbells: a worker hears of new work the moment it is committed.

Each worker listens on a UDP socket on the loopback interface and records the
address in the workers table. A client that commits new tasks sends one empty
datagram to each running worker of those tasks' clusters on the same host, and the
worker's claim loop wakes at once instead of at its next look at the store.

A doorbell is only a hint. Workers still watch the store, so a datagram that is lost,
or a client that rings no bell at all (another host, an older fleetops), costs one
poll interval, never a task. Only workers on the ringing client's own host are rung:
a loopback address means nothing anywhere else.

Why a bell and not the tasks themselves: a submitter could lease its new tasks to a
worker in its own transaction and send them in the datagram, so that the worker
starts them without a claim. A prototype of that, with ``fleetops bench queue`` at
half the maximum on a 2-core VM, was no faster. Each batch split across both workers:
the median overhead 1.13-1.40 times the bell's (3 pairs), because both workers took
both CPUs while the submitter waited for its fsync, and its acknowledgements slowed
from 1.6-1.8 to 2.5-3.0 ms (so its batches grew). Each batch to one worker in turn:
ratios 0.67-1.33, median 1.10 (7 pairs). Not worth leases granted before their
holder knows of them, and the bookkeeping of each worker's free slots they would
need.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence

LOOPBACK = "127.0.0.1"
#: New tasks per worker rung (see :meth:`BellRinger.ring`).
TASKS_PER_RING = 16
SCHEME = "udp://"


def parse_bell(address: str) -> tuple[str, int] | None:
    """``udp://127.0.0.1:40123`` → ("127.0.0.1", 40123); None if it is not one."""
    if not address.startswith(SCHEME):
        return None
    host, _, port = address[len(SCHEME) :].rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


class Doorbell:
    """The listening side: a non-blocking UDP socket on loopback, watched by the loop."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.setblocking(False)
        port = self._sock.getsockname()[1]
        self.address = f"{SCHEME}{LOOPBACK}:{port}"
        self.rings = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(self, on_ring: Callable[[], None]) -> None:
        """Call ``on_ring`` from the running event loop whenever the bell rings."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._read, on_ring)

    def _read(self, on_ring: Callable[[], None]) -> None:
        heard = 0
        while True:  # many rings since the last look wake the claimer once
            try:
                self._sock.recv(16)
            except OSError:  # BlockingIOError: read them all
                break
            heard += 1
        if heard:
            self.rings += heard
            on_ring()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


class BellRinger:
    """The ringing side: knows the doorbells by cluster and rings them."""

    #: How long a list of doorbells read from the store is used before it is read again.
    REFRESH_SECONDS = 1.0

    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._by_cluster: dict[str, list[tuple[str, int]]] = {}
        self._loaded_at: float | None = None
        self._turn: dict[str, int] = {}
        self.rung = 0

    def stale(self, now: float) -> bool:
        return self._loaded_at is None or now - self._loaded_at > self.REFRESH_SECONDS

    def load(self, rows: Sequence[tuple[str, str | None, str]], now: float) -> None:
        """Take the store's (cluster, host, bell) rows; keep this host's."""
        by_cluster: dict[str, list[tuple[str, int]]] = {}
        for cluster, host, bell in rows:
            address = parse_bell(bell)
            if address is not None and host == self.hostname:
                by_cluster.setdefault(cluster, []).append(address)
        self._by_cluster = by_cluster
        self._loaded_at = now

    def ring(self, tasks_by_cluster: Mapping[str, int]) -> int:
        """Ring doorbells for ``{cluster: tasks queued}``; answer how many were rung.

        One worker per :data:`TASKS_PER_RING` new tasks, taken in turn, not all of them:
        a handful of tasks woke every worker of the cluster, which then all raced for
        the same rows and the write lock. The workers not rung find the rest at their
        next look at the store.
        """
        rung = 0
        for cluster, tasks in tasks_by_cluster.items():
            addresses = self._by_cluster.get(cluster)
            if not addresses:
                continue
            wanted = min(len(addresses), -(-tasks // TASKS_PER_RING))
            start = self._turn.get(cluster, 0)
            self._turn[cluster] = start + wanted
            for k in range(wanted):
                try:
                    self._sock.sendto(b"", addresses[(start + k) % len(addresses)])
                except OSError:  # gone, or its buffer is full: it will poll
                    continue
                rung += 1
        self.rung += rung
        return rung

    def close(self) -> None:
        self._sock.close()
