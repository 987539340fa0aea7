"""fdatasync that blocks neither the event loop nor a thread: Linux's native AIO.

``io_submit`` with ``IOCB_CMD_FDSYNC`` (Linux 4.18 and later) hands the fsync to the
kernel, which runs it on a worker of its own and, when it is done, counts it on an
eventfd the event loop watches. Submitting takes a few microseconds; the loop goes
on with other work while the disk flushes, and no Python thread has to wake up and
take the GIL to run the fsync and hand its answer back.

:meth:`AsyncFsync.open` answers None where that is not possible (another system,
another architecture, a kernel or a sandbox that refuses ``io_setup``): the caller
then fsyncs as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import sys

#: the four system calls, by architecture (Linux's unistd tables)
_SYSCALLS = {
    "x86_64": {"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209},
    "aarch64": {"io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_getevents": 4},
}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
#: fsyncs in flight at once in one context (more wait in the caller's queue)
RING_SIZE = 64


class Refused(Exception):
    """The kernel would not start the fdatasync (``errno``: why); nothing was started,
    so the caller fsyncs some other way."""

    def __init__(self, code: int) -> None:
        super().__init__(f"io_submit of an fdatasync: {os.strerror(code)}")
        self.errno = code


class _IOCB(ctypes.Structure):
    """``struct iocb`` of linux/aio_abi.h (little-endian layout)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    """``struct io_event``."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class AsyncFsync:
    """fdatasync on the kernel's side, answered on an event loop.

    ``fdatasync(fd)`` answers a future that is done once the kernel's fdatasync of
    ``fd``, begun after the call, has ended: with None, or with the ``OSError`` the
    disk gave. Use on the loop it was opened with only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: ctypes.PyDLL, ctx: int) -> None:
        self._loop = loop
        self._libc = libc
        self._nr = _SYSCALLS[platform.machine()]
        self._ctx = ctypes.c_ulong(ctx)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._next = 0
        #: in flight: request number → (its iocb, kept alive for the kernel; its future)
        self._inflight: dict[int, tuple[_IOCB, asyncio.Future[None]]] = {}
        self._events = (_Event * RING_SIZE)()
        self._no_wait = _Timespec(0, 0)
        self._closed = False
        loop.add_reader(self._efd, self._reap)

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop) -> AsyncFsync | None:
        """An AIO context on ``loop``, or None where the system offers none."""
        if sys.platform != "linux" or platform.machine() not in _SYSCALLS:
            return None
        try:
            # PyDLL: these calls return in microseconds, and keep the GIL meanwhile
            # (through CDLL a call lets it go, and another thread may then keep it
            # until its switch interval ends)
            libc = ctypes.PyDLL(None, use_errno=True)
        except OSError:
            return None
        ctx = ctypes.c_ulong(0)
        if libc.syscall(_SYSCALLS[platform.machine()]["io_setup"], RING_SIZE, ctypes.byref(ctx)):
            return None  # ENOSYS, EAGAIN (aio-max-nr reached), EPERM (a sandbox)
        return cls(loop, libc, ctx.value)

    def inflight(self) -> list[asyncio.Future[None]]:
        """The futures of the fdatasyncs in flight."""
        return [future for _, future in self._inflight.values()]

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        """Start an fdatasync of ``fd``; raises :class:`Refused` if the kernel will
        not (EAGAIN: :data:`RING_SIZE` already in flight; EINVAL: the file system
        has no asynchronous fsync)."""
        if self._closed:
            raise Refused(errno.EBADF)
        number = self._next
        self._next += 1
        iocb = _IOCB(
            aio_data=number,
            aio_lio_opcode=_IOCB_CMD_FDSYNC,
            aio_fildes=fd,
            aio_flags=_IOCB_FLAG_RESFD,
            aio_resfd=self._efd,
        )
        batch = (ctypes.POINTER(_IOCB) * 1)(ctypes.pointer(iocb))
        if self._libc.syscall(self._nr["io_submit"], self._ctx, 1, batch) != 1:
            raise Refused(ctypes.get_errno())
        future: asyncio.Future[None] = self._loop.create_future()
        self._inflight[number] = (iocb, future)
        return future

    def _reap(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        while self._inflight:
            got = self._libc.syscall(
                self._nr["io_getevents"],
                self._ctx,
                1,
                RING_SIZE,
                self._events,
                ctypes.byref(self._no_wait),
            )
            if got <= 0:
                return
            for event in self._events[:got]:
                _, future = self._inflight.pop(event.data)
                if future.done():
                    continue
                if event.res < 0:
                    code = -event.res
                    future.set_exception(OSError(code, os.strerror(code)))
                else:
                    future.set_result(None)

    def close(self) -> None:
        """Stop watching; the kernel finishes what is in flight first (``io_destroy``
        waits for it). Futures still waiting fail with OSError(EBADF)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._efd)
        self._libc.syscall(self._nr["io_destroy"], self._ctx)
        os.close(self._efd)
        for _, future in self._inflight.values():
            if not future.done():
                future.set_exception(OSError(errno.EBADF, "the AIO context closed"))
        self._inflight.clear()
