"""Providers in the spec: the simulated LLM (the default) and OpenAI-compatible endpoints.

A provider named ``simulated`` always exists: when ``providers`` does not define it,
it is a :class:`SimulatedProviderSpec` with default settings. ``kind`` selects the
model and may be left out for a simulated provider. Each spec builds the matching
:mod:`fleetops.providers` object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from .._clock import Clock
from ..providers import LatencyModel, OpenAIConfig, OpenAIProvider, SimulatedProvider
from ..providers._openai import DEFAULT_API_KEY_ENV, DEFAULT_TIMEOUT
from ..providers._simulated import DEFAULT_MODEL, DEFAULT_RETRY_AFTER
from ._types import (
    SPEC_CONFIG,
    EnvVarName,
    Fraction,
    Number,
    PositiveSeconds,
    Problem,
    Seconds,
    human_duration,
    raise_problems,
)

BUILTIN_PROVIDER = "simulated"
"""The provider every cluster uses unless it names another."""

_LATENCY = LatencyModel()


class LatencySettings(BaseModel):
    """A lognormal latency given by its median and 95th percentile."""

    model_config = SPEC_CONFIG

    median: Seconds = _LATENCY.median
    """Half of all calls are faster than this; 0 means no latency at all."""
    p95: Seconds = _LATENCY.p95
    """95% of all calls are faster than this."""

    @model_validator(mode="after")
    def _check(self) -> LatencySettings:
        if self.p95 < self.median:
            raise_problems(
                [
                    Problem(
                        ("p95",),
                        self.p95,
                        f"p95 is below the median ({human_duration(self.median)})",
                        "use a p95 no smaller than the median",
                    )
                ]
            )
        return self


class TokenPricing(BaseModel):
    """What tokens cost, for the clusters' ``cost_per_hour`` quota."""

    model_config = SPEC_CONFIG

    prompt_per_1k: Annotated[Number, Field(ge=0)] = 0.0
    """Cost of 1000 prompt (input) tokens, in the fleet's currency."""
    completion_per_1k: Annotated[Number, Field(ge=0)] = 0.0
    """Cost of 1000 completion (output) tokens, in the fleet's currency."""


class SimulatedProviderSpec(BaseModel):
    """A simulated LLM: seeded latency, failures, token counts and ReAct-style replies."""

    model_config = SPEC_CONFIG

    kind: Literal["simulated"] = "simulated"
    model: Annotated[str, Field(strict=True, min_length=1)] = DEFAULT_MODEL
    """The model name the simulated replies report."""
    latency: LatencySettings = LatencySettings()
    error_rate: Fraction = 0.0
    """Share of calls that fail as unavailable (a 5xx answer)."""
    rate_limit_rate: Fraction = 0.0
    """Share of calls answered with 429 (rate limited)."""
    retry_after: Seconds = DEFAULT_RETRY_AFTER
    """The Retry-After a simulated 429 carries."""
    seed: Annotated[int, Field(strict=True)] = 0
    """The same seed gives the same latencies, failures and replies."""
    pricing: TokenPricing = TokenPricing()

    @model_validator(mode="after")
    def _rates_fit(self) -> SimulatedProviderSpec:
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

    def build(self, name: str, *, clock: Clock | None = None) -> SimulatedProvider:
        """The provider this spec describes, registered in the gateway as ``name``."""
        return SimulatedProvider(
            name,
            model=self.model,
            seed=self.seed,
            latency=LatencyModel(median=self.latency.median, p95=self.latency.p95),
            error_rate=self.error_rate,
            rate_limit_rate=self.rate_limit_rate,
            retry_after=self.retry_after,
            clock=clock,
        )


class OpenAIProviderSpec(BaseModel):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LiteLLM, ...)."""

    model_config = SPEC_CONFIG

    kind: Literal["openai"]
    base_url: Annotated[str, Field(strict=True, pattern=r"^https?://[^\s/]+\S*$")]
    """The API root, e.g. https://api.openai.com/v1 ('/chat/completions' is appended)."""
    model: Annotated[str, Field(strict=True, min_length=1)]
    """The model name sent with every request."""
    api_key_env: EnvVarName | None = DEFAULT_API_KEY_ENV
    """The environment variable holding the API key; null for servers that need none."""
    timeout: PositiveSeconds = DEFAULT_TIMEOUT
    """Per-request timeout."""
    pricing: TokenPricing = TokenPricing()
    fallbacks: tuple[Annotated[str, Field(strict=True, min_length=1)], ...] = ()
    """Providers to try, in order, when this one fails (breaker open, retries spent)."""

    def config(self, name: str) -> OpenAIConfig:
        return OpenAIConfig(
            base_url=self.base_url,
            model=self.model,
            api_key_env=self.api_key_env,
            name=name,
            timeout=self.timeout,
        )

    def build(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> OpenAIProvider:
        """The provider this spec describes; reads the API key from ``environ``.

        Raises :class:`~fleetops.providers.MissingAPIKey` when the variable is unset.
        """
        return OpenAIProvider(
            self.config(name), clock=clock, environ=os.environ if environ is None else environ
        )


def _provider_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("kind", BUILTIN_PROVIDER)
        return kind if isinstance(kind, str) else repr(kind)
    return str(getattr(value, "kind", BUILTIN_PROVIDER))


ProviderSpec = Annotated[
    Annotated[SimulatedProviderSpec, Tag("simulated")]
    | Annotated[OpenAIProviderSpec, Tag("openai")],
    Discriminator(_provider_kind),
]
PROVIDER_KINDS = ("simulated", "openai")
