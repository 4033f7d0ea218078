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
