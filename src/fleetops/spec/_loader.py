"""Load a spec from YAML and report every problem with its line, column and fix.

The document is composed into PyYAML's node tree first, so every value keeps the
mark where it was written; the same nodes are then constructed into plain data and
validated. Each validation error's location is followed through the node tree to a
line and column. Problems are collected, never raised one at a time: a spec with
five mistakes gets five issues in one answer.

Scalars are read as YAML 1.2 reads them: only ``true`` and ``false`` are booleans
(``no``, ``on``, ``yes`` are text), ``17:00`` is text rather than a base-60 number,
and dates stay text.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ._issues import SpecError, SpecIssue
from ._messages import describe, is_secret, render_value
from ._models import FleetSpec, reference_problems
from ._types import SPEC_ERROR, Problem

DEFAULT_SOURCE = "<spec>"
MAX_NODES = 100_000
"""A document that expands to more values than this (an alias bomb) is refused."""

Location = tuple[str | int, ...]


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars; no timestamps, base-60 numbers or yes/no."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.endswith((":null", ":merge"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+.0123456789"),
)


# --- public -------------------------------------------------------------------------------------


def check_spec_text(
    text: str, *, path: str | os.PathLike[str] | None = None
) -> FleetSpec | list[SpecIssue]:
    """Validate a spec given as YAML text; answer the spec or every issue found.

    ``path`` names the file in messages and is where relative paths in the spec are
    resolved from.
    """
    document = _read_document(text)
    if isinstance(document, SpecIssue):
        return [document]
    root, data, issues = document
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as exc:
        issues += _validation_issues(root, data, exc.errors())
    else:
        if not issues:
            return spec.with_source(path) if path is not None else spec
    return sorted(issues, key=lambda i: (i.line, i.column, i.path))


#: The largest spec file read (a fleet's spec is a few KiB; /dev/zero is endless).
MAX_SPEC_BYTES = 4 * 1024 * 1024


def check_spec(path: str | os.PathLike[str]) -> FleetSpec | list[SpecIssue]:
    """Validate the spec file at ``path``; answer the spec or every issue found."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return [SpecIssue("", 0, 0, None, "not a regular file", "name a YAML spec file")]
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            return [
                SpecIssue(
                    "",
                    0,
                    0,
                    None,
                    f"larger than {MAX_SPEC_BYTES // 1024 // 1024} MiB",
                    "a fleet spec is a few KiB: name the spec file, not some other file",
                )
            ]
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return [
            SpecIssue(
                "", 0, 0, None, f"cannot read the file: {reason}", "check the path and permissions"
            )
        ]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        return [
            SpecIssue(
                "",
                before.count(b"\n") + 1,
                exc.start - (before.rfind(b"\n") + 1) + 1,
                None,
                "the file is not UTF-8 text",
                "save the file as UTF-8",
            )
        ]
    return check_spec_text(text, path=path)


def load_spec(path: str | os.PathLike[str]) -> FleetSpec:
    """The validated spec in the file at ``path``; raises :class:`SpecError` listing every issue."""
    result = check_spec(path)
    if isinstance(result, FleetSpec):
        return result
    raise SpecError(result, str(path))


def load_spec_text(text: str, *, path: str | os.PathLike[str] | None = None) -> FleetSpec:
    """The validated spec in ``text``; raises :class:`SpecError` listing every issue."""
    result = check_spec_text(text, path=path)
    if isinstance(result, FleetSpec):
        return result
    raise SpecError(result, str(path) if path is not None else DEFAULT_SOURCE)


# --- YAML ---------------------------------------------------------------------------------------


def _document_issue(message: str, fix: str, mark: yaml.Mark | None = None) -> SpecIssue:
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return SpecIssue("", line, column, None, message, fix)


