"""A state folder that fills up: the daemon stops acknowledging (the broker keeps the messages), says why
in /healthz, counts it, and resumes by itself; a final checkpoint that cannot be written makes the exit
status 1. Needs root (a small tmpfs is mounted as the state folder). A read-only folder takes the same
path (every write or fsync error does); remounting read-only is refused while the log is open."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import chaos
from tests.broker import Broker
from tests.daemon_proc import Daemon, Publisher

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def small_state(tmp_path):
    """``tmp_path/state`` on an 8 MB tmpfs of its own."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def _messages(start: int, stop: int) -> list[tuple[str, dict]]:
    return [(f"sensors/d{i % 4}/v", {"value": float(i % 7), "ts": chaos.T0 + i}) for i in range(start, stop)]


def _wait_health(d: Daemon, status: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, body = d.get("/healthz")
        if code == status:
            return body
        assert time.monotonic() < deadline, (code, body, d.log()[-2000:])
        time.sleep(0.1)


def test_full_state_folder_stops_acks_and_recovers(tmp_path, small_state) -> None:
    broker = Broker(tmp_path).start()
    d = Daemon(tmp_path, broker, chaos.daemon_config(3600), name="disk")
    pub = Publisher(broker)
    try:
        d.start()
        pub.publish_many(_messages(0, 200))
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 200)
        filler = _fill(small_state)
        pub.publish_many(_messages(200, 400))  # the broker acks them and keeps them for the daemon
        body = _wait_health(d, 503)
        assert "write-ahead log" in body and "not acknowledging" in body, body
        d.wait_metric("lstm_stream_wal_failures_total", lambda v: v >= 1, timeout=5)  # copied every 0.25 s
        held = d.metric("lstm_stream_samples_processed_total")
        time.sleep(1.0)
        # nothing unlogged is applied (a few may have fitted in the log's last page before it failed)
        assert d.metric("lstm_stream_samples_processed_total") == held < 400
        filler.unlink()
        _wait_health(d, 200)
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 400)
        assert d.stop() == 0
        assert sum(chaos.applied_counts(d.state).values()) == 400
        # a final checkpoint that cannot be written: exit status 1
        d.start()
        filler = _fill(small_state)
        assert d.stop() == 1
        assert "final checkpoint failed" in d.log()
        filler.unlink()
    finally:
        pub.close()
        d.close()
        broker.stop()


def _remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True, capture_output=True)


def test_read_only_state_folder_stops_acks_and_recovers(tmp_path, small_state) -> None:
    """Started on a read-only state folder (as after a file-system error remounts it so): nothing is
    acknowledged or applied, /healthz says why; made writable again, every sample is applied once."""
    broker = Broker(tmp_path).start()
    d = Daemon(tmp_path, broker, chaos.daemon_config(3600), name="ro")
    pub = Publisher(broker)
    _remount(small_state, "ro")
    try:
        d.start()
        pub.publish_many(_messages(0, 200))  # the broker acks them and keeps them for the daemon
        body = _wait_health(d, 503)
        assert "write-ahead log" in body and "not acknowledging" in body, body
        time.sleep(1.0)
        assert d.metric("lstm_stream_samples_processed_total") == 0
        _remount(small_state, "rw")
        _wait_health(d, 200)
        d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= 200)
        assert d.stop() == 0
        assert sum(chaos.applied_counts(d.state).values()) == 200
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _remount(small_state, "rw")
        pub.close()
        d.close()
        broker.stop()
