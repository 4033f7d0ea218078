"""A real Mosquitto broker on a free 127.0.0.1 port, for integration tests.

``Broker(tmp_path).start()`` writes a config (persistence in ``tmp_path`` so queued QoS 1 messages
survive a broker restart), starts ``mosquitto``, and waits until the port accepts connections.
``stop()``/``start()`` again simulate an outage on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import pytest

from daemon.ports import free_port

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def wait_port(port: int, timeout: float = 10.0, up: bool = True) -> None:
    """Wait until 127.0.0.1:port accepts (``up``) or refuses connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")


def terminate(proc: subprocess.Popen | None, grace_s: float = 5.0) -> None:
    """SIGTERM a server process still running and reap it; SIGKILL after ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Broker:
    """One Mosquitto process; restartable on the same port with the same persistence file."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
        self.dir = Path(workdir) / f"mosquitto-{id(self)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # started as root, mosquitto drops to its own user, which must reach its persistence folder
        # (pytest's tmp_path is private to root): a world-writable folder of its own under /tmp
        self.persist = Path(tempfile.mkdtemp(prefix="mosquitto-persist-"))
        self.persist.chmod(0o777)
        weakref.finalize(self, shutil.rmtree, self.persist, True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.persist}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "log_dest none\n" + extra
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        """Start the broker and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {err}") from None
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file)."""
        terminate(self.proc)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture
def broker(tmp_path):
    """A running Mosquitto for one test."""
    b = Broker(tmp_path).start()
    yield b
    b.stop()
