"""The ``fleetops`` command."""

from __future__ import annotations

import typer

from .. import __version__
from . import _bench, _chaos, _fleet, _spec
from ._common import reported
from ._export import app as export_app

app = typer.Typer(
    name="fleetops",
    help="Run, supervise and operate multi-agent fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(_bench.app, name="bench")
app.add_typer(_chaos.app, name="chaos")
app.add_typer(export_app, name="export")
for command in (
    _fleet.up,
    _fleet.down,
    _fleet.apply,
    _fleet.status,
    _fleet.submit,
    _fleet.tasks,
    _spec.validate,
    _spec.schema,
    _fleet.readiness,
    _fleet.changes,
    _fleet.events,
    _fleet.load,
    _fleet.logs,
):
    app.command()(reported(command))


@app.command()
def version() -> None:
    """Print the fleetops version."""
    typer.echo(__version__)
