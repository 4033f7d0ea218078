"""sd_notify against a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.service import notify


@pytest.fixture(autouse=True)
def no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A socket file in tmp_path (a short temp dir if the path exceeds sun_path's 108 bytes)."""
    path = tmp_path / "notify.sock"
    short_dir = None
    if len(os.fsencode(path)) > 100:
        short_dir = tempfile.TemporaryDirectory(prefix="sdn")
        path = Path(short_dir.name) / "n.sock"
    sock = _bound(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    if short_dir is not None:
        short_dir.cleanup()


def test_ready_status_watchdog_stopping(listener: socket.socket) -> None:
    assert notify.ready()
    assert listener.recv(4096) == b"READY=1"
    assert notify.ready("connected to broker, 12 streams restored")
    assert listener.recv(4096) == b"READY=1\nSTATUS=connected to broker, 12 streams restored"
    assert notify.status("line one\nline two")
    assert listener.recv(4096) == b"STATUS=line one line two"  # no injected second assignment
    assert notify.watchdog()
    assert listener.recv(4096) == b"WATCHDOG=1"
    assert notify.stopping()
    assert listener.recv(4096) == b"STOPPING=1"
    assert notify.notify("EXTEND_TIMEOUT_USEC=5000000")
    assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=5000000"
    assert notify.extend_timeout(90.0, "replaying\nthe log")
    assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000\nSTATUS=replaying the log"


def test_a_long_replay_extends_the_start_timeout_every_few_seconds(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before READY=1 a replay asks for more start time at once and then every ``every_s`` (not every
    chunk), each time with how far it got."""
    from daemon.service.durability import StartProgress

    clock = iter([0.0, 0.0, 1.0, 4.9, 5.0, 12.0])  # the first at construction
    monkeypatch.setattr(StartProgress, "clock", staticmethod(lambda: next(clock)))
    progress = StartProgress(every_s=5.0, extend_s=60.0)
    for done in (0, 100, 200, 300, 400):
        progress(done, 1000)
    listener.settimeout(0.2)
    got = []
    with pytest.raises(TimeoutError):
        while True:
            got.append(listener.recv(4096).decode())
    assert got == [
        f"EXTEND_TIMEOUT_USEC=60000000\nSTATUS=replaying the write-ahead log: {done} of 1000 samples"
        for done in (0, 300, 400)
    ]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lstm-stream-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = _bound("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert sock.recv(4096) == b"READY=1"
        assert notify.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_socket_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert notify.ready() is False and notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False  # send error: reported, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify.status("x") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert notify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify.watchdog_interval_s() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", "garbage")
    assert notify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "abc", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notify.watchdog_interval_s() is None
