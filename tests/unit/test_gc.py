"""The collector settings of serving processes: what was loaded is frozen out of its
passes, the young generation is passed over every 50,000 allocations, and cyclic
garbage is still reclaimed on its own. Run in a fresh interpreter: the settings are
process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, weakref
from fleetops.runtime._gc import YOUNG_THRESHOLD, tune_for_serving

loaded = [[i] for i in range(1000)]  # stands for the modules and agents loaded
tune_for_serving()
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

first = cycle()  # unreachable from here on, but kept alive by its own cycle
alive_before = first() is not None
# fewer allocations than the threshold: no pass yet, the cycle is still there
junk = [[i] for i in range(YOUNG_THRESHOLD // 2)]
alive_early = first() is not None
# past the threshold: a pass runs by itself and frees the cycle
junk += [[i] for i in range(YOUNG_THRESHOLD)]
late = first() is not None
print(json.dumps(after | {"before": alive_before, "early": alive_early, "late": late}))
"""


def test_tuning_freezes_what_is_loaded_and_still_frees_cycles_on_its_own() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["threshold"][0] == 50_000
    assert seen["frozen"] >= 1000  # the objects alive at the call, at least
    assert seen["before"] and seen["early"]
    assert seen["late"] is False, "cyclic garbage was never collected"
