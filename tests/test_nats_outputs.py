"""A NATS worker's outputs on a real nats-server: forecasts on NATS subjects, availability per worker in
a key-value bucket, its id in /metrics, and the publish fence: a worker paused past its lease TTL,
whose partitions another worker took, publishes nothing for them once it runs again."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from tests.daemon_proc import Daemon
from tests.nats_server import nats_server  # noqa: F401  (fixture)
from tests.polling import wait_until

PROCESSED = "lstm_stream_samples_processed_total"
STREAMS = 8


class Subscriber:
    """A NATS subscription on its own thread and loop, keeping every message's (subject, data)."""

    def __init__(self, url: str, subject: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._subscribe(url, subject), self.loop).result(10)

    async def _subscribe(self, url: str, subject: str) -> None:
        import nats

        self.nc = await nats.connect(url)

        async def keep(msg):
            self.messages.append((msg.subject, msg.data))

        await self.nc.subscribe(subject, cb=keep)
        await self.nc.flush()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _samples(first_ts: float, count: int) -> list[tuple[str, bytes]]:
    """``count`` samples spread over the streams and the 4 partitions, 1 ms apart, as JetStream messages."""
    out = []
    for i in range(count):
        s = i % STREAMS
        ts = round(first_ts + i / 1000, 3)
        out.append((f"part.{s % 4}.sensors.line.t{s}", json.dumps({"ts": ts, "value": i % 7}).encode()))
    return out


def _keys(payloads: list[tuple[str, bytes]]) -> list[tuple[str, float]]:
    return [
        (subject.split(".", 2)[2].replace(".", "/"), json.loads(data)["ts"]) for subject, data in payloads
    ]


def _availability(server) -> dict[str, str]:
    async def read(js):
        from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError

        kv = await js.key_value("lstm-stream-availability")
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        out = {}
        for k in keys:
            try:
                out[k] = (await kv.get(k)).value.decode()
            except (KeyNotFoundError, KeyDeletedError):
                pass
        return out

    return server.run(read)


@pytest.mark.slow
@pytest.mark.integration
def test_paused_worker_publishes_nothing_for_partitions_taken_over(tmp_path, nats_server):  # noqa: F811
    broker = SimpleNamespace(host=nats_server.host, port=nats_server.mqtt_port, proc=nats_server.proc)
    nats = {"servers": [nats_server.url], "partition_count": 4, "ownership": "lease", "lease_ttl_s": 1}
    config = {
        "ingest": {"source": "nats"},
        "mqtt": {"protocol": "3.1.1", "forecast_topic": "lstm-stream/forecast/{stream}"},
        "state": {"checkpoint_interval_s": 1},
        "nats": {**nats, "outputs": "nats"},
    }
    for name in "ab":
        (tmp_path / name).mkdir()
    a = Daemon(tmp_path / "a", broker, {**config, "nats": {**config["nats"], "worker_id": "a"}}, name="a")
    b = Daemon(tmp_path / "b", broker, {**config, "nats": {**config["nats"], "worker_id": "b"}}, name="b")
    forecasts = Subscriber(nats_server.url, "lstm-stream.forecast.>")
    try:
        nats_server.publish([])  # the stream exists before anything is published
        for d in (a, b):
            d.start(wait_ready=False)
        for d in (a, b):
            d.notify.wait_for("READY=1")
        assert a.metric("lstm_stream_worker_info", worker="a", ownership="lease", outputs="nats") == 1
        for d in (a, b):
            wait_until(lambda d=d: d.metric("lstm_stream_nats_partitions_owned") == 2, "2 + 2 partitions")
        wait_until(lambda: _availability(nats_server) == {"a": "online", "b": "online"}, "both online")
        nats_server.publish(_samples(time.time() - 30, 80))
        wait_until(lambda: a.metric(PROCESSED) + b.metric(PROCESSED) == 80, "the first 80 applied")

        a.proc.send_signal(signal.SIGSTOP)  # paused: its leases and its availability key expire
        wait_until(lambda: _availability(nats_server) == {"b": "online"}, "a's availability expired")
        wait_until(lambda: b.metric("lstm_stream_nats_partitions_owned") == 4, "b took a's 2")
        second = _samples(time.time() - 20, 80)
        want = set(_keys(second))
        nats_server.publish(second)  # pushed to a's ordered consumers too: they sit in its socket
        wait_until(lambda: want <= set(_keys(forecasts.messages)), "b published the second 80's forecasts")

        a.proc.send_signal(signal.SIGCONT)
        # each drop applies what was queued (unfenced, its forecasts would be published) before its line
        wait_until(lambda: a.log().count("lease lost") == 2, "a noticed it lost its 2 leases")
        # (b then hands two partitions back to it with their checkpoints: a rebalance, not a duplicate)
        applied_by_a = a.metric(PROCESSED)  # a may have applied some of the second 80 meanwhile
        assert a.stop() == 0
        assert b.stop() == 0
        # a clean stop writes offline, which then expires with the bucket's TTL (1 s here): either way
        # neither is online (reading exactly "offline" raced the TTL on a loaded machine)
        wait_until(lambda: "online" not in _availability(nats_server).values(), "neither online")
        time.sleep(0.5)  # the last forecasts in flight to the subscriber (nothing more is published)
    finally:
        a.close()
        b.close()
        forecasts.close()
    seen = Counter(
        (subject.split(".", 2)[2].replace(".", "/"), json.loads(data)["ts"])
        for subject, data in forecasts.messages
    )
    of_second = {k: n for k, n in seen.items() if k in want}
    assert set(of_second) == want  # every sample of the second batch got its forecast (from b)
    doubled = {k: n for k, n in of_second.items() if n > 1}
    assert not doubled, f"{len(doubled)} forecasts published twice (a applied {applied_by_a:.0f} in all)"


def test_subjects_and_availability_topic_per_worker():
    from daemon.nats_settings import NatsSettings
    from daemon.outputs.nats_outlet import subject_of_topic
    from daemon.service.service import publishing_settings
    from daemon.settings import MqttSettings

    assert subject_of_topic("lstm-stream/forecast/sensors/a/b") == "lstm-stream.forecast.sensors.a.b"
    mqtt = MqttSettings()
    assert publishing_settings(mqtt).availability_topic == "lstm-stream/availability"  # one daemon
    worker = publishing_settings(mqtt, NatsSettings(worker_id="w1"))
    assert worker.availability_topic == "lstm-stream/availability/w1" and worker.topics == []
