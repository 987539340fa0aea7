"""What is wrong with a spec, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._exceptions import UsageError


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One problem in a spec.

    ``path`` is the field path (``clusters.triage.agents[0].entrypoint``; empty for
    the document itself), ``line`` and ``column`` count from 1 (0 when the problem
    has no position, e.g. an unreadable file), ``value`` is the offending value as
    written (``None`` when the field is missing or the value is withheld).
    """

    path: str
    line: int
    column: int
    value: str | None
    message: str
    fix: str

    def format(self, source: str = "<spec>") -> str:
        """``file:line:col: path: message (got VALUE); fix: ...``."""
        where = f"{source}:{self.line}:{self.column}" if self.line else source
        what = f"{self.path}: {self.message}" if self.path else self.message
        got = f" (got {self.value})" if self.value is not None else ""
        return f"{where}: {what}{got}; fix: {self.fix}"


def format_issues(issues: Sequence[SpecIssue], source: str = "<spec>") -> str:
    """Every issue on its own line, in the order they appear in the file."""
    ordered = sorted(issues, key=lambda issue: (issue.line, issue.column, issue.path))
    return "\n".join(issue.format(source) for issue in ordered)


class SpecError(UsageError):
    """The fleet spec is invalid; nothing was changed.

    ``issues`` lists every problem found, each with its line, column and fix.
    """

    def __init__(self, issues: Sequence[SpecIssue], source: str = "<spec>") -> None:
        self.issues = tuple(issues)
        self.source = source
        count = len(self.issues)
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''} in the fleet spec\n"
            + format_issues(self.issues, source)
        )
