"""The order book the research agent looks orders up in (``orders.json``).

Order numbers look like ``SD-10042``. Lookups accept the bare number or any text that
contains one, as a model may pass either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

ORDERS_FILE = Path(__file__).with_name("orders.json")

_ORDER_NUMBER = re.compile(r"\bSD[-\s]?(\d{5})\b", re.IGNORECASE)


def find_order_number(text: str) -> str | None:
    """The first order number in ``text``, normalised to ``SD-12345``."""
    found = _ORDER_NUMBER.search(text or "")
    return f"SD-{found.group(1)}" if found else None


class OrderBook:
    """Orders by number."""

    def __init__(self, orders: Iterable[Mapping[str, Any]]) -> None:
        self._orders = {str(o["order_number"]): dict(o) for o in orders}

    @classmethod
    def load(cls, path: Path = ORDERS_FILE) -> OrderBook:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_number: object) -> bool:
        return order_number in self._orders

    def numbers(self) -> list[str]:
        return sorted(self._orders)

    def get(self, order_number: str) -> dict[str, Any] | None:
        found = self._orders.get(order_number)
        return dict(found) if found is not None else None

    def lookup(self, reference: str) -> dict[str, Any]:
        """What the ``lookup_order`` tool answers for ``reference``.

        ``{"found": True, "order_number": ..., "order": {...}}`` or ``{"found": False,
        "order_number": ... or None, "reason": ...}``.
        """
        number = find_order_number(reference)
        if number is None:
            return {"found": False, "order_number": None, "reason": "no order number given"}
        order = self.get(number)
        if order is None:
            return {"found": False, "order_number": number, "reason": "no order has this number"}
        return {"found": True, "order_number": number, "order": order}


@cache
def default_order_book() -> OrderBook:
    """The orders shipped with the example (loaded once per process)."""
    return OrderBook.load()


def render_lookup(result: Mapping[str, Any]) -> str:
    """A lookup result as the model reads it: one or two plain sentences."""
    if not result["found"]:
        if result["order_number"] is None:
            return "No order number was given; ask the customer for it (it looks like SD-12345)."
        return f"No order {result['order_number']} exists; ask the customer to check the number."
    order = result["order"]
    status = str(order["status"]).replace("_", " ")
    parts = [f"Order {order['order_number']} is {status}"]
    if "carrier" in order:
        parts.append(
            f"shipped {order['shipped']} with {order['carrier']}, "
            f"tracking {order['tracking_number']}"
        )
    if "delivered" in order:
        parts.append(f"delivered {order['delivered']}")
    elif "estimated_delivery" in order:
        parts.append(f"expected {order['estimated_delivery']}")
    items = ", ".join(f"{i['name']} x{i['quantity']}" for i in order["items"])
    parts.append(f"items: {items}; total {order['total']:.2f} {order['currency']}")
    refund = order.get("refund")
    if refund:
        state = str(refund["state"]).replace("_", " ")
        parts.append(f"refund: {state} ({refund['amount']:.2f} {order['currency']})")
    return "; ".join(parts) + "."
