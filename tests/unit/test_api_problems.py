"""The API's errors: a store that cannot answer is a 503 that says when to try again."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from fleetops import ConfigError, StoreUnavailable
from fleetops.api._problems import RETRY_AFTER_SECONDS, install


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
