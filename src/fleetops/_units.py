"""Parsing of human-written durations such as ``500ms``, ``1s``, ``2m``."""

from __future__ import annotations

import re

from ._exceptions import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, field: str = "duration") -> float:
    """Seconds in ``text`` (``10ms``, ``1.5s``, ``2m``, ``1h``; a bare number is seconds)."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(field, text, "write a duration such as 500ms, 1s, 2m or 1h")
    return float(match.group(1)) * _SCALE[match.group(2)]
