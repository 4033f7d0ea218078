"""One QoS level of the e2e bench: the daemons and bare subscribers it starts, and per stream count the
throughput, drain, batched, latency and array phases, assembled into one result cell."""

from __future__ import annotations

import math
import time
from typing import Any

from daemon.commands.bench import ceiling
from daemon.commands.bench.common import med, median, rnd, rss_mb
from daemon.commands.bench.memory import memory_figures
from daemon.commands.bench.phases import (
    Ctx,
    latency_phase,
    latency_prefix,
    scrape_cost,
    start_profiler,
    stop_profilers,
    throughput_run,
    warm_up,
)
from daemon.commands.bench.subscribers import BareSubscriber, Daemon


def wal_figures(on: bool, before: dict[str, float], after: dict[str, float], runs: list[dict]) -> dict:
    """The write-ahead log's cost over the daemon's timed runs: bytes and fsyncs per second."""
    seconds = sum(x["seconds"] for x in runs) or math.nan
    msgs = sum(x["processed"] for x in runs) or math.nan
    written = after.get("wal_written_bytes", 0.0) - before.get("wal_written_bytes", 0.0)
    syncs = after.get("wal_syncs", 0.0) - before.get("wal_syncs", 0.0)
    return {
        "enabled": on,
        "bytes_per_s": rnd(written / seconds),
        "fsyncs_per_s": rnd(syncs / seconds, 1),
        "bytes_per_msg": rnd(written / msgs, 1),
        "msgs_per_fsync": rnd(msgs / syncs, 1) if syncs else None,
    }


