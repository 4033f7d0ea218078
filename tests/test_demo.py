"""``lstm-stream demo`` end to end: a broker, simulated sensors and the daemon in one command.

Runs the real command as a child process for a short, fixed duration and checks what a user sees:
the metrics URL and the anomaly topic are shown, anomalies are printed as they are flagged and at
least one of them is at an injected anomaly, the summary is printed, and the exit status is 0.
One run uses Mosquitto (when installed), one the embedded amqtt broker (the ``demo`` extra).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.commands.demo.brokers import amqtt_available, find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
DURATION_S = 30  # injections start at t=10 s at 30 steps/s; the first flags come near t=14 s
pytestmark = pytest.mark.slow


def run_demo(tmp_path: Path, *extra: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env = {k: v for k, v in env.items() if not k.startswith("LSTM_STREAM_")}
    cmd = [sys.executable, "-m", "daemon", "demo", "--duration", str(DURATION_S), "--rate", "30"]
    cmd += ["--port", "0", "--http-port", "0", *extra]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150
    )
    return proc.returncode, proc.stdout + proc.stderr


def check_output(rc: int, out: str) -> None:
    assert rc == 0, out
    assert re.search(r"http://127\.0\.0\.1:\d+/metrics", out), out
    assert "lstm-stream/anomalies" in out
    assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'lstm-stream/anomalies'", out), out
    anomalies = [line for line in out.splitlines() if line.startswith("ANOMALY ")]
    assert any("| injected " in line for line in anomalies), out
    assert re.search(r"\] [1-9][\d,]* samples scored", out), out  # a status line read from /metrics
    match = re.search(r'summary: \{"injected": (\d+), "caught": (\d+), "flagged": (\d+)', out)
    assert match, out
    injected, caught, flagged = map(int, match.groups())
    assert injected >= caught >= 1 and flagged >= 1
    assert "checkpoint" in out  # the daemon's final checkpoint on the way out
    assert "Traceback" not in out


@pytest.mark.integration
def test_demo_with_mosquitto(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
    rc, out = run_demo(tmp_path)
    check_output(rc, out)
    assert "Mosquitto" in out


def test_demo_with_embedded_broker(tmp_path):
    if not amqtt_available():
        pytest.skip('amqtt is not installed (pip install -e ".[demo]")')
    rc, out = run_demo(tmp_path, "--embedded-broker")
    check_output(rc, out)
    assert "embedded amqtt" in out


def test_demo_without_any_broker_says_what_to_install(tmp_path, monkeypatch):
    """No Mosquitto and no amqtt: one line naming the extra to install, and a non-zero status."""
    from daemon.commands.demo import brokers, run

    monkeypatch.setattr(brokers, "find_mosquitto", lambda: None)
    monkeypatch.setattr(brokers, "amqtt_available", lambda: False)
    lines: list[str] = []
    rc = run.run_demo(duration=1, port=0, http_port=0, write=lines.append)
    assert rc == run.EX_UNAVAILABLE
    assert any('pip install "lstm-stream[demo]"' in line for line in lines), lines
