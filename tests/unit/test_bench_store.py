"""A PostgreSQL bench runs in a schema of its own: its URL sets search_path to it."""

from __future__ import annotations

import asyncio

import pytest
from psycopg.conninfo import conninfo_to_dict

from fleetops.bench._queue import in_schema


def test_the_schema_is_set_after_the_options_the_url_gives() -> None:
    url = in_schema(
        "postgresql://u:p%40ss@db.example:5432/app?sslmode=require"
        "&options=-c%20statement_timeout%3D5min%20-c%20search_path%3Dapp",
        "fleetops_bench_1",
    )
    given = conninfo_to_dict(url)
    # the last search_path is the one the server keeps
    assert given["options"] == "-c statement_timeout=5min -c search_path=app " + (
        "-c search_path=fleetops_bench_1"
    )
    assert given["sslmode"] == "require" and given["password"] == "p@ss"
    assert given["host"] == "db.example" and given["dbname"] == "app"


def test_a_url_without_options_gets_them() -> None:
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "postgres://h/db?"):
        given = conninfo_to_dict(in_schema(url, "fleetops_bench_2"))
        assert given["options"] == "-c search_path=fleetops_bench_2"


def test_a_unix_socket_url_keeps_its_empty_host() -> None:
    """postgresql:///db reaches the server by its socket; rebuilt as postgresql:/db
    libpq could not read it at all."""
    for url, dbname in (
        ("postgresql:///test", "test"),
        ("postgres:///db?host=/var/run/postgresql", "db"),
    ):
        rewritten = in_schema(url, "fleetops_bench_3")
        assert rewritten.startswith(url.partition("?")[0] + "?"), rewritten
        given = conninfo_to_dict(rewritten)
        assert given["dbname"] == dbname
        assert given["options"] == "-c search_path=fleetops_bench_3"


def test_the_environment_s_options_are_kept_where_the_url_gives_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq reads PGOPTIONS only when the URL has no options, which it now has."""
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5min")
    given = conninfo_to_dict(in_schema("postgresql://h/db", "fleetops_bench_4"))
    assert given["options"] == "-c statement_timeout=5min -c search_path=fleetops_bench_4"


def test_an_overhead_phase_of_more_than_a_million_tasks_is_refused_before_anything() -> None:
    from fleetops import ConfigError
    from fleetops.bench._queue import MAX_OVERHEAD_TASKS, QueueBenchConfig, bench_queue

    config = QueueBenchConfig(overhead_rate=300_000, overhead_seconds=5)
    assert 300_000 * 5 > MAX_OVERHEAD_TASKS
    with pytest.raises(ConfigError) as refused:
        asyncio.run(bench_queue(config))
    assert refused.value.field == "--overhead-seconds"
    assert "--overhead-rate 300000" in refused.value.fix and "1,000,000" in refused.value.fix
