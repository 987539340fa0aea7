"""Writing the exports: block-style YAML that keeps the key order, and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

#: Long PromQL and annotations stay on one line rather than being folded.
WIDTH = 1_000_000


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL with ``/`` on its own line) as ``|`` blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=WIDTH, allow_unicode=True)


def to_yaml_documents(documents: Iterable[Any]) -> str:
    """A multi-document YAML stream (``---`` between the documents)."""
    return yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, width=WIDTH, allow_unicode=True
    )


def to_json(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
