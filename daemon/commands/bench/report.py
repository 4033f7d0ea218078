"""The bench's JSON result: the headline cell, the configuration, and notes on the targets met."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from daemon.commands.bench import ceiling
from daemon.commands.bench.options import Options

TARGET_RATIO = 0.85


TARGET_P99_MS = 50.0


def _targets_notes(result: dict, opts: Options) -> list[str]:
    notes = []
    top = str(max(opts.streams))
    for q, cells in result["by_qos"].items():
        cell = cells.get(top)
        if not cell:
            continue
        ratio, p99 = cell.get("ratio"), cell.get("p99_latency_ms")
        if ratio is not None:
            verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
            notes.append(f"qos {q}, {top} streams: daemon/bare = {ratio:.2f} ({verdict} >= {TARGET_RATIO})")
        lost = cell.get("lost", 0) + cell.get("latency_phase", {}).get("lost", 0)
        verdict = "meets" if not lost else "MISSES"
        notes.append(f"qos {q}, {top} streams: lost {lost:.0f} ({verdict} nothing lost)")
        if p99 is not None:
            bucket = cell["latency_phase"].get("p99_bucket_ms")
            verdict = "meets" if p99 < TARGET_P99_MS and bucket[1] <= TARGET_P99_MS else "MISSES"
            notes.append(
                f"qos {q}, {top} streams: p99 {p99:.1f} ms, bucket {bucket} ms "
                f"({verdict} < {TARGET_P99_MS:g} ms)"
            )
        drain = cell.get("drain")
        if drain and drain.get("ratio") is not None:
            verdict = "meets" if drain["ratio"] >= TARGET_RATIO else "MISSES"
            notes.append(
                f"qos {q}, {top} streams: draining a backlog (no publisher competing), daemon/bare = "
                f"{drain['ratio']:.2f} ({verdict} >= {TARGET_RATIO})"
            )
    notes += ceiling.notes(result, top, TARGET_RATIO)
    if result.get("lost_total"):
        notes.append(
            f"lost over all phases: {result['lost_total']:.0f} (MISSES nothing lost; see the notes below)"
        )
    return notes


def assemble(by_qos: dict, opts: Options, notes: list[str], seconds: float, tmp: Path) -> dict:
    top_q = "1" if "1" in by_qos else str(max(opts.qos))
    top_n = str(max(opts.streams))
    cell = by_qos[top_q][top_n]
    keys = (
        "daemon_msgs_per_s",
        "bare_subscriber_msgs_per_s",
        "ratio",
        "lost",
        "p50_latency_ms",
        "p99_latency_ms",
        "rss_mb",
        "batched_samples_per_s",
    )
    result: dict[str, Any] = {"by_qos": by_qos}
    result.update({k: cell.get(k) for k in keys})
    result["lost_total"] = sum(
        cl.get("lost", 0) + cl.get("latency_phase", {}).get("lost", 0) + cl.get("batched_lost_samples", 0)
        for cells in by_qos.values()
        for cl in cells.values()
    )
    result["top_level_from"] = {"qos": int(top_q), "streams": int(top_n)}
    result["config"] = {
        "streams": list(opts.streams),
        "qos": list(opts.qos),
        "messages": opts.messages,
        "publishers": opts.publishers,
        "rounds": opts.rounds,
        "latency_seconds": opts.latency_seconds,
        "batch_size": opts.batch_size,
        "batched_messages": opts.batched_messages,
        "protocol": opts.protocol,
        "wal": opts.wal,
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
    }
    if opts.profile_dir is not None:
        result["config"]["profile_dir"] = str(opts.profile_dir)
    result["notes"] = [
        *_targets_notes(result, opts),
        "rates are medians over rounds; a rate is messages / (interpolated time the counter reached the "
        "total - first publish); the daemon's counter is lstm_stream_samples_processed_total, polled "
        f"every {opts.poll_s}s over /metrics; the bare subscriber's counter is shared memory polled alike",
        'throughput runs use a daemon with http.per_stream = "none" (its /metrics costs about '
        'scrape_s_per_stream_none); with "all", each poll would render every stream '
        "(scrape_s_per_stream_all) and distort the rate; the latency phase uses a second daemon with "
        '"all", scraped every second by Prometheus (or by the bench without it)',
        "latency_phase.scrape_avg_s/scrape_max_s are Prometheus's scrape_duration_seconds, which also "
        "counts its own parsing and storing of every sample; answer_p50_ms/answer_max_ms time the "
        "bench's own GET of the whole /metrics body every second during the phase (half a second "
        "after Prometheus's): the daemon's answer time",
        "each run is preceded by an untimed warm-up (one message per topic), so stream creation is "
        "not in the rates; each stream's messages come from one publisher connection, in order",
        "latency = publish time.time() in the payload -> the daemon's clock after Engine.process, from "
        "the delta of lstm_stream_ingest_latency_seconds over the phase, interpolated inside buckets "
        "(histogram_quantile): with buckets 10, 25, 50, 100 ms a p99 in (25, 50] is only known to "
        "lie in that bucket (see p99_bucket_ms and share_over_50ms)",
        "publishers and Prometheus run on the same 2 cores as the daemon and the broker; compare "
        "ratios from the same run, absolute rates wander. The publishers write MQTT packets "
        "themselves (2-5 us of CPU a message when not paced, publishers_cpu_s_per_run), so the "
        "live runs measure the consumers, not the load generator; drain.* (subscriber frozen with "
        "SIGSTOP while the broker takes the backlog, timed from SIGCONT) compares the two consumers "
        "with no publisher competing; *_cpu_us_per_msg is the CPU each spends per message, the "
        "figure least disturbed by other load. Nagle is off everywhere (broker set_tcp_nodelay); "
        "with it on, subscribers get messages in bursts ~40 ms apart",
        *notes,
    ]
    return result
