"""Field types the spec models share, and how a model reports a cross-field problem.

Validators here raise :class:`pydantic_core.PydanticCustomError` of type
``fleetops_spec`` whose context carries a ``fix``; a model check that finds several
problems at once raises one error whose context carries them all as ``problems``
(each a path relative to the model, the value, the message and the fix). The loader
turns both into :class:`~fleetops.spec.SpecIssue` objects with line numbers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from datetime import time
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from .._units import DURATION_PATTERN, duration_seconds
from ..store._models import MAX_AHEAD_SECONDS

SPEC_ERROR = "fleetops_spec"
SPEC_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
"""Every spec model: unknown keys are errors, values are immutable, docstrings describe."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TIME_OF_DAY_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"

#: The longest duration (10 years, 3650d): longer ones overflow the clocks and dates
#: they are added to, and mean "never" better said by leaving the setting out.
MAX_SECONDS = float(MAX_AHEAD_SECONDS)
#: The largest count (a billion): larger ones overflow the store's integers or are
#: a slip of the keyboard.
MAX_COUNT = 1_000_000_000


class Problem(NamedTuple):
    """One cross-field problem found by a model check, relative to that model."""

    path: tuple[str | int, ...]
    value: object
    message: str
    fix: str


def spec_error(message: str, fix: str) -> PydanticCustomError:
    """An error for one field whose message and fix a person can act on."""
    return PydanticCustomError(SPEC_ERROR, "{message}", {"message": message, "fix": fix})


def raise_problems(problems: Sequence[Problem]) -> None:
    """Raise every problem a model check found as one validation error, if any."""
    if not problems:
        return
    summary = "; ".join(
        f"{'.'.join(str(p) for p in problem.path) or '(model)'}: {problem.message}"
        for problem in problems
    )
    raise PydanticCustomError(
        SPEC_ERROR, "{message}", {"message": summary, "problems": tuple(problems)}
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def human_duration(seconds: float) -> str:
    """``86400`` as ``1d``, ``900`` as ``15m``, ``0.05`` as ``50ms``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def seconds_at_least(minimum: float, why: str, default: float) -> AfterValidator:
    """A duration field's floor: shorter values would make a loop spin (``why`` says
    which); the message names the floor and the default."""

    def check(value: float) -> float:
        if value < minimum:
            raise spec_error(
                f"shorter than {human_duration(minimum)}: {why}",
                f"use {human_duration(minimum)} or more (the default is {human_duration(default)})",
            )
        return value

    return AfterValidator(check)


def _check_whole_seconds(value: float) -> float:
    if value.is_integer():
        return value
    raise spec_error(
        "not a whole number of seconds: the history rolls samples up in whole seconds",
        "use whole seconds, e.g. '1m' or '90s'",
    )


WholeSeconds = AfterValidator(_check_whole_seconds)


def _check_name(value: str) -> str:
    if re.fullmatch(NAME_PATTERN, value):
        return value
    if "/" in value:
        raise spec_error(
            "a name may not contain '/'",
            "leave '/' out: it separates cluster and agent in 'cluster/agent' addresses",
        )
    raise spec_error(
        "not a valid name",
        "use 1 to 63 letters, digits, '-' or '_', starting with a letter or digit",
    )


def _check_entrypoint(value: str) -> str:
    if re.fullmatch(ENTRYPOINT_PATTERN, value):
        return value
    module, sep, function = value.partition(":")
    if not sep:
        fix = f"add the function after a colon, e.g. '{value or 'agents.triage'}:handle'"
    elif not function:
        fix = f"name the function after the colon, e.g. '{module}:handle'"
    else:
        fix = "write it as 'package.module:function' with Python identifiers"
    raise spec_error("not a 'module:function' entrypoint", fix)


def _check_env_var(value: str) -> str:
    if re.fullmatch(ENV_VAR_PATTERN, value):
        return value
    raise spec_error(
        "not an environment variable name",
        "name the variable that holds the key (e.g. OPENAI_API_KEY), never the key itself",
    )


def parse_duration(value: Any) -> Any:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"15m"``, ``"1h30m"`` or ``"90d"``."""
    if isinstance(value, bool):
        raise spec_error("not a duration", "write seconds as a number or a string like '30s'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        seconds = duration_seconds(value, bare=False)
        if seconds is not None:
            return seconds
        raise spec_error(
            "not a duration",
            "write a number of seconds or a number with a unit: ms, s, m, h or d "
            "(e.g. '500ms', '30s', '15m', '24h', '7d')",
        )
    return value


def _parse_time_of_day(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(TIME_OF_DAY_PATTERN, value):
        hour, minute = value.split(":")
        return time(int(hour), int(minute))
    if isinstance(value, time):
        return value
    raise spec_error("not a time of day", "write it as 'HH:MM' in 24-hour time, e.g. '09:00'")


def _check_max_seconds(value: float) -> float:
    if value <= MAX_SECONDS:
        return value
    raise spec_error(
        f"longer than {human_duration(MAX_SECONDS)} (10 years), the longest duration allowed",
        f"use a duration of at most {human_duration(MAX_SECONDS)}",
    )


def count_at_most(low: int, maximum: int, why: str) -> AfterValidator:
    """A count's ceiling: larger values would exhaust the machine or overflow (``why``
    says how); the message names the allowed range, ``low`` to ``maximum``."""

    def check(value: int) -> int:
        if value > maximum:
            raise spec_error(
                f"more than {maximum}, the most allowed: {why}",
                f"use a value from {low} to {maximum}",
            )
        return value

    return AfterValidator(check)


def count_schema(minimum: int, maximum: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": maximum})


def _duration_schema(minimum: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", minimum: 0, "maximum": MAX_SECONDS},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a number with a unit: ms, s, m, h, d (e.g. '30s', '24h')",
        }
    )


Name = Annotated[
    str,
    Strict(),
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN}),
]
"""A cluster, agent or provider name: used in ``cluster/agent`` addresses."""

EntryPoint = Annotated[
    str,
    Strict(),
    AfterValidator(_check_entrypoint),
    WithJsonSchema({"type": "string", "pattern": ENTRYPOINT_PATTERN}),
]
EnvVarName = Annotated[
    str,
    Strict(),
    AfterValidator(_check_env_var),
    WithJsonSchema({"type": "string", "pattern": ENV_VAR_PATTERN}),
]
Seconds = Annotated[
    float,
    Field(ge=0, allow_inf_nan=False),
    BeforeValidator(parse_duration),
    AfterValidator(_check_max_seconds),
    _duration_schema("minimum"),
]
PositiveSeconds = Annotated[
    float,
    Field(gt=0, allow_inf_nan=False),
    BeforeValidator(parse_duration),
    AfterValidator(_check_max_seconds),
    _duration_schema("exclusiveMinimum"),
]
TimeOfDay = Annotated[
    time,
    BeforeValidator(_parse_time_of_day),
    PlainSerializer(lambda value: value.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": TIME_OF_DAY_PATTERN}),
]

_TOO_MANY = "larger counts overflow the store's integers"
Count = Annotated[
    int, Strict(), Field(ge=0), count_at_most(0, MAX_COUNT, _TOO_MANY), count_schema(0, MAX_COUNT)
]
PositiveCount = Annotated[
    int, Strict(), Field(ge=1), count_at_most(1, MAX_COUNT, _TOO_MANY), count_schema(1, MAX_COUNT)
]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
