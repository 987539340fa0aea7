"""Talking to a running control plane over its HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from .._exceptions import ConfigError
from ..control import read_running
from ._common import EXIT_FAILURE, EXIT_USAGE, fail

DEFAULT_API = "http://127.0.0.1:8470"


def api_url(api: str | None, spec: Path | None) -> str:
    """The API to talk to: ``--api``, else the fleet running next to the spec (or here)."""
    if api:
        return _checked_api(api).rstrip("/")
    base = spec.resolve().parent if spec is not None else Path.cwd()
    running = read_running(base / ".fleetops")
    return running.api_url if running else DEFAULT_API


def _checked_api(api: str) -> str:
    """``--api`` as given, if it is an http(s) URL with a host; else a usage error."""
    fix = f"give the control plane's http(s) URL, e.g. {DEFAULT_API}"
    try:
        url = httpx.URL(api)
    except httpx.InvalidURL as exc:
        fail(str(ConfigError("--api", api, f"{exc}; {fix}")), EXIT_USAGE)
    if url.scheme not in ("http", "https") or not url.host:
        fail(str(ConfigError("--api", api, fix)), EXIT_USAGE)
    return api


def call(method: str, url: str, path: str, **kwargs: Any) -> Any:
    try:
        with httpx.Client(timeout=120) as http:
            response = http.request(method, f"{url}{path}", **kwargs)
    except httpx.ConnectError:
        fail(
            f"no fleetops control plane answers at {url}: start one with 'fleetops up FILE'",
            EXIT_FAILURE,
        )
    except httpx.HTTPError as exc:
        fail(f"the control plane at {url} did not answer: {exc}", EXIT_FAILURE)
    except (httpx.InvalidURL, UnicodeEncodeError) as exc:  # what was asked cannot be sent
        fail(
            f"the request cannot be sent ({exc}): an argument is too long, or holds bytes "
            "that are not UTF-8 text; check the arguments",
            EXIT_USAGE,
        )
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or problem
        except ValueError:
            detail = response.text
        fail(str(detail), EXIT_USAGE if response.status_code < 500 else EXIT_FAILURE)
    return response.json()
