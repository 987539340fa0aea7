"""Durable tasks: submit, claim with a fenced lease, complete or fail, retry, dead-letter.

The SQL lives in :mod:`fleetops.store`; this package is the async, batched face the
workers and the control plane use, and the retry policy.
"""

from ._client import QueueClient as QueueClient
from ._retry import RetryPolicy as RetryPolicy
