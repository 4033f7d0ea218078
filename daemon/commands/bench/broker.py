"""The bench's private Mosquitto on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from daemon.commands.bench.common import popen, stop_proc, wait_port
from daemon.commands.bench.options import BenchError
from daemon.ports import free_port


def find_mosquitto() -> str | None:
    for c in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if c and Path(c).exists():
            return c
    return None


class Broker:
    def __init__(self, workdir: Path) -> None:
        exe = find_mosquitto()
        if exe is None:
            raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        self.dir = workdir / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # QoS 0 messages to a slow subscriber are dropped beyond max_queued_messages packets
            "max_queued_messages 10000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            # Nagle off towards subscribers: with it on, a subscriber that only reads (QoS 0) gets
            # its messages in bursts ~40-50 ms apart (the broker waits for delayed ACKs); the
            # setting we recommend for latency (README)
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            # as root, mosquitto would switch to its own user, which clears PR_SET_PDEATHSIG
            + ("user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = popen([self.exe, "-c", str(self.conf)], self.dir / "mosquitto.log")
        wait_port(self.port, 15, self.proc)
        return self

    def stop(self) -> None:
        stop_proc(self.proc, 10)
