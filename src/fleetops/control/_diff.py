"""What changed between two specs, as a list of (path, before, after)."""

from __future__ import annotations

from typing import Any


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf-level differences between two JSON-like values, paths joined with dots."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append({"path": sub, "before": None, "after": after[key], "op": "add"})
            elif key not in after:
                out.append({"path": sub, "before": before[key], "after": None, "op": "remove"})
            else:
                out.extend(diff(before[key], after[key], sub))
        return out
    if before != after:
        return [{"path": path, "before": before, "after": after, "op": "replace"}]
    return []
