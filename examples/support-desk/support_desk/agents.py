"""The support desk's agents, one cluster each stage.

::

    intake/classify ─call─▶ research/investigate ─call─▶ review/review ─call ×3─▶ review/reviewer
          │
          └─ effect "deliver_reply" ─▶ outbox (an idempotent receiver keyed by call.key)

Payloads (small JSON objects):

- ``intake/classify``: ``{"request_id", "customer", "channel", "message"}`` (only
  ``message`` is required) and optionally ``"outbox"`` (a file path). Answers the
  delivered reply; see :func:`classify`.
- ``research/investigate``: ``{"request_id", "message", "category", "summary",
  "order_number"}``. Answers the draft, the tool calls made and the review.
- ``review/review``: ``{"request_id", "category", "order_number", "draft", "complete",
  "evidence"}``. Answers the three votes and the majority verdict.
- ``review/reviewer``: the review payload plus ``"persona"``. Answers one vote.

Child tasks are sent with explicit keys, so a redelivered parent finds the children
it already started, and one priority above their parent, so work already under way
is finished before new requests are taken on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetops import Context, EffectCall, RetryPolicy, TaskFailed, TaskInfo, agent
from fleetops.providers import ChatResponse, ProviderError

from .orders import find_order_number
from .outbox import append_once, default_outbox_path
from .rules import PERSONAS, RULES, classify_text, majority
from .tools import TOOLS, run_tool

DEFAULT_MAX_STEPS = 4
DELIVER_EFFECT = "deliver_reply"
SUMMARY_MAX_TOKENS = 96
RESEARCH_MAX_TOKENS = 400
NOTE_MAX_TOKENS = 96
CLIP = 200

RETRY = RetryPolicy(max_attempts=3, backoff_base=0.2, backoff_max=5.0)

HANDOFF_REPLY = (
    "Thank you for getting in touch. A member of our support team is looking into your "
    "request personally and will reply within one business day."
)
RESEARCH_SYSTEM_PROMPT = (
    "You are a support researcher for an online shop. Answer the customer's request using "
    "the tools: search_kb for policies and how-to articles, lookup_order for a specific "
    "order. Think step by step. When you know the answer, reply with 'Final Answer: ' "
    "followed by a short, friendly reply to the customer that uses only what the tools "
    "returned."
)
SUMMARY_SYSTEM_PROMPT = "Summarise the customer's request in one line for the support team."
REVIEW_INSTRUCTIONS = (
    "Start your answer with APPROVE or REJECT, then say why in one line. Reject a reply "
    "that is wrong, against policy or unkind."
)
_FINAL = re.compile(r"Final Answer:\s*", re.IGNORECASE)
_MODEL_REJECTS = re.compile(r"\bREJECT\b")


def final_answer(content: str | None) -> str | None:
    """The text after ``Final Answer:``, or None when the model gave no final answer."""
    if not content:
        return None
    parts = _FINAL.split(content, maxsplit=1)
    return parts[1].strip() or None if len(parts) == 2 else None


def _clip(text: str, limit: int = CLIP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _child_priority(task: TaskInfo) -> int:
    return task.priority + 1


# --- intake ------------------------------------------------------------------------------------


def _customer_request(task: TaskInfo) -> dict[str, str]:
    payload = task.payload
    if not isinstance(payload, Mapping) or not isinstance(payload.get("message"), str):
        raise ValueError(
            "intake/classify needs a payload like "
            '{"request_id": "req-1", "customer": "ann@example.com", "message": "..."}; '
            f"got {payload!r:.120}"
        )
    return {
        "request_id": str(payload.get("request_id") or f"task-{task.id}"),
        "customer": str(payload.get("customer") or "unknown"),
        "channel": str(payload.get("channel") or "email"),
        "message": payload["message"],
    }


async def _summarise(ctx: Context, message: str) -> str:
    """One line for the support team; the request's first words if the model is down."""
    try:
        response = await ctx.llm(
            [
                {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
                {"role": "user", "content": message},
            ],
            max_tokens=SUMMARY_MAX_TOKENS,
        )
    except ProviderError as exc:
        ctx.log.warning("support_desk.summary_degraded", extra={"error": str(exc)})
        return _clip(message, 120)
    text = final_answer(response.content) or response.content or message
    return _clip(text.splitlines()[0], 160)


async def deliver_reply(ctx: Context, outbox: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Send the reply once: an effect journaled under ``deliver_reply``.

    On a redelivered task the journaled result comes back without sending again; if a
    holder died while sending, the outbox sees the same ``call.key`` again and skips it.
    """

    async def send(call: EffectCall) -> dict[str, Any]:
        line = {**record, "fencing_token": call.fencing_token}
        written = await asyncio.to_thread(append_once, outbox, call.key, line)
        return {"key": call.key, "written": written, "reexecution": call.reexecution}

    delivered: dict[str, Any] = await ctx.effect(DELIVER_EFFECT, send)
    return delivered


@agent(name="classify", retry=RETRY)
async def classify(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    """Classify a customer request, have it researched and reviewed, deliver the reply.

    Answers ``{"request_id", "customer", "category", "keyword_hits", "summary",
    "order_number", "status": "sent" | "escalated", "reply", "research": {"steps",
    "complete", "tool_calls"} | None, "review": {"verdict", "approvals", "consensus",
    "votes"} | None, "error": str | None, "delivery": {"key", "written", "reexecution"}}``.
    A reply the reviewers reject, or research that failed for good, is escalated to a
    person: the customer gets a hand-off note instead of the draft. The wait for
    research is timed as an ``agent_coordination_efficiency`` sample.
    """
    request = _customer_request(task)
    category, hits = classify_text(request["message"])
    order_number = find_order_number(request["message"])
    summary = await _summarise(ctx, request["message"])
    error = None
    try:
        async with ctx.coordinate("research"):
            research: dict[str, Any] | None = await ctx.call(
                "research/investigate",
                {
                    "request_id": request["request_id"],
                    "message": request["message"],
                    "category": category,
                    "summary": summary,
                    "order_number": order_number,
                },
                key="investigate",
                priority=_child_priority(task),
            )
    except TaskFailed as exc:
        research, error = None, f"research failed: {exc}"
    review = research["review"] if research is not None else None
    approved = review is not None and review["verdict"] == "approve"
    status = "sent" if approved else "escalated"
    reply = research["draft"] if research is not None and approved else HANDOFF_REPLY
    outbox = Path(task.payload.get("outbox") or default_outbox_path())
    delivery = await deliver_reply(
        ctx,
        outbox,
        {
            "request_id": request["request_id"],
            "customer": request["customer"],
            "channel": request["channel"],
            "category": category,
            "status": status,
            "reply": reply,
        },
    )
    ctx.log.info(
        "support_desk.replied",
        extra={"request_id": request["request_id"], "category": category, "status": status},
    )
    return {
        "request_id": request["request_id"],
        "customer": request["customer"],
        "category": category,
        "keyword_hits": hits,
        "summary": summary,
        "order_number": order_number,
        "status": status,
        "reply": reply,
        "research": (
            None
            if research is None
            else {k: research[k] for k in ("steps", "complete", "tool_calls")}
        ),
        "review": review,
        "error": error,
        "delivery": delivery,
    }


# --- research ----------------------------------------------------------------------------------


async def _react_step(ctx: Context, step: int, messages: list[dict[str, Any]]) -> ChatResponse:
    """One model turn of the loop, journaled: a redelivered task replays the turns it
    already paid for (and gets the same answers) instead of asking the model again."""

    async def ask() -> dict[str, Any]:
        response = await ctx.llm(messages, tools=TOOLS, max_tokens=RESEARCH_MAX_TOKENS)
        return response.to_dict()

    return ChatResponse.from_dict(await ctx.effect(f"react-step-{step}", ask))


@agent(name="investigate", retry=RETRY)
async def investigate(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    """A ReAct loop over ``search_kb`` and ``lookup_order``, then a review of the draft.

    Each step asks the model with the tools offered; tool calls are run here and their
    results appended as ``tool`` messages; the loop ends at a final answer or after
    ``max_steps`` (payload, default 4) steps. The chain's length and whether it reached
    an answer feed the ``reasoning_chain_length`` and ``planning_success_rate`` metrics.
    Answers ``{"request_id", "draft", "complete", "steps", "tool_calls": [{"step",
    "tool", "arguments", "found", "refs"}], "evidence", "review"}``.
    """
    payload = task.payload
    max_steps = int(payload.get("max_steps", DEFAULT_MAX_STEPS))
    question = f"[{str(payload['category']).replace('_', ' ')}] {payload['message']}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": RESEARCH_SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    tool_calls: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    draft: str | None = None
    steps = 0
    while steps < max_steps and draft is None:
        steps += 1
        response = await _react_step(ctx, steps, messages)
        messages.append(response.to_message().to_dict())
        if not response.tool_calls:
            # a model that skips the 'Final Answer:' marker still answered
            draft = final_answer(response.content) or (response.content or "").strip() or None
            break
        for call in response.tool_calls:
            async with ctx.tool(call.name, call.id):  # an execute_tool span in the trace
                result = run_tool(call.name, call.arguments)
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result.text}
            )
            tool_calls.append(
                {
                    "step": steps,
                    "tool": call.name,
                    "arguments": {k: _clip(str(v)) for k, v in call.arguments.items()},
                    "found": result.found,
                    "refs": list(result.refs),
                }
            )
            evidence.append(result.evidence(call.name))
    complete = draft is not None
    ctx.report_reasoning(steps)
    ctx.report_plan(complete)
    if draft is None:
        draft = f"I looked into this in {steps} step(s) but could not reach an answer."
    review = await ctx.call(
        "review/review",
        {
            "request_id": payload.get("request_id"),
            "category": payload["category"],
            "order_number": payload.get("order_number"),
            "draft": draft,
            "complete": complete,
            "evidence": evidence,
        },
        key="review",
        priority=_child_priority(task),
    )
    return {
        "request_id": payload.get("request_id"),
        "draft": draft,
        "complete": complete,
        "steps": steps,
        "tool_calls": tool_calls,
        "evidence": evidence,
        "review": review,
    }


# --- review ------------------------------------------------------------------------------------


async def _ask_reviewer(ctx: Context, persona: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    try:
        vote: dict[str, Any] = await ctx.call(
            "reviewer",
            {**payload, "persona": persona},
            key=f"vote-{persona}",
            priority=_child_priority(ctx.task),
        )
    except TaskFailed as exc:  # a reviewer that cannot vote abstains, which does not approve
        return {"reviewer": persona, "vote": "abstain", "reason": f"no vote: {exc}", "note": ""}
    return vote


@agent(name="review", retry=RETRY)
async def review(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    """Three reviewers vote at once; a majority of all three must approve.

    Answers ``{"verdict": "approve" | "reject", "approvals", "consensus", "votes":
    [{"reviewer", "vote", "reason", "note"}, ...]}``. ``consensus`` is False when no
    two reviewers agreed (one abstained because its task failed); it feeds the
    ``consensus_success_rate`` metric, and the vote's duration
    ``agent_coordination_efficiency``.
    """
    async with ctx.coordinate("vote"):
        votes = await asyncio.gather(*(_ask_reviewer(ctx, p, task.payload) for p in PERSONAS))
    verdict = majority(votes)
    approvals = sum(1 for v in votes if v["vote"] == "approve")
    rejections = sum(1 for v in votes if v["vote"] == "reject")
    consensus = max(approvals, rejections) * 2 > len(votes)
    ctx.report_consensus(consensus)
    return {
        "verdict": verdict,
        "approvals": approvals,
        "consensus": consensus,
        "votes": list(votes),
    }


@agent(name="reviewer", retry=RETRY)
async def reviewer(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    """One persona's vote: its rules decide, and the model may veto with REJECT.

    Answers ``{"reviewer", "vote": "approve" | "reject", "reason", "note"}``, where
    ``note`` is the model's one-line comment.
    """
    payload = task.payload
    persona = str(payload.get("persona"))
    rule = RULES.get(persona)
    if rule is None:
        raise ValueError(f"unknown reviewer persona {persona!r}: use one of {', '.join(RULES)}")
    vote, reason = rule(payload)
    try:
        response = await ctx.llm(
            [
                {"role": "system", "content": f"{PERSONAS[persona]} {REVIEW_INSTRUCTIONS}"},
                {
                    "role": "user",
                    "content": f"Draft reply to a {payload.get('category')} request:\n"
                    f"{payload.get('draft', '')}",
                },
            ],
            max_tokens=NOTE_MAX_TOKENS,
        )
        note = _clip(final_answer(response.content) or response.content or "", 160)
    except ProviderError as exc:  # the rules still vote when the model is down
        note = f"(no comment: {type(exc).__name__})"
    if vote == "approve" and _MODEL_REJECTS.search(note):
        vote, reason = "reject", f"the model objects: {note}"
    return {"reviewer": persona, "vote": vote, "reason": reason, "note": note}
