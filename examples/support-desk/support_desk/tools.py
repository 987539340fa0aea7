"""The research agent's tools: what the model is offered, and running what it asks for.

The tools run locally, inside the agent: they are pure reads of files shipped with the
example, so running one again on a redelivered task is harmless and needs no journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .knowledge import DEFAULT_TOP_K, default_knowledge_base, render_hits
from .orders import default_order_book, render_lookup

MAX_TOP_K = 5

SEARCH_KB = {
    "type": "function",
    "function": {
        "name": "search_kb",
        "description": (
            "Search the help centre knowledge base: articles on shipping and delivery "
            "times, returns, the refund policy, payment, invoices, your account, password "
            "reset, login and the app."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
            },
            "required": ["query"],
        },
    },
}

LOOKUP_ORDER = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": (
            "Look up one order by its order number: status, tracking, delivery date, "
            "items and refund state."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "order_number": {
                    "type": "string",
                    "description": "The order number, e.g. SD-10042 (text containing one works).",
                }
            },
            "required": ["order_number"],
        },
    },
}

TOOLS = (SEARCH_KB, LOOKUP_ORDER)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool answered: text for the model, and a small record for the result.

    ``found`` says whether the tool turned up anything; ``refs`` names what it found
    (article ids, an order number) and ``topics`` the tags of the articles found.
    """

    text: str
    found: bool
    refs: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    def evidence(self, tool: str) -> dict[str, Any]:
        return {
            "tool": tool,
            "found": self.found,
            "refs": list(self.refs),
            "topics": list(self.topics),
            **self.detail,
        }


def search_kb(query: str, top_k: int = DEFAULT_TOP_K) -> ToolResult:
    hits = default_knowledge_base().search(query, max(1, min(MAX_TOP_K, top_k)))
    topics = sorted({tag for h in hits for tag in h.article.tags})
    return ToolResult(
        render_hits(hits), bool(hits), tuple(h.article.id for h in hits), tuple(topics)
    )


def lookup_order(order_number: str) -> ToolResult:
    result = default_order_book().lookup(order_number)
    refs = (result["order_number"],) if result["order_number"] else ()
    detail: dict[str, Any] = {"order_number": result["order_number"]}
    if result["found"]:
        detail["order_status"] = result["order"]["status"]
    return ToolResult(render_lookup(result), bool(result["found"]), refs, (), detail)


def run_tool(name: str, arguments: Mapping[str, Any]) -> ToolResult:
    """Run the tool the model called; a bad call answers an error text the model can read.

    A model that calls a tool wrongly should learn why from the tool's answer, as it
    would from a real API, rather than crash the agent.
    """
    try:
        if name == "search_kb":
            top_k = arguments.get("top_k", DEFAULT_TOP_K)
            return search_kb(
                str(arguments["query"]), top_k if isinstance(top_k, int) else DEFAULT_TOP_K
            )
        if name == "lookup_order":
            return lookup_order(str(arguments["order_number"]))
    except KeyError as missing:
        return ToolResult(f"Error: {name} needs the argument {missing}.", False)
    return ToolResult(f"Error: there is no tool named {name!r}.", False)
