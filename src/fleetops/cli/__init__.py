"""The ``fleetops`` command line (typer + rich)."""

from ._app import app as app


def main() -> None:
    app()
