"""Where a daemon's memory goes: resident memory per process of its tree (engine, receiver,
exposition), split into anonymous (heap, arrays) and file-backed (mapped libraries: torch's
shared objects), and the engine's own account of its arrays from /metrics."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.commands.bench.common import proc_tree
from daemon.commands.bench.scrape import parse_samples

if TYPE_CHECKING:
    from daemon.commands.bench.subscribers import Daemon

MEMORY_METRIC = "lstm_stream_memory_bytes"
_FIELDS = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb", "RssShmem": "shmem_mb"}
_ROLLUP = {"Pss": "pss_mb"}


def process_memory(pid: int) -> dict[str, float]:
    """VmRSS and its anonymous / file-backed / shared-memory parts of one process, MB; and its PSS
    (each page shared with other processes counted as its share: the sum over processes is what
    they occupy together, where the sum of RSS counts shared library pages once per process)."""
    out: dict[str, float] = {}
    for path, fields in ((f"/proc/{pid}/status", _FIELDS), (f"/proc/{pid}/smaps_rollup", _ROLLUP)):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[fields[key]] = round(int(rest.split()[0]) / 1024, 1)
    return out


def _role(pid: int, root: int) -> str:
    """engine (the daemon itself), exposition, resource_tracker (multiprocessing's), finetune,
    receiver (the other spawned children), or the process name."""
    if pid == root:
        return "engine"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if comm == "lstm-stream-exp":
        return "exposition"
    if b"resource_tracker" in cmdline:
        return "resource_tracker"
    if b"daemon.service.finetuner" in cmdline:
        return "finetune"  # the fine-tuning process (finetune.mode "process"), while a run lasts
    return "receiver" if b"spawn_main" in cmdline else comm


def rss_by_role(root: int) -> dict[str, float]:
    """VmRSS of each process in ``root``'s tree by role (MB), without a scrape: cheap to sample."""
    out: dict[str, float] = {}
    for pid in proc_tree(root):
        role = _role(pid, root)
        if role != "gone":
            out[role] = round(out.get(role, 0.0) + process_memory(pid).get("rss_mb", 0.0), 1)
    return out


def memory_figures(d: Daemon) -> dict:
    """Per-process resident memory of ``d``'s tree and the engine's array accounts (MB)."""
    procs: dict[str, dict[str, float]] = {}
    for pid in proc_tree(d.pid):
        role = _role(pid, d.pid)
        if role == "gone":
            continue
        key = role if role not in procs else f"{role}-{pid}"
        procs[key] = process_memory(pid)
    out: dict = {
        "processes": procs,
        "total_rss_mb": round(sum(p.get("rss_mb", 0.0) for p in procs.values()), 1),
        "total_pss_mb": round(sum(p.get("pss_mb", 0.0) for p in procs.values()), 1),
    }
    with contextlib.suppress(OSError):
        parts = parse_samples(d.scrape(), [MEMORY_METRIC])
        out["engine_parts_mb"] = {
            labels.split('"')[1]: round(v / 2**20, 1) for (_, labels), v in parts.items() if '"' in labels
        }
    return out


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads) of each process in ``root``'s tree, by role."""
    out: dict[str, float] = {}
    for pid in proc_tree(root):
        role = _role(pid, root)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = os.sysconf("SC_CLK_TCK")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out
