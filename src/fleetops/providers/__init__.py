"""The LLM gateway and its providers.

Agents reach models through one :class:`Gateway`, which routes a :class:`ChatRequest`
to a named :class:`Provider` behind a circuit breaker, retries and a fallback chain,
within the cluster's tokens-per-minute quota, and records every call in
:class:`CallStats` under the OpenTelemetry GenAI attribute names. Two providers ship:
:class:`SimulatedProvider` (the default: seeded latency, failures and ReAct-style
replies) and :class:`OpenAIProvider` (any OpenAI-compatible chat-completions server).
"""

from ._errors import AllProvidersFailed as AllProvidersFailed
from ._errors import InvalidChatRequest as InvalidChatRequest
from ._errors import MissingAPIKey as MissingAPIKey
from ._errors import ProviderError as ProviderError
from ._errors import ProviderRateLimited as ProviderRateLimited
from ._errors import ProviderRequestRejected as ProviderRequestRejected
from ._errors import ProviderResponseError as ProviderResponseError
from ._errors import ProviderUnavailable as ProviderUnavailable
from ._errors import UnknownProvider as UnknownProvider
from ._gateway import Gateway as Gateway
from ._gateway import Route as Route
from ._models import ChatMessage as ChatMessage
from ._models import ChatRequest as ChatRequest
from ._models import ChatResponse as ChatResponse
from ._models import ToolCall as ToolCall
from ._models import ToolSpec as ToolSpec
from ._models import Usage as Usage
from ._openai import OpenAIConfig as OpenAIConfig
from ._openai import OpenAIProvider as OpenAIProvider
from ._protocol import Provider as Provider
from ._simulated import LatencyModel as LatencyModel
from ._simulated import ReActScript as ReActScript
from ._simulated import Script as Script
from ._simulated import ScriptedReply as ScriptedReply
from ._simulated import SimulatedProvider as SimulatedProvider
from ._stats import CallRecord as CallRecord
from ._stats import CallStats as CallStats
