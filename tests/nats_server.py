"""A real nats-server with JetStream (and its MQTT listener) on free 127.0.0.1 ports, for integration tests.

``NatsServer(tmp_path, partitions=4).start()`` writes a config with JetStream storage in the temp dir,
the MQTT listener, and the mapping ``sensors.*.* -> part.{{partition(n,1,2)}}.sensors.{{wildcard(1)}}.
{{wildcard(2)}}`` (topics ``sensors/<a>/<b>``), starts the server and waits for both ports.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.broker import free_port, terminate, wait_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)
MAPPING = "part.{{{{partition({n},1,2)}}}}.sensors.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"


class NatsServer:
    """One nats-server process; restartable on the same ports with the same JetStream store."""

    def __init__(self, workdir: Path, partitions: int = 4) -> None:
        if NATS_SERVER is None:
            pytest.skip("nats-server is not installed (scripts/test.sh installs it)")
        self.dir = Path(workdir) / "nats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port, self.mqtt_port = free_port(), free_port()
        self.partitions = partitions
        self.conf = self.dir / "nats.conf"
        mapping = MAPPING.format(n=partitions)
        self.conf.write_text(
            f"listen: {self.host}:{self.port}\n"
            "server_name: test\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f"mqtt {{ listen: {self.host}:{self.mqtt_port} }}\n"
            f'mappings: {{ "sensors.*.*": "{mapping}" }}\n'
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> NatsServer:
        """Start the server and wait until the client and MQTT ports accept connections."""
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.port)
            wait_port(self.mqtt_port)
        except TimeoutError:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"nats-server did not start: {err}") from None
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def run(self, coro_fn, *args):
        """Run ``coro_fn(js, *args)`` with a fresh client connection; returns its result."""

        async def main():
            import nats

            nc = await nats.connect(self.url)
            try:
                return await coro_fn(nc.jetstream(), *args)
            finally:
                await nc.close()

        return asyncio.run(main())

    def publish(self, messages: list[tuple[str, bytes]], stream: str = "SENSORS") -> list[int]:
        """Publish ``(subject, payload)`` pairs with JetStream acks (the stream is created if missing);
        returns their stream sequences."""

        async def pub(js, messages):
            from nats.js.errors import NotFoundError

            try:
                await js.stream_info(stream)
            except NotFoundError:
                await js.add_stream(name=stream, subjects=["part.>"])
            seqs = []
            for subject, payload in messages:
                seqs.append((await js.publish(subject, payload)).seq)
            return seqs

        return self.run(pub, messages)


@pytest.fixture
def nats_server(tmp_path):
    """A running nats-server with JetStream and MQTT for one test."""
    s = NatsServer(tmp_path).start()
    yield s
    s.stop()
