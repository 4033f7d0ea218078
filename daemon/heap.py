"""Keep the garbage collector's full passes short, and the C heap small, in the long-running processes.

A full (generation 2) collection walks every container object the process holds. In the daemon that
is torch, numpy, pydantic and every stream's bookkeeping: one pass took 83 ms in the daemon and
10-12 ms in the receiver child at 10k streams, a stall of everything in the process, which comes back
as a spike in ingest latency. What exists once start-up is done lives until exit, so it is moved
out of the collector's sight (``gc.freeze``); later passes walk only what was created since
(0.6 ms and 0.1-0.2 ms in the same runs). The price: a start-up object that later becomes part of
a garbage cycle is never freed, a bounded, one-time amount (say, the first model after a swap).

glibc gives every thread that meets a locked heap an arena of its own (up to 8 per core) and keeps
what is freed in each: the daemon's threads (engine, MQTT, HTTP, checkpoints) held 70 MB more at
10k streams with the default than with two arenas (``scripts/bench_memory.py``: engine process 349
vs 280 MB), so :func:`limit_malloc_arenas` sets two unless ``MALLOC_ARENA_MAX`` says otherwise.
"""

from __future__ import annotations

import gc
import os
import time

from lstm_stream import libc

M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, which it raises (up to 32 MB) as big blocks are freed


def freeze_startup_objects() -> None:
    """Collect the garbage start-up left, then exempt every surviving object from later passes."""
    gc.collect()
    gc.freeze()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (before threads start); False where it does not apply (not glibc,
    or ``MALLOC_ARENA_MAX`` set in the environment, which glibc reads itself)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = libc.function("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def compact_heap(arenas: int = 1, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """For a child whose threads build and drop blocks of megabytes (the exposition process):
    ``arenas`` malloc arenas, and blocks of ``mmap_threshold`` bytes or more mapped and unmapped
    on their own, at a fixed threshold (glibc's moves up as such blocks are freed, after which
    they stay in the heap, resident). Exposition child at 10k streams: 80 -> 60 MB with both."""
    mallopt = libc.function("mallopt")
    if mallopt is None:
        return False
    limit_malloc_arenas(arenas)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))


class HeapTrimmer:
    """Hands the C heap's free pages back to the system every ``every_s`` (glibc's ``malloc_trim``).

    The engine's batches leave freed temporaries scattered through its heap, resident until reused:
    5-6 MB of the engine process at 10k streams (``scripts/bench_memory.py``), for about 0.3 ms a call.
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._trim = libc.function("malloc_trim")
        self._next = 0.0
        self.trims = 0
        self.seconds = 0.0  # wall time spent trimming

    def maybe_trim(self, now: float) -> bool:
        """Trim if ``every_s`` passed since the last time (``now``: monotonic seconds)."""
        if self._trim is None or now < self._next:
            return False
        self._next = now + self.every_s
        t0 = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - t0
        self.trims += 1
        return True
