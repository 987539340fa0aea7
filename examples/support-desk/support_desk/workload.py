"""A workload of customer requests: a realistic mix, reproducible by seed.

About a third ask where an order is, a fifth want a refund or a return, a fifth have
a technical problem and the rest ask about billing, invoices and the like. Many mention
an order number; some of those numbers do not exist, as happens with real customers.

``python -m support_desk.workload --count 50 --seed 7`` prints the requests as JSON
lines, ready for ``intake/classify``; with ``--api URL`` it submits them to a running
fleet's API instead (each under its ``request_id`` as the idempotency key, so running
the same command twice submits nothing new).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from .orders import default_order_book

INTAKE_ADDRESS = "intake/classify"

_ORDER_STATUS = (
    "Hi, where is my order {order}? It was supposed to arrive last week.",
    "Can you tell me the status of order {order}? The tracking has not moved for days.",
    "My parcel for {order} still has not arrived. When will it be delivered?",
    "Has order {order} shipped yet? I need it before the weekend.",
    "Which carrier is delivering {order}, and do you have a tracking number?",
)
_ORDER_STATUS_NO_NUMBER = (
    "I ordered a backpack ten days ago and nothing has arrived yet. Where is it?",
    "How long does delivery usually take to Austria?",
    "My package says delivered but it is not at my door.",
)
_REFUND = (
    "I returned the items from order {order} two weeks ago. When do I get my money back?",
    "The headphones in order {order} arrived broken. I want a refund please.",
    "Please cancel order {order} and refund me, I ordered the wrong size.",
    "I received the wrong item in {order}. Can I exchange it or get a refund?",
)
_REFUND_NO_NUMBER = (
    "How long does a refund take to show up on my credit card?",
    "Can I return a gift card I did not use?",
    "What is your return policy for shoes that I have worn once?",
)
_TECHNICAL = (
    "I forgot my password and the reset email never arrives.",
    "The app crashes every time I open my wishlist.",
    "My account is locked after I typed the wrong password a few times.",
    "I lost my phone and cannot log in because of two-factor authentication.",
    "Checkout shows an error when I try to pay with my card.",
    "The website page will not load on my laptop, it just stays blank.",
)
_OTHER = (
    "Can I get an invoice with my company VAT number on it?",
    "I think I was charged twice for the same purchase.",
    "Which payment methods do you accept? Is PayPal possible?",
    "How do I stop getting your newsletter?",
    "The price of the jacket dropped a day after I bought it. Can I get the difference?",
    "What are your opening hours for phone support?",
    "How long is a gift card valid?",
)
_SIGN_OFFS = ("", " Thanks!", " Thank you.", " Regards, {name}", " Cheers")
_NAMES = ("alex", "bea", "carlos", "dana", "eli", "fatima", "goran", "hana", "ivan", "julia")
_CHANNELS = ("email", "chat", "web_form")

# (share of requests, templates, whether the message names an order)
_MIX: tuple[tuple[float, tuple[str, ...], bool], ...] = (
    (0.30, _ORDER_STATUS, True),
    (0.06, _ORDER_STATUS_NO_NUMBER, False),
    (0.16, _REFUND, True),
    (0.05, _REFUND_NO_NUMBER, False),
    (0.23, _TECHNICAL, False),
    (0.20, _OTHER, False),
)
UNKNOWN_ORDER_SHARE = 0.2


def _unknown_order_number(rng: random.Random, known: Sequence[str]) -> str:
    while True:
        number = f"SD-{rng.randint(20000, 99999)}"
        if number not in known:
            return number


def generate_requests(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` customer requests, each ``{"request_id", "customer", "channel", "message"}``.

    The same ``n`` and ``seed`` always give the same requests; request ids include the
    seed, so two workloads with different seeds never share one.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    rng = random.Random(seed)
    book = default_order_book()
    known = book.numbers()
    shares = [share for share, _, _ in _MIX]
    requests = []
    for index in range(n):
        _, templates, names_order = rng.choices(_MIX, weights=shares)[0]
        template = rng.choice(templates)
        name = rng.choice(_NAMES)
        customer = f"{name}.{rng.randint(1, 999)}@example.com"
        order = ""
        if names_order:
            if rng.random() < UNKNOWN_ORDER_SHARE:
                order = _unknown_order_number(rng, known)
            else:
                order = rng.choice(known)
                found = book.get(order)
                customer = str(found["customer"]) if found else customer
        sign_off = rng.choice(_SIGN_OFFS).format(name=name.capitalize())
        requests.append(
            {
                "request_id": f"req-{seed}-{index + 1:04d}",
                "customer": customer,
                "channel": rng.choice(_CHANNELS),
                "message": template.format(order=order) + sign_off,
            }
        )
    return requests


def submit(api: str, requests: Sequence[dict[str, Any]], rate: float | None) -> list[int]:
    """POST each request to ``intake/classify`` through the fleet's API; answer task ids."""
    import httpx

    ids = []
    with httpx.Client(base_url=api.rstrip("/"), timeout=10) as client:
        for request in requests:
            body = {
                "agent": INTAKE_ADDRESS,
                "payload": request,
                "idempotency_key": request["request_id"],
            }
            answer = _post(client, body)
            ids.append(int(answer.json()["id"]))
            if rate:
                time.sleep(1 / rate)
    return ids


def _post(client: Any, body: dict[str, Any], patience: float = 60.0) -> Any:
    """POST one request; while the fleet answers 503 (its store restarting, say) or
    cannot be reached, wait as it asks and send it again. Safe to repeat: the
    request's idempotency key makes the fleet store it once."""
    import httpx

    give_up = time.monotonic() + patience
    while True:
        try:
            answer = client.post("/api/v1/tasks", json=body)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code != 503:
            answer.raise_for_status()
            return answer
        if time.monotonic() > give_up:
            if answer is not None:
                answer.raise_for_status()
            raise RuntimeError(f"the fleet API did not answer for {patience:.0f} s")
        wait = float(answer.headers.get("Retry-After", 1)) if answer is not None else 1.0
        time.sleep(wait)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support_desk.workload", description=__doc__)
    parser.add_argument("--count", type=int, default=50, help="how many requests (50)")
    parser.add_argument("--seed", type=int, default=7, help="the same seed, the same requests")
    parser.add_argument("--api", help="submit to the fleet API at this URL instead of printing")
    parser.add_argument("--rate", type=float, help="requests per second when submitting")
    args = parser.parse_args(argv)
    requests = generate_requests(args.count, args.seed)
    if args.api is None:
        for request in requests:
            sys.stdout.write(json.dumps(request) + "\n")
        return 0
    ids = submit(args.api, requests, args.rate)
    sys.stdout.write(json.dumps({"submitted": len(ids), "task_ids": ids}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
