"""The public API is deliberate: this test fails when the top-level exports drift."""

from __future__ import annotations

from types import ModuleType

import fleetops

EXPECTED = {
    "Clock",
    "Closed",
    "ConfigError",
    "Context",
    "EffectCall",
    "FleetOpsError",
    "LeaseLost",
    "QueueClient",
    "RetryPolicy",
    "SchemaError",
    "StoreError",
    "StoreConflict",
    "StoreUnavailable",
    "SyncFailed",
    "SystemClock",
    "TaskFailed",
    "TaskInfo",
    "UnknownTask",
    "UsageError",
    "VirtualClock",
    "agent",
    "open_store",
}


def test_top_level_exports_are_exactly_the_public_api() -> None:
    # subpackages show up as attributes once anything imported them: not exports
    public = {
        name
        for name in dir(fleetops)
        if not name.startswith("_") and not isinstance(getattr(fleetops, name), ModuleType)
    }
    assert public == EXPECTED


def test_every_error_derives_from_the_one_root() -> None:
    for name in EXPECTED:
        obj = getattr(fleetops, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fleetops.FleetOpsError), name


def test_user_errors_are_kept_apart_from_breakage() -> None:
    assert issubclass(fleetops.ConfigError, fleetops.UsageError)
    assert not issubclass(fleetops.StoreUnavailable, fleetops.UsageError)
    # a transaction ended to break a deadlock is an outage of a moment: tried again
    assert issubclass(fleetops.StoreConflict, fleetops.StoreUnavailable)
    # committed but not synced: not to be retried as if nothing had happened
    assert issubclass(fleetops.SyncFailed, fleetops.StoreError)
    assert not issubclass(fleetops.SyncFailed, fleetops.StoreUnavailable)
    assert not issubclass(fleetops.LeaseLost, fleetops.UsageError)
