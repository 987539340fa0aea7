"""``fleetops validate`` and ``fleetops schema``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from ..spec import FleetSpec, check_spec, format_issues, json_schema
from ._common import EXIT_USAGE, err, out, print_json


def load_or_exit(path: Path) -> FleetSpec:
    """The spec at ``path``, or every problem in it printed and exit status 2."""
    result = check_spec(path)
    if isinstance(result, FleetSpec):
        return result
    count = len(result)
    err.print(
        f"[bold red]{escape(str(path))}: {count} problem{'s' if count != 1 else ''}[/]",
        highlight=False,
    )
    err.print(format_issues(result, str(path)), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def validate(
    file: Path = typer.Argument(..., help="The fleet spec (YAML)."),
    json_output: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Check a fleet spec; report every problem with line:column, field, value and fix."""
    result = check_spec(file)
    if isinstance(result, FleetSpec):
        agents = sum(len(c.agents) for c in result.clusters.values())
        if json_output:
            print_json({"valid": True, "clusters": len(result.clusters), "agents": agents})
        else:
            out.print(
                f"[green]✓[/] {escape(str(file))} is a valid fleet spec: "
                f"{len(result.clusters)} cluster(s), "
                f"{agents} agent(s)"
            )
        return
    if json_output:
        print_json(
            {
                "valid": False,
                "problems": [issue.__dict__ for issue in result]
                if hasattr(result[0], "__dict__")
                else [_issue(i) for i in result],
            }
        )
        raise typer.Exit(EXIT_USAGE)
    load_or_exit(file)


def _issue(issue: object) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(issue)  # type: ignore[call-overload, no-any-return]


def schema() -> None:
    """Print the fleet spec's JSON Schema (for editors' completion and checks)."""
    print(json.dumps(json_schema(), indent=2))
