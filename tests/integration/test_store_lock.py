"""One control plane per store: the lock a control plane takes on its store, on both
stores, held by a real second process, and what becomes of it when that process is
killed or its connection cut."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

from conftest import POSTGRES_URL
from fleetops.control._state import FleetRunning
from fleetops.control._store_lock import StoreLock

HOLDER = """
import os, sys, time
from fleetops.control._store_lock import StoreLock
lock = StoreLock(sys.argv[1])
lock.acquire({"pid": os.getpid(), "spec": "first/fleet.yaml"})
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_control_plane_is_refused_naming_the_first_and_kill_9_frees_the_lock(
    store_url: str,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, store_url], stdout=subprocess.PIPE, text=True
    ) as first:
        _second_refused_until_the_first_is_killed(first, store_url)


def _second_refused_until_the_first_is_killed(first: subprocess.Popen[str], store_url: str) -> None:
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "held"
        second = StoreLock(store_url)
        with pytest.raises(FleetRunning, match=rf"another control plane .*\bpid {first.pid}\b"):
            second.acquire({"pid": 0})
        assert not second.held
        first.kill()  # no clean-up runs: the lock must go with the process
        first.wait(10)
        deadline = time.monotonic() + 10  # PostgreSQL ends the session once it sees EOF
        while True:
            try:
                second.acquire({"pid": 0})
                break
            except FleetRunning:
                assert time.monotonic() < deadline, "the killed holder's lock stayed"
                time.sleep(0.1)
        assert second.held
        with pytest.raises(FleetRunning):
            StoreLock(store_url).acquire({"pid": 0})
        second.release()
        third = StoreLock(store_url)
        third.acquire({"pid": 0})  # released: free for the next one
        third.release()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


@pytest.mark.postgres
def test_fleets_in_two_schemas_of_one_database_each_hold_their_own_lock(
    postgres_url: str,
) -> None:
    ours = StoreLock(postgres_url)
    ours.acquire({})
    try:
        other = StoreLock(POSTGRES_URL)  # the database's default schema
        other.acquire({})
        other.release()
    finally:
        ours.release()


@pytest.mark.postgres
def test_a_lock_whose_connection_dropped_is_taken_again_unless_another_took_it(
    postgres_url: str,
) -> None:
    def cut(lock: StoreLock) -> None:
        conn = lock._conn
        assert conn is not None
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    def taken_in(lock: StoreLock, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                lock.acquire({})
                return
            except FleetRunning:
                assert time.monotonic() < deadline, "the lock stayed taken"
                time.sleep(0.1)

    lock = StoreLock(postgres_url)
    lock.acquire({})
    try:
        cut(lock)
        assert lock.keep()  # a new session, holding the lock again
        with pytest.raises(FleetRunning):
            StoreLock(postgres_url).acquire({})
        cut(lock)
        intruder = StoreLock(postgres_url)
        taken_in(intruder, 5)  # free once the first one's session has ended
        try:
            assert not lock.keep()
        finally:
            intruder.release()
        assert lock.keep()
    finally:
        lock.release()
