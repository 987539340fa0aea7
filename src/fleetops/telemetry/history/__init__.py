"""Metric history: an embedded time-series store with retention tiers.

Raw samples are kept 24 hours, one-minute rollups 7 days and one-hour rollups 90
days (see :class:`RetentionPolicy`). The dashboard, the alert engine and the
autoscaler query it with :meth:`HistoryStore.query_range` (``avg``, ``max``,
``rate`` … per step) and :meth:`HistoryStore.histogram_quantile`::

    history = HistoryStore(".fleetops/history.db")
    history.ingest([Sample("agent_utilization", {"cluster": "research"}, 0.7)])
    history.maintain()          # every few seconds: downsample, compact, expire
    history.query_range("agent_utilization", {"cluster": "research"},
                        start=now - 3600, end=now, step=60, fn="max")
"""

from ._model import AGGREGATIONS as AGGREGATIONS
from ._model import FUNCTIONS as FUNCTIONS
from ._model import DownsampleResult as DownsampleResult
from ._model import HistoryStats as HistoryStats
from ._model import RetentionResult as RetentionResult
from ._model import Sample as Sample
from ._model import Series as Series
from ._model import SeriesInfo as SeriesInfo
from ._policy import TIERS as TIERS
from ._policy import RetentionPolicy as RetentionPolicy
from ._store import HistoryStore as HistoryStore
