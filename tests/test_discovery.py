"""Home Assistant MQTT discovery: the publisher on its own, then the real daemon on a real broker."""

from __future__ import annotations

import json
import math
import re
import time

import paho.mqtt.client as mqtt
import pytest

from daemon.ingest.link import MqttLink
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue
from daemon.outputs.discovery import HomeAssistantDiscovery, object_id
from daemon.settings import ConfigError, HomeAssistantSettings, MqttSettings, load_settings
from tests.daemon_proc import Daemon, Publisher
from tests.polling import wait_until

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}


class Sent:
    """A fake publish: records (topic, payload, qos, retain); ``ok`` False simulates a disconnect."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.ok = True

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        if self.ok:
            self.messages.append((topic, payload, qos, retain))
        return self.ok

    def topics(self, pattern: str = "") -> list[str]:
        return [t for t, *_ in self.messages if pattern in t]

    def last(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for t, p, _, _ in self.messages:
            out[t] = p
        return out


def make(sent: Sent, clock=None, **settings) -> HomeAssistantDiscovery:
    s = HomeAssistantSettings(enabled=True, **settings)
    return HomeAssistantDiscovery(
        s,
        sent,
        availability_topic="lstm-stream/availability",
        model="LSTM",
        sw_version="1.2.3",
        clock=clock or (lambda: 0.0),
    )


# --- unit ------------------------------------------------------------------------------------------
def test_object_ids_are_safe_stable_and_distinct() -> None:
    names = [
        "sensors/machine0/temp",
        "sensors/machine0_temp",
        "ünïcödé/温度",
        "a b#c+d",
        "",
        "x" * 300,
        "_/_",
    ]
    ids = [object_id(n) for n in names]
    assert all(SAFE.match(i) and len(i) <= 60 for i in ids), ids
    assert len(set(ids)) == len(ids)  # "machine0/temp" and "machine0_temp" reduce alike: the hash differs
    assert ids == [object_id(n) for n in names]  # the same on every run (unique_id must be)
    assert object_id("sensors/machine0/temp").startswith("sensors_machine0_temp_")


def test_configs_have_the_required_keys_and_topics() -> None:
    sent = Sent()
    d = make(sent)
    assert d.add(["sensors/m0/temp"]) == ["sensors/m0/temp"]
    oid = object_id("sensors/m0/temp")
    by_topic = {t: (json.loads(p), q, r) for t, p, q, r in sent.messages}
    sensor, qos, retain = by_topic[f"homeassistant/sensor/lstm_stream/{oid}/config"]
    assert retain and qos == 1
    assert sensor["unique_id"] == f"lstm_stream_{oid}_forecast"
    assert sensor["state_topic"] == f"lstm-stream/stream/{oid}/forecast"
    binary, _, retain = by_topic[f"homeassistant/binary_sensor/lstm_stream/{oid}/config"]
    assert retain and binary["device_class"] == "problem"
    assert binary["state_topic"] == f"lstm-stream/stream/{oid}/anomaly"
    assert (binary["payload_on"], binary["payload_off"]) == ("ON", "OFF")
    for config in (sensor, binary):
        assert config["availability_topic"] == "lstm-stream/availability"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert DEVICE_KEYS <= config["device"].keys() and config["device"]["identifiers"] == ["lstm_stream"]
        assert config["device"]["sw_version"] == "1.2.3"
        assert "sensors/m0/temp" in config["name"]
    assert d.status_topic == "homeassistant/status"
    assert d.add(["sensors/m0/temp"]) == [] and len(sent.messages) == 2  # already announced


def test_states_change_only_when_needed_and_forecasts_are_rate_limited() -> None:
    now = [100.0]
    sent = Sent()
    d = make(sent, clock=lambda: now[0], state_interval_s=10)
    d.add(["s"])
    oid = object_id("s")
    sent.messages.clear()
    d.update(["s", "unknown"], [False, True], [21.5, 1.0])
    assert sent.last() == {
        f"lstm-stream/stream/{oid}/anomaly": b"OFF",
        f"lstm-stream/stream/{oid}/forecast": b"21.5",
    }
    assert all(retain for *_, retain in sent.messages)
    sent.messages.clear()
    now[0] += 1
    d.update(["s"], [False], [22.0])
    assert sent.messages == []  # same state, forecast too soon
    d.update(["s"], [True], [math.nan])
    assert sent.last() == {f"lstm-stream/stream/{oid}/anomaly": b"ON"}
    now[0] += 10
    sent.messages.clear()
    d.update(["s"], [True], [23.25])
    assert sent.last() == {f"lstm-stream/stream/{oid}/forecast": b"23.25"}


def test_cap_waiting_streams_and_removal() -> None:
    sent = Sent()
    d = make(sent, max_streams=2)
    assert d.add(["a", "b", "c", "d"]) == ["a", "b"]
    assert len(sent.topics("/config")) == 4
    sent.messages.clear()
    assert d.remove(["a", "zzz"]) == ["a"]
    oid = object_id("a")
    cleared = {t for t, p, _, retain in sent.messages if p == b"" and retain}
    assert cleared == {
        f"homeassistant/sensor/lstm_stream/{oid}/config",
        f"homeassistant/binary_sensor/lstm_stream/{oid}/config",
        f"lstm-stream/stream/{oid}/forecast",
        f"lstm-stream/stream/{oid}/anomaly",
    }
    assert list(d.announced) == ["b", "c"]  # the first waiting stream took the freed place
    assert any(object_id("c") in t and p for t, p, *_ in sent.messages)
    d.remove(["d"])  # a waiting stream that goes away is forgotten
    d.remove(["b"])
    assert list(d.announced) == ["c"]


def test_failed_removal_is_retried_and_status_online_republishes() -> None:
    sent = Sent()
    d = make(sent)
    d.add(["a", "b"])
    sent.ok = False
    d.remove(["a"])
    sent.ok = True
    assert not d.tick()
    d.on_status(b"offline")
    assert not d.tick()
    d.on_status(b"online")
    assert d.tick() and not d.tick()
    oid_a, oid_b = object_id("a"), object_id("b")
    last = sent.last()
    assert last[f"homeassistant/sensor/lstm_stream/{oid_a}/config"] == b""
    assert json.loads(last[f"homeassistant/sensor/lstm_stream/{oid_b}/config"])["unique_id"].endswith(
        "_forecast"
    )


def test_settings_section() -> None:
    s = HomeAssistantSettings()
    assert (s.enabled, s.prefix, s.node_id, s.max_streams, s.state_interval_s) == (
        False,
        "homeassistant",
        "lstm_stream",
        200,
        10.0,
    )
    with pytest.raises(ConfigError, match="homeassistant.node_id"):
        load_settings(None, {"homeassistant.node_id": "bad/id"})
    with pytest.raises(ConfigError, match="homeassistant.prefix"):
        load_settings(None, {"homeassistant.prefix": "ha/#"})
    with pytest.raises(ConfigError, match="homeassistant.max_entities"):
        load_settings(None, {"homeassistant.max_entities": 3})


def test_link_routes_the_status_topic_to_the_callback_not_the_parser() -> None:
    seen: list[bytes] = []
    link = MqttLink(
        MqttSettings(client_id="no-broker"),
        PayloadParser(),
        IngestQueue(10),
        status_topic="homeassistant/status",
        on_status=seen.append,
    )
    assert ("homeassistant/status", 1) in [(f, o.QoS) for f, o in link._subscriptions()]
    msg = mqtt.MQTTMessage(topic=b"homeassistant/status")
    msg.payload = b"online"
    link.inlet.on_message(link.client, None, msg)
    assert seen == [b"online"] and link.stats.received == 0 and len(link.queue) == 0
    sample = mqtt.MQTTMessage(topic=b"sensors/x")
    sample.payload = b"1.5"
    link.inlet.on_message(link.client, None, sample)
    assert link.stats.received == 1 and len(link.queue) == 1
    plain = MqttLink(MqttSettings(client_id="no-broker-2"), PayloadParser(), IngestQueue(10))
    assert [f for f, _ in plain._subscriptions()] == ["sensors/#"]
    link.close()
    plain.close()


# --- the daemon on a real broker --------------------------------------------------------------------
class Retained:
    """Subscribes to ``filters`` and keeps every message with its retain flag, in arrival order."""

    def __init__(self, broker, *filters: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))

        def on_connect(c, u, f, rc, p=None):
            c.subscribe([(f, 1) for f in filters])

        def on_subscribe(*_):
            self.subscribed = True

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(lambda: self.subscribed, "subscription")

    def current(self) -> dict[str, bytes]:
        """The last payload per topic."""
        out: dict[str, bytes] = {}
        for t, p, _ in list(self.messages):
            out[t] = p
        return out

    def count(self, topic: str) -> int:
        return sum(1 for t, _, _ in list(self.messages) if t == topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def config_topics(name: str) -> tuple[str, str]:
    oid = object_id(name)
    return (
        f"homeassistant/sensor/lstm_stream/{oid}/config",
        f"homeassistant/binary_sensor/lstm_stream/{oid}/config",
    )


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_announces_updates_republishes_and_removes(tmp_path, broker) -> None:
    watcher = Retained(broker, "homeassistant/#", "lstm-stream/#")
    cfg = {
        "homeassistant": {"enabled": True, "max_streams": 2, "state_interval_s": 0.5},
        "engine": {"max_streams": 3, "evict_idle_s": False},  # the least recently seen may go
        "ingest": {"batch_ms": 10},
    }
    d = Daemon(tmp_path, broker, cfg, name="ha").start()
    pub = Publisher(broker)
    try:
        a, b, c, e = (f"sensors/m{i}/temp" for i in range(4))
        t0 = time.time() - 100
        sent = 0

        def feed(names, steps, start):
            nonlocal sent
            items = [
                (n, {"value": 20 + math.sin(i / 5), "ts": t0 + i})
                for i in range(start, start + steps)
                for n in names
            ]
            pub.publish_many(items)
            sent += len(items)

        feed([a], 5, 0)  # a first, then b and c: the cap (2) leaves c out
        d.wait_metric("lstm_stream_streams", lambda v: v == 1)
        feed([b, c], 5, 0)
        d.wait_metric("lstm_stream_streams", lambda v: v == 3)
        for topic in (*config_topics(a), *config_topics(b)):
            wait_until(lambda t=topic: watcher.current().get(t), topic)
        now = watcher.current()
        for name in (a, b):
            oid = object_id(name)
            sensor_topic, binary_topic = config_topics(name)
            sensor, binary = json.loads(now[sensor_topic]), json.loads(now[binary_topic])
            for config in (sensor, binary):
                assert {"name", "unique_id", "state_topic", "availability_topic", "device"} <= config.keys()
                assert DEVICE_KEYS <= config["device"].keys()
                assert config["availability_topic"] == "lstm-stream/availability"
            assert binary["device_class"] == "problem"
            assert sensor["unique_id"] != binary["unique_id"]
            # the daemon publishes the states the configs point at
            # (ON or OFF: a young stream's range still grows, which is an anomalous condition)
            state = f"lstm-stream/stream/{oid}/anomaly"
            wait_until(lambda t=state: watcher.current().get(t) in (b"ON", b"OFF"), "anomaly state")
            forecast = wait_until(
                lambda o=oid: watcher.current().get(f"lstm-stream/stream/{o}/forecast"), "forecast"
            )
            assert math.isfinite(float(forecast))
            assert sensor["state_topic"] == f"lstm-stream/stream/{oid}/forecast"
            assert binary["state_topic"] == f"lstm-stream/stream/{oid}/anomaly"
        assert not any(object_id(c) in t for t in now), "over the cap, c must not be announced"
        assert now["lstm-stream/availability"] == b"online"
        assert "not announced" in d.log()

        # retained: a subscriber arriving now gets the configs and availability at once
        late = Retained(broker, "homeassistant/#", "lstm-stream/availability")
        wait_until(lambda: len(late.messages) >= 5, "retained configs")
        time.sleep(0.3)
        assert all(retain for _, _, retain in late.messages)
        assert set(late.current()) == {*config_topics(a), *config_topics(b), "lstm-stream/availability"}
        late.close()

        # Home Assistant restarts: it says online, the configs come again
        before_a = watcher.count(config_topics(a)[0])
        before_b = watcher.count(config_topics(b)[1])  # each stream's own count: b may have fewer
        pub.publish("homeassistant/status", "online")
        wait_until(lambda: watcher.count(config_topics(a)[0]) > before_a, "republished configs")
        wait_until(lambda: watcher.count(config_topics(b)[1]) > before_b, "republished configs")

        # a fourth stream at engine.max_streams = 3 evicts the least recently seen one, a:
        # its entities are removed and the waiting stream c takes the free place
        feed([b, c], 1, 5)
        feed([e], 1, 0)
        d.wait_metric("lstm_stream_streams_evicted_total", lambda v: v == 1, cause="capacity")
        for topic in config_topics(a):
            wait_until(lambda t=topic: watcher.current().get(t) == b"", f"removal of {topic}")
        wait_until(
            lambda: watcher.current().get(f"lstm-stream/stream/{object_id(a)}/anomaly") == b"",
            "cleared state",
        )
        for topic in config_topics(c):
            wait_until(lambda t=topic: watcher.current().get(t), f"{topic} (c announced in a's place)")
        late = Retained(broker, "homeassistant/#")
        wait_until(lambda: len(late.messages) >= 4, "retained configs")
        time.sleep(0.3)
        assert set(late.current()) == {*config_topics(b), *config_topics(c)}  # a gone, e over the cap
        late.close()

        # the status message is not a sample
        d.wait_metric("lstm_stream_messages_received_total", lambda v: v == sent)
    finally:
        pub.close()
        d.close()
        watcher.close()
