"""The relay chaos runs cut: what it relays, what a cut does, and the URLs it rewrites."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from fleetops import ConfigError
from fleetops.chaos._relay import CuttableRelay, postgres_target


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on loopback."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _round_trip(port: int, message: bytes) -> bytes:
    """What comes back through the relay; b"" if the connection was closed (or reset:
    the relay closed it before the message reached it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(message)
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def test_a_cut_closes_open_connections_refuses_new_ones_and_heals(
    echo: tuple[str, int],
) -> None:
    with CuttableRelay(echo) as relay:
        assert _round_trip(relay.port, b"before") == b"before"
        held = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        held.sendall(b"x")
        assert held.recv(1) == b"x"

        relay.cut()
        assert relay.is_cut
        assert held.recv(1) == b""  # closed under it
        held.close()
        assert _round_trip(relay.port, b"during") == b""  # accepted, then closed at once
        assert relay.dropped >= 1 and relay.refused >= 1

        relay.heal()
        assert not relay.is_cut
        assert _round_trip(relay.port, b"after") == b"after"
    # once closed, it listens no more and leaves no thread behind
    assert not relay._acceptor.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=5)


def test_a_timed_cut_ends_by_itself(echo: tuple[str, int]) -> None:
    with CuttableRelay(echo) as relay:
        relay.cut(0.0)
        assert not relay.is_cut
        assert _round_trip(relay.port, b"on") == b"on"


def test_urls_are_sent_through_the_relay_with_everything_else_kept() -> None:
    url = "postgresql://fleet:s3cret@db.example:6543/prod?options=-c%20statement_timeout%3D5s"
    assert postgres_target(url) == ("db.example", 6543)
    assert postgres_target("postgresql://db.example/prod") == ("db.example", 5432)
    assert postgres_target("postgresql://db.example/prod?hostaddr=10.0.0.7") == ("10.0.0.7", 5432)
    with CuttableRelay(("db.example", 6543)) as relay:
        # the server's name stays (TLS verifies it, a password file matches it); the
        # connection goes to the relay
        assert relay.url(url) == (
            f"postgresql://fleet:s3cret@db.example:{relay.port}/prod"
            "?options=-c%20statement_timeout%3D5s&hostaddr=127.0.0.1"
        )
        assert relay.url("postgresql://[::1]/prod?hostaddr=::1") == (
            f"postgresql://[::1]:{relay.port}/prod?hostaddr=127.0.0.1"
        )


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("sqlite:///fleet.db", "give a postgresql:// URL"),
        ("postgresql:///prod?host=/var/run/postgresql", "a Unix socket cannot be relayed"),
        ("postgresql://u@db/prod?host=/run/pg", "a Unix socket cannot be relayed"),
    ],
)
def test_a_store_the_relay_cannot_stand_before_is_refused(url: str, fix: str) -> None:
    with pytest.raises(ConfigError) as refused:
        postgres_target(url)
    assert refused.value.field == "--store" and refused.value.value == url
    assert fix in refused.value.fix
