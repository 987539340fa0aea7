"""Plain-language messages and fixes for validation errors.

Pydantic's messages describe types ("Input should be a valid integer"); a person
editing a spec needs to know what the field wants and what to write instead. The
fix often depends on the model that owns the field (its allowed keys, its
description), found by walking the spec models along the error's path.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Sequence
from datetime import time
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from ._models import FleetSpec
from ._providers import PROVIDER_KINDS
from ._types import SPEC_ERROR, did_you_mean

MAX_VALUE_CHARS = 60
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "token", "authorization")

# What to write when a required field is missing.
_EXAMPLES = {
    "fleet": "fleet: {name: my-fleet}",
    "name": "name: my-name",
    "clusters": "clusters: {triage: {agents: [{name: classify, entrypoint: agents:classify}]}}",
    "agents": "agents: [{name: classify, entrypoint: agents.triage:classify}]",
    "entrypoint": "entrypoint: agents.triage:classify",
    "max_replicas": "max_replicas: 4",
    "base_url": "base_url: https://api.openai.com/v1",
    "model": "model: gpt-4o-mini",
    "kind": "kind: simulated",
}


def is_secret(path: Sequence[str | int]) -> bool:
    """Whether the value at ``path`` may be a credential, never to be echoed."""
    if not path or not isinstance(path[-1], str):
        return False
    leaf = path[-1].lower()
    return (
        leaf != "tokens"
        and not leaf.startswith("tokens_")
        and any(word in leaf for word in _SECRET_WORDS)
    )


def render_value(value: Any) -> str:
    """A short, YAML-flavoured rendering of a value as the user wrote it."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, time):
        text = value.strftime("%H:%M")
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def describe(error: ErrorDetails, path: Sequence[str | int], data: Any) -> tuple[str, str]:
    """The message and the fix for one validation error at ``path``."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    leaf = str(path[-1]) if path else ""
    if kind == SPEC_ERROR:
        return str(ctx.get("message", error["msg"])), str(ctx.get("fix", "see the spec reference"))
    if kind == "missing":
        example = _EXAMPLES.get(leaf)
        return "required field is missing", f"add '{example}'" if example else f"add '{leaf}:'"
    if kind == "extra_forbidden":
        return "unknown key", _unknown_key_fix(leaf, _owner(path, data))
    if kind == "union_tag_invalid":
        return (
            f"unknown provider kind {ctx.get('tag')!r}",
            f"{did_you_mean(str(ctx.get('tag')), PROVIDER_KINDS)}use one of: "
            + ", ".join(PROVIDER_KINDS),
        )
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return "not one of the allowed values", (
            f"{did_you_mean(str(value), choices)}use one of: {', '.join(choices)}"
        )
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "not a whole number", _number_fix(value, "a whole number, e.g. 2")
    if kind == "finite_number":
        return "not a finite number", "write a finite number; .inf and .nan are not allowed"
    if kind in ("float_type", "float_parsing"):
        return "not a number", _number_fix(value, "a number, e.g. 0.5")
    if kind in ("bool_type", "bool_parsing"):
        return "not true or false", "write true or false"
    if kind == "string_type":
        return "not text", "write text; quote it if YAML reads it as a number or boolean"
    if kind == "string_too_short":
        return "empty", "write a value, or remove the key to use the default"
    if kind == "string_pattern_mismatch":
        if leaf == "base_url":
            return "not an http(s) URL", "write the API root, e.g. https://api.openai.com/v1"
        return "not in the expected form", f"match the pattern {ctx.get('pattern')}"
    bound = _bound_message(kind, ctx)
    if bound is not None:
        return bound
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        if leaf == "clusters":
            return "no clusters", f"define at least one cluster, e.g. '{_EXAMPLES['clusters']}'"
        example = _EXAMPLES.get(leaf)
        fix = f"list at least {minimum}" + (f", e.g. '{example}'" if example else "")
        return f"needs at least {minimum} item{'s' if minimum != 1 else ''}", fix
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if value is None:
            return "empty", f"fill in '{leaf}' or remove the key"
        return "not a mapping", f"write '{leaf}' as 'key: value' lines or {{key: value}}"
    if kind in ("list_type", "tuple_type"):
        return "not a list", "write a list: '- item' lines or [a, b]"
    return str(error["msg"]), "see the spec reference for this field"


def _bound_message(kind: str, ctx: dict[str, Any]) -> tuple[str, str] | None:
    words = {
        "greater_than": ("gt", "greater than"),
        "greater_than_equal": ("ge", "at least"),
        "less_than": ("lt", "less than"),
        "less_than_equal": ("le", "at most"),
    }
    if kind not in words:
        return None
    key, phrase = words[kind]
    bound = ctx.get(key)
    if isinstance(bound, float) and bound.is_integer():
        bound = int(bound)
    return f"must be {phrase} {bound}", f"use a value {phrase} {bound}"


def _number_fix(value: Any, what: str) -> str:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value):
        return "write the number without quotes or leading zeros"
    if isinstance(value, bool):
        return f"write {what}, not true or false"
    return f"write {what}"


def _unknown_key_fix(leaf: str, owner: type[BaseModel] | None) -> str:
    if leaf.lower() in ("api_key", "apikey", "key", "token"):
        return (
            "never write a credential into the spec: put it in an environment variable "
            "and set api_key_env to that variable's name"
        )
    if owner is None:
        return "remove it"
    allowed = list(owner.model_fields)
    return f"{did_you_mean(leaf, allowed)}allowed keys here: {', '.join(allowed)}"


# --- walking the models -------------------------------------------------------------------------


def _owner(path: Sequence[str | int], data: Any) -> type[BaseModel] | None:
    """The model whose field the last element of ``path`` names."""
    annotation: Any = FleetSpec
    value = data
    for item in path[:-1]:
        annotation, value = _step(annotation, item, value)
        if annotation is None:
            return None
    model = _resolve(annotation, value)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _step(annotation: Any, item: str | int, value: Any) -> tuple[Any, Any]:
    target = _resolve(annotation, value)
    child = _get(value, item)
    if isinstance(target, type) and issubclass(target, BaseModel):
        field: FieldInfo | None = target.model_fields.get(str(item))
        return (field.annotation if field is not None else None), child
    origin = get_origin(target)
    args = get_args(target)
    if origin is dict and len(args) == 2:
        return args[1], child
    if origin in (tuple, list) and args:
        return args[0], child
    return None, None


def _resolve(annotation: Any, value: Any) -> Any:
    """Strip ``Annotated`` and choose the union member ``value`` is meant to be."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [_resolve(member, value) for member in get_args(annotation)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        kind = value.get("kind") if isinstance(value, dict) else None
        for model in models:
            field = model.model_fields.get("kind")
            if kind is not None and field is not None and get_origin(field.annotation) is Literal:
                if kind in get_args(field.annotation):
                    return model
        others = [m for m in members if m is not type(None)]
        return models[0] if models else (others[0] if others else None)
    return annotation


def _get(value: Any, item: str | int) -> Any:
    if isinstance(value, dict):
        return value.get(item)
    if isinstance(value, list) and isinstance(item, int) and 0 <= item < len(value):
        return value[item]
    return None
