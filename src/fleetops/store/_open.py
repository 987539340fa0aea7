"""Open a store from a URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .._exceptions import ConfigError
from ._protocol import Store

DEFAULT_STORE_URL = "sqlite:///.fleetops/fleet.db"


def redact(url: str) -> str:
    """The URL without its password, for error messages, logs and reports."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if ":" in creds else url


def open_store(url: str = DEFAULT_STORE_URL, *, migrate: bool = True) -> Store:
    """Open the store named by ``url`` and bring its schema up to date.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (optionally
    ``?durability=normal``), a bare file path, or ``postgresql://user@host:port/db``.
    """
    store: Store
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        store = PostgresStore(url)
    elif url.startswith("sqlite://") or "://" not in url:
        from ._sqlite import DEFAULT_DURABILITY, SqliteStore

        path, durability = url, DEFAULT_DURABILITY
        if url.startswith("sqlite://"):
            parts = urlsplit(url)
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            options = parse_qs(parts.query)
            unknown = set(options) - {"durability"}
            if unknown:
                raise ConfigError(
                    "store", url, f"remove the unknown option(s) {', '.join(sorted(unknown))}"
                )
            durability = options.get("durability", [DEFAULT_DURABILITY])[0]
        if not path:
            raise ConfigError("store", url, "name a file, e.g. sqlite:///.fleetops/fleet.db")
        store = SqliteStore(path, durability=durability)
    else:
        raise ConfigError(
            "store",
            url,
            "use sqlite:///path/to/file.db or postgresql://user@host:5432/database",
        )
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
