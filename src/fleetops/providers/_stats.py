"""Per-call statistics of the gateway, keyed by the OpenTelemetry GenAI conventions.

Every provider call the gateway makes (each retry and fallback included) becomes a
:class:`CallRecord`. :class:`CallStats` keeps the recent ones and running totals, and
hands each record to its subscribers, which is how telemetry consumes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..telemetry import get_logger

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
DURATION = "gen_ai.client.operation.duration"
ERROR_TYPE = "error.type"
OUTCOME = "fleetops.llm.outcome"
CLUSTER = "fleetops.cluster"
ATTEMPT = "fleetops.llm.attempt"
FALLBACK_LEVEL = "fleetops.llm.fallback_level"

DEFAULT_KEEP = 1000

log = get_logger("fleetops.providers")

Attributes = dict[str, str | int | float]
CallHook = Callable[["CallRecord"], None]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One provider call: who was asked, what it cost, how long it took, how it ended.

    ``outcome`` is ``ok``, ``rate_limited``, ``unavailable``, ``rejected``,
    ``bad_response``, ``circuit_open`` or ``error``; ``error_type`` is the exception's
    class name on failure. ``attempt`` counts from 1 within one route; ``fallback_level``
    is 0 for the requested provider and grows along the fallback chain.
    """

    operation: str
    provider: str
    request_model: str | None
    response_model: str | None
    input_tokens: int
    output_tokens: int
    duration: float
    outcome: str
    error_type: str | None
    cluster: str
    attempt: int
    fallback_level: int
    started_at: float

    def attributes(self) -> Attributes:
        """The record under GenAI semantic-convention names (and ``fleetops.*`` extras)."""
        out: Attributes = {
            OPERATION_NAME: self.operation,
            PROVIDER_NAME: self.provider,
            INPUT_TOKENS: self.input_tokens,
            OUTPUT_TOKENS: self.output_tokens,
            DURATION: self.duration,
            OUTCOME: self.outcome,
            CLUSTER: self.cluster,
            ATTEMPT: self.attempt,
            FALLBACK_LEVEL: self.fallback_level,
        }
        if self.request_model is not None:
            out[REQUEST_MODEL] = self.request_model
        if self.response_model is not None:
            out[RESPONSE_MODEL] = self.response_model
        if self.error_type is not None:
            out[ERROR_TYPE] = self.error_type
        return out


class CallStats:
    """The last ``keep`` call records, totals per provider and model, and subscribers."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self._recent: deque[CallRecord] = deque(maxlen=keep)
        self._totals: dict[tuple[str, str | None], dict[str, int | float]] = {}
        self._hooks: list[CallHook] = []

    @property
    def records(self) -> tuple[CallRecord, ...]:
        """The most recent records, oldest first."""
        return tuple(self._recent)

    def subscribe(self, hook: CallHook) -> Callable[[], None]:
        """Call ``hook(record)`` for every new record; answer a function that unsubscribes."""
        self._hooks.append(hook)

        def unsubscribe() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return unsubscribe

    def add(self, record: CallRecord) -> None:
        """Keep ``record``, count it, and pass it to every subscriber."""
        self._recent.append(record)
        totals = self._totals.setdefault(
            (record.provider, record.request_model),
            {"calls": 0, "errors": 0, INPUT_TOKENS: 0, OUTPUT_TOKENS: 0, DURATION: 0.0},
        )
        totals["calls"] += 1
        totals["errors"] += record.outcome != "ok"
        totals[INPUT_TOKENS] += record.input_tokens
        totals[OUTPUT_TOKENS] += record.output_tokens
        totals[DURATION] += record.duration
        for hook in list(self._hooks):
            try:
                hook(record)
            except Exception as exc:  # a broken consumer must not fail the LLM call
                log.warning("llm.stats_hook_failed", hook=repr(hook), error=repr(exc))

    def totals(self) -> list[Attributes]:
        """Running totals, one entry per provider and requested model."""
        out: list[Attributes] = []
        for (provider, model), counts in self._totals.items():
            entry: Attributes = {PROVIDER_NAME: provider, **counts}
            if model is not None:
                entry[REQUEST_MODEL] = model
            out.append(entry)
        return out
