"""``bench scale``'s parts: a private nats-server (JetStream, MQTT listener, the partition mapping) and
daemon processes (NATS workers, or the MQTT path) with their own config, read through ``/metrics``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from daemon.commands.bench.common import cpu_seconds, popen, stop_proc, toml_text, wait_port
from daemon.commands.bench.options import BenchError
from daemon.commands.bench.scrape import parse_samples
from daemon.ports import free_port

ROOT = Path(__file__).resolve().parents[3]  # the checkout: the daemons import this daemon/
PREFIX = "scale/s"  # topics scale/s<i>: subject scale.s<i>, mapped to part.<k>.scale.s<i>
STREAM = "SENSORS"


def find_nats_server() -> str | None:
    for c in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if c and Path(c).exists():
            return c
    return None


class NatsServer:
    """nats-server on free 127.0.0.1 ports: JetStream in ``workdir``, MQTT listener, and the mapping
    ``scale.* -> part.{{partition(n,1)}}.scale.{{wildcard(1)}}`` that spreads topics over partitions."""

    def __init__(self, workdir: Path, partitions: int) -> None:
        exe = find_nats_server()
        if exe is None:
            raise BenchError("nats-server is not installed (apt-get install nats-server)")
        self.exe = exe
        self.dir = workdir
        self.dir.mkdir(parents=True)
        self.port, self.mqtt_port = free_port(), free_port()
        self.partitions = partitions
        self.conf = self.dir / "nats.conf"
        mapping = f"part.{{{{partition({partitions},1)}}}}.scale.{{{{wildcard(1)}}}}"
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nserver_name: bench\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
            f'mappings: {{ "scale.*": "{mapping}" }}\n'
        )
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.proc = popen([self.exe, "-c", str(self.conf)], self.dir / "nats-server.log")
        wait_port(self.port, 15, self.proc)
        wait_port(self.mqtt_port, 15, self.proc)
        self.run(_create_stream)  # before anything is published, or JetStream keeps nothing
        return self

    def stop(self) -> None:
        stop_proc(self.proc, 10)

    def run(self, coro_fn: Any, *args: Any) -> Any:
        """``coro_fn(js, *args)`` on a fresh client connection; returns its result."""

        async def main() -> Any:
            import nats

            nc = await nats.connect(self.url)
            try:
                return await coro_fn(nc.jetstream(), *args)
            finally:
                await nc.close()

        return asyncio.run(main())

    def stored(self) -> int:
        """Messages the stream holds."""
        return self.run(_stored)

    def partition_counts(self) -> Counter:
        """Samples applied per stream, from every partition checkpoint in the object store."""
        return Counter(self.run(_partition_counts, self.partitions))


async def _create_stream(js: Any) -> None:
    await js.add_stream(name=STREAM, subjects=["part.>"])


async def _stored(js: Any) -> int:
    return (await js.stream_info(STREAM)).state.messages


async def _partition_counts(js: Any, partitions: int) -> dict[str, int]:
    from nats.js.errors import DigestMismatchError, ObjectNotFoundError

    from lstm_stream import checkpoint

    store = await js.object_store("lstm-stream-checkpoints")
    out: dict[str, int] = {}
    for k in range(partitions):
        for _ in range(20):  # a read racing a write of the object may never end (nats-py): again
            try:
                data = (await asyncio.wait_for(store.get(f"partition-{k}"), 2)).data
            except ObjectNotFoundError:
                break
            except (asyncio.TimeoutError, DigestMismatchError):
                continue
            tensors, meta = checkpoint.decode(data)
            for name, n in zip(meta["names"], tensors["state.count"].tolist(), strict=True):
                out[name] = out.get(name, 0) + int(n)
            break
        else:
            raise BenchError(f"partition-{k} could not be read from the object store")
    return out


class Worker:
    """One ``python -m daemon run`` with the given config sections (``[http]``, ``[state]``, ``[log]``
    and fine-tuning off are added)."""

    def __init__(self, workdir: Path, name: str, sections: dict[str, dict[str, Any]]) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.http_port = free_port()
        self.log_path = self.dir / "daemon.log"
        self.config = self.dir / "config.toml"
        base = {
            "http": {"bind": "127.0.0.1", "port": self.http_port, "per_stream": "none"},
            "state": {"directory": str(self.dir / "state"), "checkpoint_interval_s": 86400.0},
            "finetune": {"enabled": False},
            "log": {"level": "INFO"},
        }
        merged = {k: {**base.get(k, {}), **sections.get(k, {})} for k in {**base, **sections}}
        self.config.write_text(toml_text(merged))
        self.proc: Any = None

    def start(self) -> Worker:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(var, None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "daemon", "run", "--config", str(self.config)]
        self.proc = popen(cmd, self.log_path, env=env, cwd=self.dir)
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """The bench's counters from one scrape (name without ``lstm_stream_``, summed over labels)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            text = r.read()
        names = ["samples_processed_total", "streams", "nats_partitions_owned", "mqtt_connected"]
        names.append("batch_size_count")
        out: dict[str, float] = dict.fromkeys(names, 0.0)
        for (name, _), v in parse_samples(text, [f"lstm_stream_{n}" for n in names]).items():
            out[name.removeprefix("lstm_stream_")] += v
        return out

    def processed(self) -> float:
        return self.metrics()["samples_processed_total"]

    def wait_for(self, what: str, predicate: Any, timeout: float) -> dict[str, float]:
        """Poll /metrics until ``predicate(metrics)``; the metrics that satisfied it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"worker {self.name} exited:\n{self.log_tail()}")
            try:
                m = self.metrics()
                if predicate(m):
                    return m
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise BenchError(f"worker {self.name}: no {what} after {timeout:.0f}s:\n{self.log_tail()}")

    def settle(self, quiet_s: float, timeout: float) -> float:
        """Wait until the processed counter has not moved for ``quiet_s``; its value."""
        deadline = time.monotonic() + timeout
        last, moved = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            now = self.processed()
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved >= quiet_s:
                return now
            time.sleep(0.05)
        raise BenchError(f"worker {self.name} still processing after {timeout:.0f}s")

    def cpu(self) -> float:
        """CPU seconds of the process and its children so far."""
        return cpu_seconds(self.proc.pid)

    def terminate(self) -> None:
        """SIGTERM without waiting (see :meth:`stop`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            stop_proc(self.proc, 60)
            rc = self.proc.poll()
        return rc
