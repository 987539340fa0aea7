"""The fleetops exception tree.

Every error fleetops raises on purpose derives from :class:`FleetOpsError`. Errors
that mean "you asked for something wrong" are kept apart from errors that mean
"something broke", so callers can tell a user's mistake from an outage::

    FleetOpsError
    ├── UsageError                 the caller's input is wrong; nothing was changed
    │   ├── ConfigError            a setting, spec field or CLI argument is invalid
    │   └── UnknownTask            no task has that id
    ├── LeaseLost                  a lease holder's write was fenced off (stale epoch)
    ├── TaskFailed                 an awaited child task ended in a terminal failure
    ├── StoreError                 the store could not be reached or answered wrongly
    │   └── StoreUnavailable       the store is down or refused the connection
    │       └── StoreConflict      the store broke a deadlock by ending a transaction
    ├── SchemaError                the store's schema is newer than this fleetops
    └── Closed                     the object was closed by its owner and is not usable
"""

from __future__ import annotations


class FleetOpsError(Exception):
    """A fleetops operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__class__.__doc__ or self.__class__.__name__).strip())


class UsageError(FleetOpsError):
    """The request is invalid; nothing was changed."""


class ConfigError(UsageError):
    """A setting is invalid.

    Carries the field path, the bad value and how to fix it, so a person can act on it.
    """

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}: invalid value {value!r}: {fix}")


class UnknownTask(UsageError):
    """No task has that id."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"no task has id {task_id}")


class LeaseLost(FleetOpsError):
    """The lease on this task was revoked or taken over; the write was rejected."""

    def __init__(self, task_id: int, epoch: int) -> None:
        self.task_id = task_id
        self.epoch = epoch
        super().__init__(f"lease on task {task_id} at epoch {epoch} is no longer held")


class TaskFailed(FleetOpsError):
    """An awaited task ended without succeeding."""

    def __init__(self, task_id: int, state: str, reason: str | None) -> None:
        self.task_id = task_id
        self.state = state
        self.reason = reason
        super().__init__(f"task {task_id} ended {state}: {reason or 'no reason recorded'}")


class StoreError(FleetOpsError):
    """The store failed to carry out an operation."""


class StoreUnavailable(StoreError):
    """The store cannot be reached."""


class SyncFailed(StoreError):
    """The disk refused to sync a commit. The write stands, but whether it would
    survive a power cut is unknown, so it is not acknowledged; and it must not simply
    be made again, since it may be there. The store refuses further writes until
    everything committed is on disk by another way (see fleetops.store._sqlite)."""


class StoreConflict(StoreUnavailable):
    """The store ended a transaction to break a deadlock with another: nothing of it
    was kept, so it may simply be run again (the store's own methods do, a few times)."""


class SchemaError(FleetOpsError):
    """The store's schema was written by a newer fleetops; upgrade fleetops to use it."""


class Closed(FleetOpsError):
    """This object was closed and cannot be used any more."""
