"""Chaos experiments that prove recovery: faults, a steady-state hypothesis, checks."""

from ._cut_store import CutStoreConfig as CutStoreConfig
from ._cut_store import CutStoreResult as CutStoreResult
from ._cut_store import cut_store as cut_store
from ._kill_workers import KillWorkersConfig as KillWorkersConfig
from ._kill_workers import KillWorkersResult as KillWorkersResult
from ._kill_workers import kill_workers as kill_workers
from ._ledger import Ledger as Ledger
from ._stats import percentile as percentile
