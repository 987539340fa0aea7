"""Providers in the spec: the simulated LLM (the default) and OpenAI-compatible endpoints.

A provider named ``simulated`` always exists: when ``providers`` does not define it,
it is a :class:`SimulatedProvider` with default settings. ``kind`` selects the model
and may be left out for a simulated provider.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ._types import (
    EnvVarName,
    Fraction,
    Number,
    PositiveCount,
    PositiveSeconds,
    Problem,
    raise_problems,
)

BUILTIN_PROVIDER = "simulated"
"""The provider every cluster uses unless it names another."""

SPEC_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LatencyDistribution(BaseModel):
    """How long a simulated completion takes."""

    model_config = SPEC_CONFIG

    distribution: Literal["lognormal", "normal", "uniform", "constant"] = "lognormal"
    """The shape of the latency distribution."""
    mean_ms: Annotated[Number, Field(gt=0)] = 800.0
    """Mean latency in milliseconds."""
    stddev_ms: Annotated[Number, Field(ge=0)] = 400.0
    """Standard deviation in milliseconds (ignored for 'constant')."""
    min_ms: Annotated[Number, Field(ge=0)] = 50.0
    """No completion is faster than this, in milliseconds."""

    @model_validator(mode="after")
    def _floor_below_mean(self) -> LatencyDistribution:
        if self.min_ms > self.mean_ms:
            raise_problems(
                [
                    Problem(
                        ("min_ms",),
                        self.min_ms,
                        f"min_ms is above mean_ms ({self.mean_ms:g})",
                        "use a min_ms no larger than mean_ms",
                    )
                ]
            )
        return self


class TokenCounts(BaseModel):
    """Token counts a simulated completion reports (means; each call varies around them)."""

    model_config = SPEC_CONFIG

    prompt_mean: PositiveCount = 400
    """Mean prompt tokens per call."""
    completion_mean: PositiveCount = 200
    """Mean completion tokens per call."""


class TokenPricing(BaseModel):
    """What tokens cost, for the clusters' ``cost_per_hour`` quota."""

    model_config = SPEC_CONFIG

    prompt_per_1k: Annotated[Number, Field(ge=0)] = 0.0
    """Cost of 1000 prompt tokens, in the fleet's currency."""
    completion_per_1k: Annotated[Number, Field(ge=0)] = 0.0
    """Cost of 1000 completion tokens, in the fleet's currency."""


class SimulatedProvider(BaseModel):
    """A simulated LLM: seeded, with configurable latency, failures and token counts."""

    model_config = SPEC_CONFIG

    kind: Literal["simulated"] = "simulated"
    latency: LatencyDistribution = LatencyDistribution()
    error_rate: Fraction = 0.0
    """Fraction of calls that fail with a server error (HTTP 500)."""
    rate_limit_rate: Fraction = 0.0
    """Fraction of calls answered with HTTP 429 (rate limited)."""
    tokens: TokenCounts = TokenCounts()
    pricing: TokenPricing = TokenPricing()
    seed: Annotated[int, Field(strict=True)] | None = None
    """Random seed; the same seed gives the same latencies, failures and token counts."""

    @model_validator(mode="after")
    def _rates_fit(self) -> SimulatedProvider:
        if self.error_rate + self.rate_limit_rate > 1:
            raise_problems(
                [
                    Problem(
                        ("rate_limit_rate",),
                        self.rate_limit_rate,
                        "error_rate and rate_limit_rate add up to more than 1",
                        "lower one of them so that their sum is at most 1",
                    )
                ]
            )
        return self


class OpenAIProvider(BaseModel):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LiteLLM, ...)."""

    model_config = SPEC_CONFIG

    kind: Literal["openai"]
    base_url: Annotated[str, Field(strict=True, pattern=r"^https?://\S+$")]
    """The API root, e.g. https://api.openai.com/v1 ('/chat/completions' is appended)."""
    model: Annotated[str, Field(strict=True, min_length=1)]
    """The model name sent with every request."""
    api_key_env: EnvVarName | None = None
    """The environment variable holding the API key; leave it out for servers without one."""
    timeout: PositiveSeconds = 60.0
    """Per-request timeout."""
    pricing: TokenPricing = TokenPricing()


def _provider_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("kind", BUILTIN_PROVIDER)
        return kind if isinstance(kind, str) else repr(kind)
    return str(getattr(value, "kind", BUILTIN_PROVIDER))


ProviderSpec = Annotated[
    Annotated[SimulatedProvider, Tag("simulated")] | Annotated[OpenAIProvider, Tag("openai")],
    Discriminator(_provider_kind),
]
PROVIDER_KINDS = ("simulated", "openai")
