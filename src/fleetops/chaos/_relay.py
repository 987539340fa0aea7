"""A TCP relay on loopback that can be cut, as a network outage, a database failover
or a server restart would cut it: every connection through it is closed at once,
and new ones are closed as soon as they are accepted, until the cut ends."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from .._exceptions import ConfigError
from ..store._open import POSTGRES_URL_FIX, check_postgres_url, redact

#: PostgreSQL's port when a URL names none
POSTGRES_PORT = 5432


def postgres_target(url: str, field: str = "--store") -> tuple[str, int]:
    """The TCP host and port of a ``postgresql://`` URL, or a ConfigError naming
    ``field`` for a URL that is not one or reaches its server some other way."""
    shown = redact(url)
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            field,
            shown,
            "give a postgresql:// URL: the experiment cuts the network between the fleet "
            "and its database, and a SQLite store is a file, with no connection to cut",
        )
    check_postgres_url(url, field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # libpq took it, but it is no URL Python can take apart
        raise ConfigError(field, shown, f"{exc}; {POSTGRES_URL_FIX}") from None
    if not parts.hostname or "host=" in parts.query:
        raise ConfigError(
            field,
            shown,
            "name the database server's TCP host in the URL (postgresql://user@host:port/db): "
            "a Unix socket cannot be relayed",
        )
    # where libpq would connect: hostaddr, when given, rather than the host's name
    addrs = [p.partition("=")[2] for p in parts.query.split("&") if p.startswith("hostaddr=")]
    return (addrs[-1] if addrs else parts.hostname), port or POSTGRES_PORT


class CuttableRelay:
    """Relays ``127.0.0.1:<port>`` to ``target``; use as a context manager.

    Two threads pump each connection, one a direction: a relay for tests and chaos
    runs, not for a production path.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut_until = 0.0
        #: connections closed by a cut, and connections refused during one
        self.dropped = 0
        self.refused = 0
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    def __enter__(self) -> CuttableRelay:
        self._acceptor.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        # close() alone does not wake an accept() blocked in another thread (Linux):
        # the thread would wait on, and the kernel keep the port listening
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=5)
        self._listener.close()
        self._drop_all()

    def url(self, url: str) -> str:
        """``url`` (a postgresql:// URL to ``target``) sent through this relay: the
        connection goes to the relay's port on loopback (``hostaddr``), and the server's
        own host name stays in the URL, for TLS to verify and a password file to match."""
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
        kept = [p for p in parts.query.split("&") if p and not p.startswith("hostaddr=")]
        return urlunsplit(
            parts._replace(
                netloc=f"{userinfo}{at}{host}:{self.port}",
                query="&".join([*kept, "hostaddr=127.0.0.1"]),
            )
        )

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return time.monotonic() < self._cut_until

    def cut(self, seconds: float = float("inf")) -> None:
        """Close every connection now, and each new one for ``seconds`` (until
        :meth:`heal` if not given)."""
        with self._lock:
            self._cut_until = time.monotonic() + seconds
        self._drop_all()

    def heal(self) -> None:
        """End the cut: new connections go through again."""
        with self._lock:
            self._cut_until = 0.0

    def _drop_all(self) -> None:
        with self._lock:
            doomed, self._open = self._open, set()
            self.dropped += len(doomed) // 2
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = time.monotonic() < self._cut_until
            if refused:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                late = time.monotonic() < self._cut_until  # a cut began meanwhile
                if not late:
                    self._open |= {client, server}
            if late:
                self.refused += 1
                client.close()
                server.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open -= {source, sink}
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
