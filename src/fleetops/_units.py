"""Parsing of human-written durations such as ``500ms``, ``1s``, ``2m``, ``1h30m``, ``7d``.

One grammar for the fleet spec and the command line: a number with a unit (``ms``,
``s``, ``m``, ``h``, ``d``), several of them added up (``1h30m``), spaces allowed
between a number and its unit. On the command line a bare number is seconds too.
"""

from __future__ import annotations

import re

from ._exceptions import ConfigError

DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_BARE = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
#: what to write, for messages
DURATION_EXAMPLES = "500ms, 30s, 15m, 1h30m or 7d"


def duration_seconds(text: str, *, bare: bool = True) -> float | None:
    """Seconds in ``text``, or None if it is not a duration; with ``bare``, a number
    without a unit is seconds."""
    if bare and _BARE.match(text):
        return float(text)
    if re.fullmatch(DURATION_PATTERN, text):
        return sum(float(amount) * _UNITS[unit] for amount, unit in _PART.findall(text))
    return None


def parse_duration(text: str, field: str = "duration") -> float:
    """Seconds in ``text`` (``10ms``, ``1.5s``, ``2m``, ``1h30m``, ``7d``; a bare
    number is seconds), else a ConfigError naming ``field``."""
    seconds = duration_seconds(str(text))
    if seconds is None:
        raise ConfigError(
            field, text, f"write a duration such as {DURATION_EXAMPLES} (a bare number is seconds)"
        )
    return seconds
