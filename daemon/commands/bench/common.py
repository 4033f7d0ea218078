"""What the bench's parts share: free ports, child processes (started, stopped, their CPU and
memory), config text, and the statistics the results are reduced with."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.commands.bench.options import BenchError


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def popen(cmd: Sequence[str], log_path: Path, **kw: Any) -> subprocess.Popen:
    """A child in its own session (Ctrl-C reaches only the bench, which stops it in order) that
    the kernel signals if the bench dies."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the descriptor; ours closes below
    try:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec, **kw
        )
    finally:
        log.close()


def stop_proc(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon's receiver and fine-tune processes count as the daemon)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all threads), in seconds; NaN once it is gone."""
    total = 0.0
    for i, p in enumerate(proc_tree(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            if i == 0:
                return math.nan
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores of this machine spent busy (not idle or waiting for I/O) since boot: the
    difference over a phase, divided by its length, is how many cores everything running used."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    total = 0.0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return round(total, 1) if total else math.nan


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for k, v in table.items():
            if isinstance(v, bool):
                text = "true" if v else "false"
            elif isinstance(v, (int, float)):
                text = repr(v)
            elif isinstance(v, list):
                text = "[" + ", ".join(json.dumps(x) for x in v) + "]"
            else:
                text = json.dumps(str(v))
            lines.append(f"{k} = {text}")
        lines.append("")
    return "\n".join(lines)


def topic_filter(prefix: str) -> str:
    """The subscription covering topics ``<prefix><i>`` (``bench/s`` -> ``bench/#``)."""
    return prefix.rsplit("/", 1)[0] + "/#"


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def med(runs: dict[str, list[dict]], kind: str, key: str) -> float:
    return median([x[key] for x in runs[kind]])


def rnd(x: float, nd: int = 1) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(x, nd)
