"""Durations: one grammar for the fleet spec and the command line."""

from __future__ import annotations

import pytest

from fleetops import ConfigError
from fleetops._units import parse_duration
from fleetops.spec._types import parse_duration as spec_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10 ms", 0.01),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("7d", 604800.0),
        ("1d 2h", 93600.0),
    ],
)
def test_the_command_line_reads_every_duration_the_spec_reads(text: str, seconds: float) -> None:
    """'--duration 1h30m' and '1d' were refused on the command line, though the spec
    took them."""
    assert parse_duration(text, "--duration") == pytest.approx(seconds)
    assert spec_duration(text) == pytest.approx(seconds)


def test_a_bare_number_is_seconds_on_the_command_line() -> None:
    assert parse_duration("30", "--duration") == 30.0
    assert parse_duration(" 2.5 ", "--duration") == 2.5


@pytest.mark.parametrize("text", ["", "ms", "1x", "-1s", "1e9s", "inf", "nan", "1h30", "s1"])
def test_anything_else_is_refused_naming_the_option_and_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_duration(text, "--kill-every")
    assert refused.value.field == "--kill-every" and refused.value.value == text
    assert "1h30m" in refused.value.fix
