"""Series identity: metric name plus sorted labels, mapped to small integer ids.

Every process keeps the whole id map in memory (a few hundred bytes per series) and
matches label selectors against it, the way Prometheus keeps the postings of its head
block in memory; the ``series`` table is the durable copy. Another process's new or
dropped series are picked up when the table's shape (row count, largest id) changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..._exceptions import ConfigError
from . import _schema as sql
from ._db import Database

LabelKey = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, LabelKey]

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def canonical_labels(labels: LabelKey) -> str:
    """The stored form of a label set: compact JSON with sorted keys."""
    return json.dumps(dict(labels), separators=(",", ":"), ensure_ascii=False)


def check_series(metric: object, labels: object, where: str) -> None:
    """Raise :class:`ConfigError` unless ``metric`` and ``labels`` name a valid series."""
    if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        raise ConfigError(
            f"{where}.metric",
            metric,
            "use a Prometheus metric name: letters, digits, '_' and ':', not starting with a digit",
        )
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where}.labels", labels, "use a mapping of label names to strings")
    for name, value in labels.items():
        if not isinstance(name, str) or not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ConfigError(
                f"{where}.labels",
                name,
                "use label names of letters, digits and '_', not starting with a digit or '__'",
            )
        if not isinstance(value, str):
            raise ConfigError(f"{where}.labels.{name}", value, "use a string label value")


def check_matchers(matchers: object, field: str = "matchers") -> dict[str, str]:
    if matchers is None:
        return {}
    if not isinstance(matchers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in matchers.items()
    ):
        raise ConfigError(
            field, matchers, "use a mapping of label names to the exact values to match"
        )
    return dict(matchers)


class SeriesIndex:
    """The in-memory id map of one history file."""

    def __init__(self) -> None:
        self.ids: dict[SeriesKey, int] = {}
        self.labels: dict[int, tuple[str, dict[str, str]]] = {}
        self.by_metric: dict[str, list[int]] = {}
        self._shape: tuple[int, int] = (0, 0)

    def refresh(self, db: Database) -> None:
        """Catch up with series other connections added or dropped."""
        count, max_id = db.execute(sql.SERIES_SHAPE).fetchone()
        shape = (int(count), int(max_id))
        if shape == self._shape:
            return
        known, known_max = self._shape
        if count - known == max_id - known_max and count >= known:
            self._add_rows(db.execute(sql.SERIES_AFTER, (known_max,)).fetchall())
        else:
            self.ids.clear()
            self.labels.clear()
            self.by_metric.clear()
            self._add_rows(db.execute(sql.ALL_SERIES).fetchall())
        self._shape = shape

    def _add_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for sid, metric, text in rows:
            labels = json.loads(text)
            self._add(int(sid), (metric, tuple(sorted(labels.items()))))

    def _add(self, sid: int, key: SeriesKey) -> None:
        metric, labels = key
        self.ids[key] = sid
        self.labels[sid] = (metric, dict(labels))
        self.by_metric.setdefault(metric, []).append(sid)

    def create(self, db: Database, keys: Iterable[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids for new series, inserted inside the caller's write transaction.

        The in-memory map is not touched: call :meth:`created` after the commit.
        """
        made: dict[SeriesKey, int] = {}
        for key in keys:
            metric, labels = key
            text = canonical_labels(labels)
            db.execute(sql.INSERT_SERIES, (metric, text))
            made[key] = int(db.scalar(sql.SERIES_ID, (metric, text)))
        return made

    def created(self, made: Mapping[SeriesKey, int]) -> None:
        count, max_id = self._shape
        for key, sid in made.items():
            if sid not in self.labels:
                self._add(sid, key)
                count += 1
                max_id = max(max_id, sid)
        self._shape = (count, max_id)

    def dropped(self, sids: Iterable[int]) -> None:
        count, max_id = self._shape
        for sid in sids:
            entry = self.labels.pop(sid, None)
            if entry is None:
                continue
            metric, labels = entry
            self.ids.pop((metric, tuple(sorted(labels.items()))), None)
            self.by_metric[metric].remove(sid)
            if not self.by_metric[metric]:
                del self.by_metric[metric]
            count -= 1
        self._shape = (count, max_id)

    def match(self, metric: str | None, matchers: Mapping[str, str]) -> list[int]:
        """Ids of the series of ``metric`` (any, if None) whose labels equal ``matchers``.

        A matcher with the empty string matches series that lack the label, as in PromQL.
        """
        if metric is None:
            candidates: Iterable[int] = self.labels
        else:
            candidates = self.by_metric.get(metric, ())
        out = []
        for sid in candidates:
            labels = self.labels[sid][1]
            if all(labels.get(name, "") == value for name, value in matchers.items()):
                out.append(sid)
        return sorted(out)
