"""Deterministic rules: the intake's keyword classifier and the reviewers' checks.

Rules decide what must not depend on a model's mood: which queue a request goes to,
and whether a draft is grounded, within policy and fit to send. The model adds a
summary and a reviewer's comment on top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .knowledge import tokenize

CATEGORIES = ("order_status", "refund", "technical", "other")

# Keywords are stemmed like the knowledge base's words, so "refunds" counts as "refund".
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "order_status": (
        "where", "track", "tracking", "shipped", "ship", "deliver", "delivery", "arrive",
        "arrived", "parcel", "package", "late", "status", "courier", "carrier", "dispatch",
    ),
    "refund": (
        "refund", "return", "money", "back", "reimburse", "cancel", "damaged", "broken",
        "wrong", "exchange",
    ),
    "technical": (
        "password", "login", "log", "sign", "app", "crash", "error", "bug", "reset",
        "locked", "2fa", "two", "factor", "website", "page", "load", "checkout",
    ),
}  # fmt: skip
_STEMMED = {c: frozenset(tokenize(" ".join(ws), frozenset())) for c, ws in _KEYWORDS.items()}


def classify_text(message: str) -> tuple[str, dict[str, int]]:
    """The request's category and each category's keyword hits.

    The category with the most hits wins; a tie goes to the one listed first in
    :data:`CATEGORIES`; no hit at all is ``other``.
    """
    words = tokenize(message, frozenset())
    hits = {c: sum(1 for w in words if w in _STEMMED[c]) for c in _KEYWORDS}
    best = max(hits.values())
    if best == 0:
        return "other", hits
    return next(c for c in CATEGORIES if hits.get(c) == best), hits


# --- review -----------------------------------------------------------------------------------

PERSONAS: dict[str, str] = {
    "fact_checker": (
        "You check that every claim in a support reply is backed by a help-centre article "
        "or an order record."
    ),
    "policy_officer": (
        "You check that a support reply keeps to company policy: no promises we cannot "
        "keep, no private data, no talk about orders we cannot verify."
    ),
    "customer_advocate": (
        "You read a support reply as the customer would: is it clear, polite and helpful?"
    ),
}

MIN_DRAFT_CHARS = 40
MAX_DRAFT_CHARS = 1500
REFUND_TOPICS = frozenset({"refund", "returns"})
_PROMISES = re.compile(r"\b(guarantee[ds]?|promise[ds]?|100 ?%|compensat\w*)\b", re.IGNORECASE)
_CARD_NUMBER = re.compile(r"\b(?:\d[ -]?){13,16}\b")
_SECRETS = re.compile(r"\bpassword (is|was)\b", re.IGNORECASE)
_BLAME = re.compile(
    r"\b(your (own )?fault|you should have|obviously|as (already )?stated)\b", re.IGNORECASE
)

Vote = tuple[str, str]  # ("approve" | "reject", reason)


def _order_checks(review: Mapping[str, Any]) -> tuple[bool, bool]:
    """(an order lookup confirmed the order, a lookup found no such order)."""
    lookups = [e for e in review.get("evidence", ()) if e.get("tool") == "lookup_order"]
    confirmed = any(e.get("found") for e in lookups)
    missing = any(not e.get("found") and e.get("order_number") for e in lookups)
    return confirmed, missing


def fact_checker(review: Mapping[str, Any]) -> Vote:
    evidence: Sequence[Mapping[str, Any]] = review.get("evidence", ())
    order_number = review.get("order_number")
    confirmed, missing = _order_checks(review)
    if missing:
        return "reject", f"order {order_number} does not exist; the customer must check it"
    if not any(e.get("found") for e in evidence):
        return "reject", "nothing in the draft is backed by an article or an order record"
    if order_number and not confirmed:
        return "reject", f"the draft does not check order {order_number}"
    refs = sorted({r for e in evidence if e.get("found") for r in e.get("refs", ())})
    return "approve", f"backed by {', '.join(refs[:3])}"


def policy_officer(review: Mapping[str, Any]) -> Vote:
    draft = str(review.get("draft", ""))
    if _PROMISES.search(draft):
        return "reject", "the draft makes a promise we may not be able to keep"
    if _CARD_NUMBER.search(draft) or _SECRETS.search(draft):
        return "reject", "the draft would disclose private data"
    confirmed, missing = _order_checks(review)
    if missing:
        return "reject", "we do not discuss an order we cannot verify"
    if review.get("category") == "refund":
        topics = {t for e in review.get("evidence", ()) if e.get("found") for t in e["topics"]}
        if not confirmed and not topics & REFUND_TOPICS:
            return "reject", "a refund reply must rest on the refund policy or the order"
    return "approve", "within policy"


def customer_advocate(review: Mapping[str, Any]) -> Vote:
    draft = str(review.get("draft", ""))
    if not review.get("complete", True):
        return "reject", "the research did not reach an answer"
    if len(draft) < MIN_DRAFT_CHARS:
        return "reject", "too short to help the customer"
    if len(draft) > MAX_DRAFT_CHARS:
        return "reject", "too long for a support reply"
    if not any(e.get("found") for e in review.get("evidence", ())):
        return "reject", "the draft gives the customer nothing they can act on"
    if _BLAME.search(draft):
        return "reject", "the tone blames the customer"
    return "approve", "clear and polite"


RULES = {
    "fact_checker": fact_checker,
    "policy_officer": policy_officer,
    "customer_advocate": customer_advocate,
}


def majority(votes: Sequence[Mapping[str, Any]]) -> str:
    """``approve`` when more than half of the votes approve, else ``reject``."""
    approvals = sum(1 for v in votes if v["vote"] == "approve")
    return "approve" if approvals * 2 > len(votes) else "reject"
