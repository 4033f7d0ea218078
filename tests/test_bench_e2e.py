"""Smoke test of ``lstm-stream bench e2e``: a tiny run through a real Mosquitto, checked for shape
and for nothing lost. The numbers themselves mean nothing at this size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.commands.bench.broker import find_mosquitto
from daemon.commands.bench.scrape import histogram_quantile, parse_samples

ROOT = Path(__file__).resolve().parents[1]
CELL_KEYS = {
    "daemon_msgs_per_s",
    "bare_subscriber_msgs_per_s",
    "ratio",
    "lost",
    "p50_latency_ms",
    "p99_latency_ms",
    "rss_mb",
}
TOP_KEYS = CELL_KEYS | {"by_qos", "batched_samples_per_s", "notes"}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.01, 50.0), (0.025, 90.0), (0.05, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.0175)  # halfway into (10, 25] ms
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0475)
    assert math.isnan(histogram_quantile(0.5, [(0.01, 0.0), (math.inf, 0.0)]))
    assert histogram_quantile(0.99, [(0.01, 1.0), (math.inf, 10.0)]) == 0.01  # +Inf: last finite edge


def test_parse_samples_reads_plain_and_labelled_lines() -> None:
    text = b'# HELP x_total x\nx_total 12.0\ny_bucket{le="0.5"} 3.0\ny_bucket{le="+Inf"} 4.0\n'
    got = parse_samples(text, ["x_total", "y_bucket"])
    assert got[("x_total", "")] == 12.0
    assert got[("y_bucket", '{le="+Inf"}')] == 4.0


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_bench_e2e_smoke(tmp_path) -> None:
    cmd = [
        sys.executable, "-m", "daemon", "bench", "e2e",
        "--streams", "20", "--qos", "0,1", "--messages", "600", "--publishers", "2", "--rounds", "1",
        "--latency-seconds", "1", "--batch-messages", "30", "--array-samples", "200", "--no-prometheus",
        "--timeout", "150",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)

    assert TOP_KEYS <= result.keys()
    assert set(result["by_qos"]) == {"0", "1"}
    for qos, cells in result["by_qos"].items():
        cell = cells["20"]
        assert CELL_KEYS <= cell.keys(), (qos, sorted(cell))
        assert cell["lost"] == 0 and cell["bare_lost"] == 0, (qos, cell)
        assert cell["latency_phase"]["lost"] == 0, (qos, cell["latency_phase"])
        assert cell["batched_lost_samples"] == 0, (qos, cell)
        assert cell["drain"]["lost"] == 0 and cell["drain"]["bare_lost"] == 0, (qos, cell["drain"])
        assert cell["daemon_msgs_per_s"] > 0 and cell["bare_subscriber_msgs_per_s"] > 0
        assert cell["latency_phase"]["observed"] > 0
        arrays = cell["array_phase"]  # every array sample scored, none counted as live latency
        assert arrays["arrays_sent"] >= 1 and arrays["lost"] == 0, (qos, arrays)
        assert "array_p99_added_ms" in cell
        assert cell["rss_mb"] > 0
        lat = cell["latency_phase"]  # what /metrics cost the engine, from its own counters
        assert lat["engine_cpu_ms_per_scrape"] > 0 and lat["scrape_requests"] > 0, (qos, lat)
        assert {"answers", "answer_p50_ms", "answer_max_ms"} <= lat.keys(), lat
        assert "exposition" in lat["cpu_s_by_process"], lat
        memory = cell["latency_daemon_memory"]
        assert {"engine", "receiver", "exposition"} <= memory["processes"].keys(), memory
        assert memory["engine_parts_mb"]["state"] > 0, memory
        # both MQTT versions' bare subscribers, and the receiver process's CPU (ticks: may round to 0)
        assert cell["bare_mqtt311_msgs_per_s"] > 0 and cell["bare_mqtt5_msgs_per_s"] > 0
        assert cell["ratio_vs_fastest_bare"] > 0 and cell["receiver_cpu_us_per_msg"] >= 0
    assert result["lost_total"] == 0
    assert result["daemon_msgs_per_s"] == result["by_qos"]["1"]["20"]["daemon_msgs_per_s"]
    assert result["notes"]
