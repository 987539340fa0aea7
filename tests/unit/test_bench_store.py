"""A PostgreSQL bench runs in a schema of its own: its URL sets search_path to it."""

from __future__ import annotations

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