def _read_document(text: str) -> tuple[yaml.MappingNode, Any, list[SpecIssue]] | SpecIssue:
    """The document's node tree, the plain data built from it and its duplicate keys.

    Duplicates are looked for before construction, which merges ``<<`` keys into
    their mappings (where an explicit key may override a merged one).
    """
    try:
        loader = _SpecLoader(text)  # checks every character is printable
    except yaml.YAMLError as exc:
        return _reader_issue(exc, text)
    try:
        root = loader.get_single_node()
        if root is None:
            return _document_issue(
                "the spec is empty",
                "describe the fleet: at least 'fleet: {name: ...}' and 'clusters:'",
            )
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
            return _document_issue(
                f"the spec is {kind}, not a mapping of sections",
                "write sections as 'key: value' lines: fleet, clusters, providers, ...",
                root.start_mark,
            )
        if _expanded_size(root, {}, set()) > MAX_NODES:
            return _document_issue(
                f"the spec expands to more than {MAX_NODES} values through aliases",
                "write the values out, or use fewer nested '*alias' references",
            )
        duplicates = _duplicate_keys(root, ())
        return root, loader.construct_document(root), duplicates
    except _RecursiveAlias as exc:
        return _document_issue(
            "a value contains itself through an alias",
            "refer to an anchor only from outside the value it names",
            exc.node.start_mark,
        )
    except RecursionError:
        return _document_issue(
            "the spec is nested too deeply", "flatten it; a fleet spec needs only a few levels"
        )
    except yaml.MarkedYAMLError as exc:
        return _yaml_issue(exc)
    except yaml.YAMLError as exc:
        return _reader_issue(exc, text)
    finally:
        loader.dispose()


_YAML_FIXES = (
    ("found character '\\t'", "indent with spaces; YAML does not allow tabs"),
    ("could not find expected ':'", "add ':' after the key, or quote text that contains ':'"),
    ("mapping values are not allowed", "quote a value that contains ': ', or fix the indentation"),
    ("expected <block end>", "line up the keys of one mapping at the same indentation"),
    ("found undefined alias", "define the anchor (&name) before using it (*name)"),
    ("found unhashable key", "use plain text as the key"),
    ("could not determine a constructor", "remove the '!' tag; the spec is plain YAML"),
    ("expected a single document", "keep one document in the file: remove the extra '---'"),
    ("found unexpected end of stream", "close the quote or bracket that is still open"),
    ("did not find expected", "close the bracket or quote, or fix the indentation"),
)


def _yaml_issue(exc: yaml.MarkedYAMLError) -> SpecIssue:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "the YAML is malformed"
    context = exc.context or ""
    if context and exc.context_mark is not None and exc.context_mark is not mark:
        context += f" at line {exc.context_mark.line + 1}"
    if context and problem.startswith("but "):
        problem = f"{context}, {problem}"
    elif context:
        problem += f" ({context})"
    fix = next(
        (fix for needle, fix in _YAML_FIXES if needle in f"{exc.problem} {exc.context}"),
        "fix the YAML here: check the indentation, a missing ':', or an unclosed quote or bracket",
    )
    return _document_issue(f"invalid YAML: {problem}", fix, mark)


def _reader_issue(exc: yaml.YAMLError, text: str) -> SpecIssue:
    position = getattr(exc, "position", 0)
    character = getattr(exc, "character", None)
    before = text[:position]
    problem = (
        f"unacceptable character U+{character:04X}: control characters are not allowed"
        if isinstance(character, int)
        else str(exc)
    )
    return SpecIssue(
        "",
        before.count("\n") + 1,
        position - (before.rfind("\n") + 1) + 1,
        None,
        f"invalid YAML: {problem}",
        "remove the control character; the spec must be printable text",
    )