def run_qos(c: Ctx, qos: int) -> dict[str, dict]:
    o = c.opts
    # one slot more than the most live streams: the array phase's stream (a full table refuses it)
    max_streams = max(10000, max(o.streams) + 1)
    a = Daemon(
        c.workdir,
        f"A-qos{qos}",
        c.broker,
        prefix="bench/s",
        qos=qos,
        per_stream="none",
        max_streams=max_streams,
        protocol=o.protocol,
        wal=o.wal,
    )
    lat_daemons = [
        Daemon(
            c.workdir,
            f"B-qos{qos}-{mode}",
            c.broker,
            prefix=latency_prefix(i),
            qos=qos,
            per_stream="all",
            max_streams=max_streams,
            protocol=o.protocol,
            finetune=o.finetune,
            wal=o.wal,
            exposition=mode,
        )
        for i, mode in enumerate(o.exposition)
    ]
    b = lat_daemons[0]
    bare: BareSubscriber | None = None
    bare2: BareSubscriber | None = None  # the other MQTT version's bare subscriber
    other = ceiling.other_prefix(ceiling.other_protocol(o.protocol))
    cells: dict[str, dict] = {}
    try:
        for d in (a, *lat_daemons):
            d.start()
        for d in (a, *lat_daemons):
            d.wait_healthy()
        bare = BareSubscriber(c.mpctx, c.broker, qos, o.protocol, "bare/s")
        bare2 = BareSubscriber(c.mpctx, c.broker, qos, ceiling.other_protocol(o.protocol), other)
        time.sleep(0.5)  # SUBACKs
        for n in sorted(o.streams):
            c.log(f"qos {qos}, {n} streams: warm-up")
            warm_up(c, a.processed, "bench/s", n, qos)
            warm_up(c, bare.count, "bare/s", n, qos)
            warm_up(c, bare2.count, other, n, qos)
            runs: dict[str, list[dict]] = {"daemon": [], "bare": [], "daemon_drain": [], "bare_drain": []}
            runs.update(bare_other=[], bare_other_drain=[])
            wal_before = a.counters()
            for r in range(o.rounds):
                if r == 0:
                    start_profiler(c, a.pid, f"throughput-qos{qos}-{n}", o.messages / 15000 + 2)
                runs["daemon"].append(
                    ceiling.with_receiver_cpu(
                        a.pid, throughput_run, c, a.processed, "bench/s", n, o.messages, qos, a.pid
                    )
                )
                stop_profilers(c)
                runs["bare"].append(throughput_run(c, bare.count, "bare/s", n, o.messages, qos, bare.pid))
                runs["bare_other"].append(
                    throughput_run(c, bare2.count, other, n, o.messages, qos, bare2.pid)
                )
                if o.drain:
                    runs["daemon_drain"].append(
                        ceiling.with_receiver_cpu(
                            a.pid,
                            throughput_run,
                            c,
                            a.processed,
                            "bench/s",
                            n,
                            o.messages,
                            qos,
                            a.pid,
                            drain=True,
                        )
                    )
                    runs["bare_drain"].append(
                        throughput_run(c, bare.count, "bare/s", n, o.messages, qos, bare.pid, drain=True)
                    )
                    runs["bare_other_drain"].append(
                        throughput_run(c, bare2.count, other, n, o.messages, qos, bare2.pid, drain=True)
                    )
                c.log(
                    f"qos {qos}, {n} streams, round {r + 1}: "
                    + ", ".join(
                        f"{k} {v[-1]['rate']:.0f}/s (lost {v[-1]['lost']:.0f})" for k, v in runs.items() if v
                    )
                )

            drate, brate = med(runs, "daemon", "rate"), med(runs, "bare", "rate")
            cell: dict[str, Any] = {
                "daemon_msgs_per_s": rnd(drate),
                "bare_subscriber_msgs_per_s": rnd(brate),
                "ratio": rnd(drate / brate, 3) if brate else None,
                "lost": sum(x["lost"] for x in runs["daemon"] + runs["daemon_drain"]),
                "bare_lost": sum(x["lost"] for x in runs["bare"] + runs["bare_drain"]),
                "rss_mb": rss_mb(a.pid),
                "daemon_cpu_us_per_msg": rnd(med(runs, "daemon", "cpu_us_per_msg")),
                "bare_cpu_us_per_msg": rnd(med(runs, "bare", "cpu_us_per_msg")),
                "daemon_cpu_cores": rnd(med(runs, "daemon", "cpu_cores"), 2),
                "bare_cpu_cores": rnd(med(runs, "bare", "cpu_cores"), 2),
                "daemon_rounds_msgs_per_s": [rnd(x["rate"]) for x in runs["daemon"]],
                "bare_rounds_msgs_per_s": [rnd(x["rate"]) for x in runs["bare"]],
                "publish_msgs_per_s": rnd(median([x["publish_rate"] for x in runs["daemon"] + runs["bare"]])),
                "publishers_cpu_s_per_run": rnd(med(runs, "daemon", "publishers_cpu_s"), 2),
                "broker_cpu_s_per_run": rnd(med(runs, "daemon", "broker_cpu_s"), 2),
            }
            if o.drain:
                ddr, bdr = med(runs, "daemon_drain", "rate"), med(runs, "bare_drain", "rate")
                cell["drain"] = {
                    "daemon_msgs_per_s": rnd(ddr),
                    "bare_subscriber_msgs_per_s": rnd(bdr),
                    "ratio": rnd(ddr / bdr, 3) if bdr else None,
                    "lost": sum(x["lost"] for x in runs["daemon_drain"]),
                    "bare_lost": sum(x["lost"] for x in runs["bare_drain"]),
                    "daemon_cpu_us_per_msg": rnd(med(runs, "daemon_drain", "cpu_us_per_msg")),
                    "bare_cpu_us_per_msg": rnd(med(runs, "bare_drain", "cpu_us_per_msg")),
                    "daemon_cpu_cores": rnd(med(runs, "daemon_drain", "cpu_cores"), 2),
                    "bare_cpu_cores": rnd(med(runs, "bare_drain", "cpu_cores"), 2),
                    "broker_cpu_s_per_daemon_drain": rnd(med(runs, "daemon_drain", "broker_cpu_s"), 2),
                    "daemon_rounds_msgs_per_s": [rnd(x["rate"]) for x in runs["daemon_drain"]],
                    "bare_rounds_msgs_per_s": [rnd(x["rate"]) for x in runs["bare_drain"]],
                }
            cell.update(ceiling.cell_figures(runs, o.protocol, drate, o.drain))
            after = a.counters()
            cell["daemon_counters"] = {k: v for k, v in after.items() if v}
            cell["wal"] = wal_figures(o.wal, wal_before, after, runs["daemon"] + runs["daemon_drain"])
            if n == max(o.streams) and o.batch_size > 1:
                c.log(f"qos {qos}, {n} streams: batched, {o.batch_size} samples per message")
                before = a.counters()
                batched = ceiling.with_receiver_cpu(
                    a.pid,
                    throughput_run,
                    c,
                    a.processed,
                    "bench/s",
                    n,
                    o.batched_messages,
                    qos,
                    a.pid,
                    batch=o.batch_size,
                    samples_per_msg=o.batch_size,
                )
                cell["batched_samples_per_s"] = rnd(batched["rate"])
                cell["batched_msgs_per_s"] = rnd(batched["rate"] / o.batch_size)
                cell["batched_lost_samples"] = batched["lost"]
                cell.update(ceiling.batched_figures(batched, o.batch_size))
                time.sleep(0.6)  # the daemon copies the queue's drop count into /metrics every 0.5 s
                dropped = a.counters().get("queue_dropped", 0.0) - before.get("queue_dropped", 0.0)
                cell["batched_queue_dropped_samples"] = dropped
                if batched["lost"]:
                    c.notes.append(
                        f"qos {qos}, {n} streams, batched: {batched['lost']:.0f} of "
                        f"{batched['published'] * o.batch_size} samples lost, {dropped:.0f} of them "
                        "counted in lstm_stream_queue_dropped_total (ingest queue full, engine behind"
                        + ("; at QoS 1 these messages had been acknowledged to the broker)" if qos else ")")
                    )
                cell["rss_mb_after_batched"] = rss_mb(a.pid)
            half = o.latency_rate or (drate / 2 if drate == drate else 1000.0)
            c.log(f"qos {qos}, {n} streams: latency phase at {half:.0f} msgs/s")
            ft_before = b.finetune_runs()
            lat = latency_phase(c, b, n, qos, half, bare)
            lat["finetune"] = o.finetune
            lat["finetune_runs_during_phase"] = b.finetune_runs() - ft_before
            cell["p50_latency_ms"] = lat["p50_ms"]
            cell["p99_latency_ms"] = lat["p99_ms"]
            cell["bare_p99_latency_ms"] = lat.get("bare_p99_ms")  # the same publishing, bare subscriber
            cell["latency_phase"] = lat
            cell["latency_daemon_rss_mb"] = rss_mb(b.pid)
            if n == max(o.streams) and o.array_samples > 0:
                c.log(f"qos {qos}, {n} streams: latency phase with a {o.array_samples}-sample array")
                arr = latency_phase(c, b, n, qos, lat["rate_msgs_per_s"], None, array_samples=o.array_samples)
                cell["array_phase"] = arr
                cell["array_p99_added_ms"] = rnd(arr["p99_ms"] - lat["p99_ms"], 2)
                if arr["lost"]:
                    c.notes.append(
                        f"qos {qos}, {n} streams, array phase: {arr['lost']:.0f} samples not applied "
                        "(see the latency daemon's reject counters)"
                    )
            cell["latency_daemon_memory"] = memory_figures(b)
            for i, other in enumerate(lat_daemons[1:], 1):
                mode = o.exposition[i]
                c.log(f"qos {qos}, {n} streams: latency phase, exposition {mode}, at {half:.0f} msgs/s")
                cell[f"latency_phase_{mode}"] = latency_phase(c, other, n, qos, half, None, latency_prefix(i))
                cell[f"latency_phase_{mode}"]["rss_mb"] = rss_mb(other.pid)
            tries = 1 if o.rounds == 1 else 3
            cell["scrape_s_per_stream_all"] = rnd(scrape_cost(b, tries), 4)
            cell["scrape_s_per_stream_none"] = rnd(scrape_cost(a, tries), 4)
            cells[str(n)] = cell
        return cells
    finally:
        stop_profilers(c)
        for sub in (bare, bare2):
            if sub is not None:
                sub.close()
        for d in (a, *lat_daemons):  # all at once: each writes a checkpoint on SIGTERM
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
        for d in (a, *lat_daemons):
            d.stop()
