"""The e2e bench's options: the flags on ``lstm-stream bench e2e`` and what they set."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Options:
    streams: tuple[int, ...] = (1000, 10000)
    qos: tuple[int, ...] = (0, 1)
    messages: int = 200_000
    publishers: int = 2
    rounds: int = 3
    latency_seconds: float = 10.0
    batch_size: int = 20
    batch_messages: int | None = None  # default: messages // 10
    array_samples: int = 1000  # the array phase: one stream's array of this many samples (0: no phase)
    array_every_s: float = 0.0  # ... sent once, 1 s into the phase, or again every this many seconds
    latency_rate: float | None = None  # the latency phases' rate (msgs/s); None: half the daemon's rate
    protocol: str = "5"
    wal: bool = True  # the daemons' write-ahead log (state.wal)
    finetune: str = "off"
    prometheus: bool = True
    # how the latency daemon serves /metrics (http.exposition); the first is the headline, the others
    # run the same latency phase in the same run, on daemons of their own, for comparison
    exposition: tuple[str, ...] = ("process",)
    drain: bool = True  # also measure both consumers draining a backlog (no publisher competing)
    poll_s: float = 0.2
    stall_s: float = 5.0
    timeout_s: float = 3600.0
    profile_dir: Path | None = None
    keep_dir: bool = False
    workdir: Path | None = None
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    @property
    def batched_messages(self) -> int:
        return self.batch_messages if self.batch_messages is not None else max(1, self.messages // 10)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The e2e flags on the ``bench`` subcommand (``--streams`` is shared with ``bench engine``)."""
    g = p.add_argument_group("e2e")
    g.add_argument("--qos", default=None, help="e2e: comma-separated QoS levels (default 0,1)")
    g.add_argument("--messages", type=int, default=None, help="e2e: messages per run (default 200000)")
    g.add_argument("--publishers", type=int, default=None, help="e2e: publisher processes (default 2)")
    g.add_argument("--rounds", type=int, default=None, help="e2e: daemon/bare rounds per cell (default 3)")
    g.add_argument("--latency-seconds", type=float, default=None, help="e2e: latency phase (default 10)")
    g.add_argument("--batch-size", type=int, default=None, help="e2e: samples per batched message (20)")
    g.add_argument("--batch-messages", type=int, default=None, help="e2e: batched messages (messages/10)")
    g.add_argument(
        "--array-samples",
        type=int,
        default=None,
        help="e2e: samples in the array phase's one array among the live streams (1000; 0 = skip)",
    )
    g.add_argument(
        "--array-every",
        type=float,
        default=None,
        help="e2e: send the array again every this many seconds of the phase (default 0: once)",
    )
    g.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="e2e: latency phases at this many msgs/s (default: half the daemon's measured rate), to compare "
        "settings at one load",
    )
    g.add_argument("--protocol", choices=["5", "3.1.1"], default=None, help="e2e: MQTT version (5)")
    g.add_argument(
        "--wal",
        choices=["on", "off"],
        default=None,
        help="e2e: the daemons' write-ahead log (state.wal; default on); run both to compare ratios",
    )
    g.add_argument(
        "--finetune",
        choices=["off", "thread", "process"],
        default=None,
        help="e2e: the latency daemon fine-tunes back to back in this mode (default off)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="e2e: about a minute (20k messages, 1 round, no drain runs, the bench scrapes)",
    )
    g.add_argument(
        "--exposition",
        default=None,
        help="e2e: the latency daemon's http.exposition, comma-separated to compare in one run "
        "(process, thread; default process)",
    )
    g.add_argument("--no-prometheus", action="store_true", help="e2e: the bench scrapes, not Prometheus")
    g.add_argument("--no-drain", action="store_true", help="e2e: skip the backlog-drain runs")
    g.add_argument("--profile-dir", help="e2e: py-spy the daemons into this folder (needs py-spy)")
    g.add_argument("--keep-dir", action="store_true", help="e2e: keep the temporary folder (logs)")
    g.add_argument("--timeout", type=float, default=None, help="e2e: overall limit in seconds (3600)")


def options_from_args(args: argparse.Namespace) -> Options:
    o = Options()
    if getattr(args, "quick", False):
        o = Options(
            messages=20_000,
            rounds=1,
            latency_seconds=3.0,
            stall_s=3.0,
            timeout_s=600.0,
            drain=False,
            prometheus=False,  # the bench scrapes every second itself (saves ~5 s per phase)
        )

    def pick(name: str, attr: str, conv: Callable[[Any], Any] = lambda v: v) -> None:
        v = getattr(args, name, None)
        if v is not None:
            setattr(o, attr, conv(v))

    pick("streams", "streams", lambda v: tuple(int(s) for s in str(v).split(",") if s.strip()))
    pick("qos", "qos", lambda v: tuple(int(s) for s in str(v).split(",") if s.strip()))
    pick("messages", "messages")
    pick("finetune", "finetune")
    pick("publishers", "publishers")
    pick("rounds", "rounds")
    pick("latency_seconds", "latency_seconds")
    pick("batch_size", "batch_size")
    pick("batch_messages", "batch_messages")
    pick("array_samples", "array_samples")
    pick("array_every", "array_every_s")
    pick("latency_rate", "latency_rate")
    pick("protocol", "protocol")
    pick("timeout", "timeout_s")
    pick("profile_dir", "profile_dir", Path)
    pick("exposition", "exposition", lambda v: tuple(s.strip() for s in str(v).split(",") if s.strip()))
    if set(o.exposition) - {"process", "thread"} or not o.exposition:
        raise BenchError(f"--exposition takes process and/or thread, not {args.exposition!r}")
    if getattr(args, "wal", None) is not None:
        o.wal = args.wal == "on"
    if getattr(args, "no_prometheus", False):
        o.prometheus = False
    if getattr(args, "no_drain", False):
        o.drain = False
    o.keep_dir = bool(getattr(args, "keep_dir", False))
    return o


class BenchError(RuntimeError):
    """A part of the setup did not come up or a phase overran its time limit."""
