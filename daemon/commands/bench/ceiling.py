"""The ingest ceiling: bare paho subscribers on both MQTT versions beside the daemon, and the CPU the
daemon's receiver process spends per message (``/proc/<pid>/stat`` of that child before and after a run).

The daemon is compared with the faster of the two bare subscribers of the same run (paho on MQTT
3.1.1 decodes a PUBLISH in about a third of the time it needs on MQTT 5), not only with the one
speaking its own protocol.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from daemon.commands.bench.common import cpu_seconds, med, rnd

PROTOCOLS = ("3.1.1", "5")
OTHER_PREFIX = "bare{}/s"  # the second bare subscriber's topics ("bare311/s", "bare5/s")


def other_protocol(protocol: str) -> str:
    """The MQTT version the daemon does not speak in this run."""
    return PROTOCOLS[0] if protocol == PROTOCOLS[1] else PROTOCOLS[1]


def other_prefix(protocol: str) -> str:
    """Topic prefix for the bare subscriber on ``protocol`` when it is not the daemon's."""
    return OTHER_PREFIX.format(protocol.replace(".", ""))


def receiver_pid(daemon_pid: int) -> int | None:
    """The daemon's receiver child (a multiprocessing spawn, not the resource tracker), if any."""
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{daemon_pid}/task"):
            with open(f"/proc/{daemon_pid}/task/{task}/children") as f:
                for child in f.read().split():
                    with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as c:
                        cmd = c.read()
                    if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                        return int(child)
    return None


def with_receiver_cpu(daemon_pid: int, run: Callable[..., dict], *args: Any, **kw: Any) -> dict:
    """``run(*args, **kw)`` (a throughput run of the daemon) plus ``receiver_cpu_s`` and
    ``receiver_cpu_us_per_msg`` (the receiver child alone) and ``engine_cpu_us_per_msg`` (the rest of
    the daemon's tree)."""
    pid = receiver_pid(daemon_pid)
    cpu0 = cpu_seconds(pid) if pid else float("nan")
    out = run(*args, **kw)
    cpu = (cpu_seconds(pid) if pid else float("nan")) - cpu0
    msgs = max(1.0, out["published"])
    out["receiver_cpu_s"] = round(cpu, 3)
    out["receiver_cpu_us_per_msg"] = cpu / msgs * 1e6
    out["engine_cpu_us_per_msg"] = (out["cpu_s"] - cpu) / msgs * 1e6
    return out


def cell_figures(runs: dict[str, list[dict]], protocol: str, drate: float, drain: bool) -> dict[str, Any]:
    """The cell's keys for the ceiling: both bare subscribers, the ratio to the faster, the receiver's
    CPU per message (live and, with ``drain``, draining a backlog)."""
    other = other_protocol(protocol)
    rates = {protocol: med(runs, "bare", "rate"), other: med(runs, "bare_other", "rate")}
    cpus = {protocol: med(runs, "bare", "cpu_us_per_msg"), other: med(runs, "bare_other", "cpu_us_per_msg")}
    fastest = max(rates, key=lambda k: rates[k] if rates[k] == rates[k] else -1.0)
    out: dict[str, Any] = {
        "daemon_protocol": protocol,
        **{f"bare_mqtt{p.replace('.', '')}_msgs_per_s": rnd(r) for p, r in rates.items()},
        **{f"bare_mqtt{p.replace('.', '')}_cpu_us_per_msg": rnd(c) for p, c in cpus.items()},
        **{
            f"ratio_vs_bare_mqtt{p.replace('.', '')}": rnd(drate / r, 3) if r == r and r else None
            for p, r in rates.items()
        },
        "fastest_bare_protocol": fastest,
        "ratio_vs_fastest_bare": rnd(drate / rates[fastest], 3) if rates[fastest] else None,
        "receiver_cpu_us_per_msg": rnd(med(runs, "daemon", "receiver_cpu_us_per_msg")),
        "engine_cpu_us_per_msg": rnd(med(runs, "daemon", "engine_cpu_us_per_msg")),
        f"bare_mqtt{other.replace('.', '')}_rounds_msgs_per_s": [rnd(x["rate"]) for x in runs["bare_other"]],
    }
    if drain and runs.get("daemon_drain"):
        ddr = med(runs, "daemon_drain", "rate")
        odr = med(runs, "bare_other_drain", "rate")
        bdr = med(runs, "bare_drain", "rate")
        best = max(x for x in (odr, bdr) if x == x) if (odr == odr or bdr == bdr) else float("nan")
        out["drain_receiver_cpu_us_per_msg"] = rnd(med(runs, "daemon_drain", "receiver_cpu_us_per_msg"))
        out[f"drain_bare_mqtt{other.replace('.', '')}_msgs_per_s"] = rnd(odr)
        out["drain_ratio_vs_fastest_bare"] = rnd(ddr / best, 3) if best == best and best else None
    return out


def batched_figures(run: dict, batch_size: int) -> dict[str, Any]:
    """Where the batched phase's CPU went, per sample: the receiver child and the rest (engine side)."""
    per = 1.0 / max(1, batch_size)
    return {
        "batched_receiver_cpu_us_per_sample": rnd(run["receiver_cpu_us_per_msg"] * per, 2),
        "batched_engine_cpu_us_per_sample": rnd(run["engine_cpu_us_per_msg"] * per, 2),
        "batched_daemon_cpu_cores": rnd(run["cpu_cores"], 2),
        "batched_publish_msgs_per_s": rnd(run["publish_rate"]),
        "batched_publishers_cpu_s": run["publishers_cpu_s"],
        "batched_seconds": run["seconds"],
    }


def _key(protocol: str, suffix: str) -> str:
    return "bare_mqtt" + protocol.replace(".", "") + suffix


def notes(result: dict, top: str, target: float) -> list[str]:
    """One line per QoS: the daemon against the faster bare subscriber, and its receiver's CPU."""
    out = []
    for q, cells in result["by_qos"].items():
        cell = cells.get(top) or {}
        ratio = cell.get("ratio_vs_fastest_bare")
        if ratio is None:
            continue
        verdict = "meets" if ratio >= target else "MISSES"
        out.append(
            f"qos {q}, {top} streams: daemon (MQTT {cell['daemon_protocol']}) / fastest bare subscriber "
            f"(MQTT {cell['fastest_bare_protocol']}) = {ratio:.2f} ({verdict} >= {target}); receiver "
            f"{cell.get('receiver_cpu_us_per_msg')} us CPU a message, bare "
            + ", ".join(f"{p} {cell.get(_key(p, '_cpu_us_per_msg'))}" for p in PROTOCOLS)
        )
    return out
