"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TaskSubmit(BaseModel):
    """A task to submit, addressed ``cluster/agent``."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="'cluster/agent', e.g. 'intake/classify'", min_length=3)
    payload: Any = None
    priority: int = Field(0, ge=-1000, le=1000)
    # strict: a number, not a string or true (read as 1 s)
    deadline: float | None = Field(
        None, description="seconds since the epoch", allow_inf_nan=False, strict=True
    )
    run_after: float | None = Field(
        None,
        description="seconds since the epoch: the task waits in the queue until then",
        allow_inf_nan=False,
        strict=True,
    )
    delay: float | None = Field(
        None,
        ge=0,
        description="seconds the task waits in the queue first (the server's clock; "
        "instead of run_after)",
        allow_inf_nan=False,
        strict=True,
    )
    deadline_in: float | None = Field(
        None,
        gt=0,
        description="seconds the task has to finish in, from now (the server's clock; "
        "instead of deadline)",
        allow_inf_nan=False,
        strict=True,
    )

    @model_validator(mode="after")
    def _one_start(self) -> TaskSubmit:
        if self.run_after is not None and self.delay is not None:
            raise ValueError("give run_after or delay, not both")
        if self.deadline is not None and self.deadline_in is not None:
            raise ValueError("give deadline or deadline_in, not both")
        if self.delay is not None and self.deadline_in is not None:
            if self.delay >= self.deadline_in:
                raise ValueError(
                    f"delay ({self.delay:g} s) is not shorter than deadline_in "
                    f"({self.deadline_in:g} s): the task would be due after its deadline"
                )
        return self

    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the same key answers the same task for as long as the store keeps "
        "it (store.keep_finished after it finished, 7 days by default)",
    )
    max_attempts: int = Field(0, ge=0, le=100, description="0: the agent's retry policy")


class Submitted(BaseModel):
    id: int
    created: bool


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="the whole fleet spec, as YAML text")
    #: who and why, kept in the change log: a name and a sentence, not a document
    actor: str | None = Field(None, max_length=200)
    reason: str = Field("", max_length=2000)
    rollout: list[str] = Field(default_factory=list, description="clusters to restart anyway")


class ApplyResponse(BaseModel):
    change_id: int
    diff: list[dict[str, Any]]
    actions: list[str]
