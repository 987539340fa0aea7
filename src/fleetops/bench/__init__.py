"""Benchmark harnesses (``fleetops bench …``); each answers a JSON-ready result."""

from ._queue import QueueBenchConfig as QueueBenchConfig
from ._queue import QueueBenchResult as QueueBenchResult
from ._queue import bench_queue as bench_queue
