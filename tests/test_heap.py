"""daemon.heap: start-up's garbage is collected, the survivors are out of later full passes."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import gc, weakref
from daemon.heap import freeze_startup_objects
class Node: pass
a = Node(); a.self = a; dead = weakref.ref(a); del a  # a garbage cycle
kept = [Node() for _ in range(1000)]
freeze_startup_objects()
print(dead() is None, gc.get_freeze_count() >= 1000, gc.get_count()[0] < 50)
"""


def test_garbage_is_collected_first_and_the_rest_frozen() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"]


HEAP = """
import sys
from daemon.heap import compact_heap
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) // 1024
if sys.argv[1] == "compact":
    assert compact_heap()
before = anon()
for _ in range(3):  # a render's text, built and dropped (glibc raises its threshold after the first)
    block = b"x" * (8 << 20)
    del block
print(anon() - before)
"""


def test_compact_heap_gives_big_blocks_back_once_dropped() -> None:
    """The exposition child's heap: an 8 MB block, dropped, leaves nothing resident with
    ``compact_heap`` (by default glibc keeps such blocks in the heap once a few were freed)."""
    run = [sys.executable, "-c", HEAP]
    kept = {
        how: int(subprocess.run([*run, how], capture_output=True, text=True, check=True, timeout=60).stdout)
        for how in ("compact", "default")
    }
    assert kept["compact"] < 2, kept
    assert kept["default"] >= 7, kept  # the test bites: without it the block stays


TRIM = """
import sys
from daemon.heap import HeapTrimmer
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) // 1024
keep, drop = [], []
for i in range(20_000):  # 2 kB blocks (malloc's heap, not mapped); the freed ones lie between kept ones
    (keep if i % 50 == 0 else drop).append(bytearray(2000))
del drop
before = anon()
trimmer = HeapTrimmer(every_s=10.0)
if sys.argv[1] == "trim":
    assert trimmer.maybe_trim(0.0) and not trimmer.maybe_trim(5.0) and trimmer.trims == 1
print(before - anon())
"""


def test_the_heap_trimmer_gives_freed_pages_back_at_most_every_interval() -> None:
    """Freed blocks in the middle of the heap stay resident until ``malloc_trim``: the housekeeping's
    trimmer (at most once per interval) gives them back."""
    freed = {
        how: int(
            subprocess.run(
                [sys.executable, "-c", TRIM, how], capture_output=True, text=True, check=True
            ).stdout
        )
        for how in ("trim", "no")
    }
    assert freed["trim"] >= 20 and freed["no"] < 5, freed
