"""Errors as ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._exceptions import Closed, FleetOpsError, StoreUnavailable, UsageError
from ..control._plane import ApplyFailed

PROBLEM = "application/problem+json"
#: What a 503 answer (the store unavailable) asks a client to wait before trying again.
RETRY_AFTER_SECONDS = 1
#: The errors a client may send the same request again for, after Retry-After (503):
#: the store unreachable, locked too long or restarting, the control plane stopping.
#: Any other error is a 500, without Retry-After: another store error may come after
#: a commit (an fsync that failed), where a submit sent again without an idempotency
#: key would be stored twice; an import check that hung would hang again.
TRANSIENT = (StoreUnavailable, Closed)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "value": err.get("input"),
                "message": err.get("msg"),
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=_jsonable({"e": errors})["e"])

    @app.exception_handler(UsageError)
    async def usage(request: Request, exc: UsageError) -> JSONResponse:
        extra: dict[str, Any] = {}
        for name in ("field", "value", "fix"):
            if hasattr(exc, name):
                extra[name] = getattr(exc, name)
        issues = getattr(exc, "issues", None)
        if issues:
            extra["errors"] = [
                {
                    "line": i.line,
                    "column": i.column,
                    "field": i.path,
                    "value": i.value,
                    "message": i.message,
                    "fix": i.fix,
                }
                for i in issues
            ]
        return problem(422, "Invalid request", str(exc), **_jsonable(extra))

    @app.exception_handler(FleetOpsError)
    async def broken(request: Request, exc: FleetOpsError) -> JSONResponse:
        if isinstance(exc, TRANSIENT):
            # the store restarting, say: worth trying again shortly (a submit with an
            # idempotency key is stored once however often it is sent)
            response = problem(503, "Service unavailable", str(exc))
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        # not a matter of waiting: a change that failed part-way (recorded, the fleet
        # on its last applied spec) is read and fixed, not sent again blindly
        title = "Apply failed" if isinstance(exc, ApplyFailed) else "Internal error"
        return problem(500, title, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as JSON can carry it: what JSON has no value for as its text (a NaN
    or an infinity a client sent, say, shown back as the bad value)."""
    import json

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, str):  # a lone surrogate a client sent: shown escaped
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(json.loads(json.dumps(data, default=str)))  # type: ignore[no-any-return]
