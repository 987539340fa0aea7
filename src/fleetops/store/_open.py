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


def _password(url: str) -> str:
    """The password written in ``url`` (percent-encoded, as written), or ''."""
    if "@" not in url or "://" not in url:
        return ""
    creds = url.split("://", 1)[1].rsplit("@", 1)[0]
    return creds.split(":", 1)[1] if ":" in creds else ""


#: How to write a PostgreSQL URL that libpq can read.
POSTGRES_URL_FIX = (
    "write postgresql://user:password@host:5432/database, with only libpq's options "
    "after '?' (e.g. sslmode=require) and '%' only before two hex digits (%40 for '@')"
)


def postgres_url_problem(url: str) -> str | None:
    """Why libpq cannot read the PostgreSQL ``url`` (an unknown option, a bad
    percent-escape, an unclosed ``[``), its password hidden; None if it can."""
    import psycopg  # here, not at the top: importing it takes 66 ms that SQLite needs not
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or ["not a connection URL"])[0]
        reason = reason.replace(url, redact(url))
        password = _password(url)
        return reason.replace(password, "***") if password else reason
    return None


def check_postgres_url(url: str, field: str = "store") -> None:
    """Raise a ConfigError naming ``field`` if libpq cannot read the PostgreSQL ``url``."""
    problem = postgres_url_problem(url)
    if problem is not None:
        raise ConfigError(field, redact(url), f"{problem}; {POSTGRES_URL_FIX}")


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
