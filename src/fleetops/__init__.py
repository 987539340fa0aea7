"""fleetops: the runtime and operations plane for multi-agent (LLM agent) systems.

The names here are the public API; each subsystem package has its own public face.
"""

from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._clock import VirtualClock as VirtualClock
from ._exceptions import Closed as Closed
from ._exceptions import ConfigError as ConfigError
from ._exceptions import FleetOpsError as FleetOpsError
from ._exceptions import LeaseLost as LeaseLost
from ._exceptions import SchemaError as SchemaError
from ._exceptions import StoreConflict as StoreConflict
from ._exceptions import StoreError as StoreError
from ._exceptions import StoreUnavailable as StoreUnavailable
from ._exceptions import SyncFailed as SyncFailed
from ._exceptions import TaskFailed as TaskFailed
from ._exceptions import UnknownTask as UnknownTask
from ._exceptions import UsageError as UsageError
from .queue import QueueClient as QueueClient
from .queue import RetryPolicy as RetryPolicy
from .runtime import Context as Context
from .runtime import EffectCall as EffectCall
from .runtime import TaskInfo as TaskInfo
from .runtime import agent as agent
from .store import open_store as open_store

__version__ = "0.1.0"
