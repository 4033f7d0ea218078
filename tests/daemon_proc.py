"""Run the real daemon (``lstm-stream run``) as a child process, with a test NOTIFY_SOCKET.

Used by the integration tests: it writes a TOML config pointing at a test broker, starts the
daemon, waits for ``READY=1`` on the notify socket, and reads ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from tests.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def toml_value(v) -> str:
    """A Python value as TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_toml(path: Path, sections: dict) -> Path:
    """Write nested dicts as TOML tables (dotted section names for nesting)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", sections)
    path.write_text("\n".join(lines) + "\n")
    return path


def deep_merge(a: dict, b: dict) -> dict:
    """``b`` merged into a copy of ``a``."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        """Read whatever arrived."""
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Wait until a datagram containing ``text`` arrives. As systemd does with a start timeout, an
        ``EXTEND_TIMEOUT_USEC=N`` message moves the deadline to N microseconds after its arrival (the
        daemon sends them while it replays a long write-ahead log before ``READY=1``)."""
        deadline = time.monotonic() + timeout
        extended = len(self.messages)  # messages before the call extend nothing
        while time.monotonic() < deadline:
            messages = self.poll()
            for m in messages:
                if text in m:
                    return m
            for m in messages[extended:]:
                extend = re.search(r"^EXTEND_TIMEOUT_USEC=(\d+)$", m, re.MULTILINE)
                if extend:
                    deadline = max(deadline, time.monotonic() + int(extend.group(1)) / 1e6)
            extended = len(messages)
        raise TimeoutError(f"no {text!r} on the notify socket; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """One daemon process with its own config, state folder, HTTP port and notify socket."""

    def __init__(
        self,
        tmp: Path,
        broker,
        config: dict | None = None,
        name: str = "d",
        env: dict | None = None,
        session: bool = False,
    ):
        """``session``: run the daemon in a process group of its own (to SIGKILL the whole group)."""
        self.tmp = Path(tmp)
        self.broker = broker
        self.state = self.tmp / "state"
        self.http_port = free_port()
        base = {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "topics": ["sensors/#"],
                "client_id": f"test-{name}",
            },
            "http": {"port": self.http_port},
            "state": {"directory": str(self.state), "checkpoint_interval_s": 3600},
            "finetune": {"enabled": False},
            "log": {"level": "INFO"},
        }
        self.config_path = write_toml(self.tmp / f"{name}.toml", deep_merge(base, config or {}))
        self.name = name
        self.extra_env = env or {}
        self.session = session
        self.proc: subprocess.Popen | None = None
        self.notify: NotifySocket | None = None
        self.log_path = self.tmp / f"{name}.log"

    def start(self, wait_ready: bool = True) -> Daemon:
        """Start the process; by default wait for READY=1 and, when the broker runs, for /healthz
        to say connected (READY=1 does not wait for the broker, so an earlier publish could come
        before the subscriptions)."""
        if self.notify is None:
            self.notify = NotifySocket(self.tmp / f"{self.name}.notify")
        self.notify.poll()
        self.notify.messages.clear()  # only what this run says counts
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path, "PYTHONUNBUFFERED": "1", **self.extra_env}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_file = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tmp,
            start_new_session=self.session,
        )
        if wait_ready:
            self.notify.wait_for("READY=1")
            if self.broker.proc is not None:
                self._wait_healthy()
        return self

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/healthz")[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"/healthz not 200 after {timeout}s\n--- daemon log ---\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self.log_file.close()
        return rc

    def close(self) -> None:
        """Stop the process and close the notify socket."""
        self.stop()
        if self.notify:
            self.notify.close()
            self.notify = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, str]:
        """HTTP GET on the daemon's metrics port: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics as {(name, sorted labels): value}."""
        _, body = self.get("/metrics")
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels) -> float:
        """One sample's value (NaN when absent). Only the lines of ``name`` are parsed: a whole
        parse of 10k streams' families takes seconds of this process's time on a slow machine."""
        _, body = self.get("/metrics")
        lines = [ln for ln in body.splitlines() if ln.startswith((f"{name}{{", f"{name} "))]
        want = tuple(sorted(labels.items()))
        for fam in text_string_to_metric_families("\n".join(lines) + "\n"):
            for s in fam.samples:
                if s.name == name and tuple(sorted(s.labels.items())) == want:
                    return s.value
        return math.nan

    def wait_metric(self, name: str, predicate, timeout: float = 60.0, **labels) -> float:
        """Poll /metrics until ``predicate(value)`` holds; returns the value."""
        deadline = time.monotonic() + timeout
        value = math.nan
        while time.monotonic() < deadline:
            value = self.metric(name, **labels)
            if predicate(value):
                return value
            time.sleep(0.2)
        raise TimeoutError(
            f"{name}{labels} = {value} after {timeout}s\n--- daemon log ---\n{self.log()[-3000:]}"
        )


class Publisher:
    """A paho client that publishes and waits for every QoS 1 acknowledgement."""

    def __init__(self, broker, client_id: str = "") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload, qos: int = 1) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=qos)

    def publish_many(self, items, qos: int = 1) -> None:
        """Publish (topic, payload) pairs in order and wait until all are acknowledged."""
        infos = []
        for topic, payload in items:
            if isinstance(payload, dict | list):
                payload = json.dumps(payload)
            infos.append(self.client.publish(topic, payload, qos=qos))
        for info in infos:
            info.wait_for_publish(timeout=30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Collector:
    """Subscribes to a topic and keeps every message (for anomaly events, availability)."""

    def __init__(self, broker, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def json(self) -> list[dict]:
        return [json.loads(p) for _, p, _ in self.messages if p]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
