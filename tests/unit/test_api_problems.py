"""The API's errors: a store that cannot answer is a 503 that says when to try again;
a failure that waiting does not mend is a 500 that does not."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from fleetops import Closed, ConfigError, StoreError, StoreUnavailable
from fleetops.api._problems import RETRY_AFTER_SECONDS, install
from fleetops.control._plane import ApplyFailed


def test_store_trouble_is_503_with_retry_after_and_bad_input_is_422_without() -> None:
    app = FastAPI()
    install(app)

    @app.get("/store")
    async def store() -> None:
        raise StoreUnavailable("PostgreSQL store: terminating connection")

    @app.get("/input")
    async def bad_input() -> None:
        raise ConfigError("priority", "high", "use an integer")

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            return await client.get("/store"), await client.get("/input")

    unavailable, refused = asyncio.run(main())
    assert unavailable.status_code == 503
    assert unavailable.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert unavailable.headers["Content-Type"] == "application/problem+json"
    assert "terminating connection" in unavailable.json()["detail"]
    assert refused.status_code == 422 and "Retry-After" not in refused.headers
    assert refused.json()["field"] == "priority"


def test_a_failed_apply_or_a_store_error_waiting_does_not_mend_is_a_500() -> None:
    """A change that failed part-way is recorded and the fleet keeps its last applied
    spec: a client is told to read the error, not to send the same apply again in a
    second (which a 503 with Retry-After asked for)."""
    app = FastAPI()
    install(app)

    @app.post("/apply")
    async def apply() -> None:
        raise ApplyFailed("change 7 failed: a rolled-out worker did not heartbeat in time")

    @app.get("/closing")
    async def closing() -> None:
        raise Closed("the queue client is closed")

    @app.post("/synced")
    async def synced() -> None:  # committed, then its fsync failed: sent again, stored twice
        raise StoreError("cannot sync the WAL: [Errno 5] Input/output error")

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            return [
                await client.post("/apply"),
                await client.get("/closing"),
                await client.post("/synced"),
            ]

    failed, stopping, unsynced = asyncio.run(main())
    assert failed.status_code == 500 and "Retry-After" not in failed.headers
    assert failed.json()["title"] == "Apply failed"
    assert "change 7 failed" in failed.json()["detail"]
    assert stopping.status_code == 503 and stopping.headers["Retry-After"] == "1"
    assert unsynced.status_code == 500 and "Retry-After" not in unsynced.headers
    assert unsynced.json()["title"] == "Internal error"