class _RecursiveAlias(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (capped)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_nodes:
        raise _RecursiveAlias(node)
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    sizes[id(node)] = min(size, MAX_NODES + 1)
    return sizes[id(node)]


def _duplicate_keys(node: yaml.Node, path: Location) -> list[SpecIssue]:
    """PyYAML keeps the last of two equal keys silently; a spec must not say things twice."""
    issues: list[SpecIssue] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                continue
            if key.value in first:
                issues.append(
                    SpecIssue(
                        render_path(path + (key.value,)),
                        key.start_mark.line + 1,
                        key.start_mark.column + 1,
                        None,
                        f"key written twice (first at line {first[key.value].start_mark.line + 1})",
                        "keep one of them; YAML would silently use the last",
                    )
                )
            first.setdefault(key.value, key)
            issues += _duplicate_keys(value, path + (key.value,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            issues += _duplicate_keys(item, path + (index,))
    return issues


# --- locations ----------------------------------------------------------------------------------


def _child(node: yaml.Node | None, item: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key or item, value) nodes ``item`` names under ``node``; the last equal key wins."""
    if isinstance(node, yaml.MappingNode):
        found = None
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(item):
                found = (key, value)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(item, int):
        if 0 <= item < len(node.value):
            return node.value[item], node.value[item]
    return None


def _locate(root: yaml.Node, loc: Location) -> tuple[Location, yaml.Mark, yaml.Mark]:
    """The clean field path of a validation location, its value's mark and its key's mark.

    Discriminated unions add the chosen tag to a location; it names no key of the
    document and is dropped. ``[key]`` (an invalid mapping key) points at the key.
    When the location runs past the document (a missing field), the marks stay at
    the deepest node that exists.
    """
    node: yaml.Node | None = root
    path: list[str | int] = []
    value_mark = key_mark = root.start_mark
    for index, item in enumerate(loc):
        if item == "[key]":
            value_mark = key_mark
            continue
        child = _child(node, item)
        if child is None:
            is_last = index == len(loc) - 1
            is_tag = isinstance(item, str) and (
                not isinstance(node, yaml.MappingNode | yaml.SequenceNode) or not is_last
            )
            if is_tag and node is not None:
                continue
            path.append(item)
            node = None
            value_mark = key_mark
            continue
        key, node = child
        path.append(item)
        key_mark, value_mark = key.start_mark, node.start_mark
    return tuple(path), value_mark, key_mark


def render_path(path: Sequence[str | int]) -> str:
    """``clusters.triage.agents[0].name``; odd keys are quoted: ``clusters["a.b"]``."""
    text = ""
    for item in path:
        if isinstance(item, int):
            text += f"[{item}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", item):
            text += f".{item}" if text else item
        else:
            text += '["' + item.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return text


# --- validation errors --------------------------------------------------------------------------


def _validation_issues(
    root: yaml.Node, data: Any, errors: Sequence[ErrorDetails]
) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    for error in errors:
        loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == SPEC_ERROR and "problems" in ctx:
            if not loc:
                continue  # cross-references: reported from the raw document below
            for problem in ctx["problems"]:
                issues.append(_problem_issue(root, data, loc, problem))
            continue
        if error["type"] == "too_short" and _long_enough(error):
            continue  # pydantic counts only the valid items; their errors say what is wrong
        issues.append(_error_issue(root, data, loc, error))
    for problem in reference_problems(data if isinstance(data, dict) else {}):
        issues.append(_problem_issue(root, data, (), problem))
    return issues


def _long_enough(error: ErrorDetails) -> bool:
    value = error.get("input")
    minimum = (error.get("ctx") or {}).get("min_length", 0)
    return isinstance(value, list | tuple | dict) and len(value) >= minimum


def _problem_issue(root: yaml.Node, data: Any, base: Location, problem: Problem) -> SpecIssue:
    path, value_mark, _ = _locate(root, base + problem.path)
    # Show the value as written ('12h'), not as validated (43200.0), when it is there;
    # text is shown as the check gives it (a URL without its password).
    written = _data_at(data, path)
    shown = problem.value if written is None or isinstance(problem.value, str) else written
    value = None if is_secret(path) else render_value(shown)
    return SpecIssue(
        render_path(path),
        value_mark.line + 1,
        value_mark.column + 1,
        value,
        problem.message,
        problem.fix,
    )


def _error_issue(root: yaml.Node, data: Any, loc: Location, error: ErrorDetails) -> SpecIssue:
    path, value_mark, key_mark = _locate(root, loc)
    kind = error["type"]
    value: Any = error.get("input")
    if kind == "union_tag_invalid":
        path += ("kind",)
        value = (error.get("ctx") or {}).get("tag")
        child = _child(_node_at(root, path[:-1]), "kind")
        if child is not None:
            value_mark = child[1].start_mark
    message, fix = describe(error, path, data)
    mark = key_mark if kind in ("extra_forbidden", "missing") else value_mark
    hidden = kind in ("missing", "extra_forbidden") or is_secret(path)
    return SpecIssue(
        render_path(path),
        mark.line + 1,
        mark.column + 1,
        None if hidden else render_value(value),
        message,
        fix,
    )


def _node_at(root: yaml.Node, path: Location) -> yaml.Node | None:
    node: yaml.Node | None = root
    for item in path:
        child = _child(node, item)
        node = child[1] if child is not None else None
    return node


def _data_at(data: Any, path: Location) -> Any:
    for item in path:
        if isinstance(data, dict):
            data = data.get(item)
        elif isinstance(data, list) and isinstance(item, int) and 0 <= item < len(data):
            data = data[item]
        else:
            return None
    return data
