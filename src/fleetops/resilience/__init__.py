"""Clock-injected resilience primitives.

:class:`TokenBucket` (rate limits and quotas), :class:`CircuitBreaker`,
:func:`retry_async` (exponential backoff with full jitter that honours Retry-After),
:class:`Bulkhead` (concurrency caps) and :class:`DegradationPolicy` (ordered
fallbacks). Everything that waits does so on the :class:`~fleetops.Clock` it is given,
so all of it runs on virtual time in tests.
"""

from ._breaker import BreakerSettings as BreakerSettings
from ._breaker import BreakerState as BreakerState
from ._breaker import CircuitBreaker as CircuitBreaker
from ._bulkhead import Bulkhead as Bulkhead
from ._degradation import DegradationPolicy as DegradationPolicy
from ._degradation import DegradationStep as DegradationStep
from ._degradation import Degraded as Degraded
from ._degradation import degrade_on_outage as degrade_on_outage
from ._errors import BulkheadFull as BulkheadFull
from ._errors import CircuitOpen as CircuitOpen
from ._errors import DegradationExhausted as DegradationExhausted
from ._errors import RateLimited as RateLimited
from ._errors import ResilienceError as ResilienceError
from ._errors import TokenRequestTooLarge as TokenRequestTooLarge
from ._retry import Backoff as Backoff
from ._retry import retry_after_hint as retry_after_hint
from ._retry import retry_async as retry_async
from ._token_bucket import TokenBucket as TokenBucket
