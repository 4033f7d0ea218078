"""Limits at the edges: the HTTP server's timeouts and thread bound, the MQTT 5 Maximum Packet Size,
and names no output can carry kept out of Home Assistant discovery and restored checkpoints."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.ingest.link import PACKET_OVERHEAD, MqttLink
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import IngestQueue
from daemon.outputs import server as server_mod
from daemon.outputs.discovery import HomeAssistantDiscovery
from daemon.service.restore import build_engine
from daemon.settings import HomeAssistantSettings, MqttSettings, PayloadSettings, Settings
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.engine import Engine


def _get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return r.status


def test_http_server_bounds_threads_and_times_out_silent_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod._Handler, "timeout", 0.5)
    monkeypatch.setattr(server_mod._Server, "max_threads", 3)
    with server_mod.MetricsServer(CollectorRegistry()) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        extra.settimeout(2)
        assert extra.recv(100) == b""  # every thread busy: closed at once, unanswered
        extra.close()
        assert srv._server.refused >= 1
        time.sleep(1.0)  # the silent clients time out and free their threads
        for s in idle:
            s.settimeout(2)
            assert s.recv(100) == b""
            s.close()
        assert _get(srv.port) == 200


def test_mqtt5_connect_announces_a_maximum_packet_size() -> None:
    payload = PayloadSettings(max_bytes=10_000, max_topic_bytes=100)
    link = MqttLink(MqttSettings(protocol="5"), PayloadParser(payload), IngestQueue(10))
    props = link._connect_properties()
    assert props.MaximumPacketSize == 10_000 + 100 + PACKET_OVERHEAD
    huge = PayloadParser(PayloadSettings(max_bytes=10**9))
    assert MqttLink(MqttSettings(), huge, IngestQueue(10)).max_packet_size() == 268_435_455
    assert MqttLink(MqttSettings(protocol="3.1.1"), huge, IngestQueue(10))._connect_properties() is None


def test_discovery_never_announces_a_name_no_config_could_carry() -> None:
    sent: list[tuple[str, bytes]] = []
    d = HomeAssistantDiscovery(
        HomeAssistantSettings(enabled=True),
        lambda t, p, q, r: sent.append((t, p)) or True,
        availability_topic="lstm-stream/availability",
        sw_version="test",
    )
    assert d.add(["sensors/\ud800", "sensors/a\x07", "sensors/ok"]) == ["sensors/ok"]
    d.republish()  # would raise UnicodeEncodeError on a lone surrogate
    assert all(p.decode("utf-8") is not None for _, p in sent)


def test_restored_streams_with_invalid_names_are_dropped(tmp_path: Path) -> None:
    cfg = EngineConfig(model=ModelConfig(hidden=16, layers=1), look_back=4, history_len=0, max_streams=8)
    engine = Engine(cfg)
    engine.process(["ok", "bad\ud800", "bell\x07"], [1.0] * 3, [1.0] * 3)
    store = CheckpointStore(tmp_path)
    try:
        store.save(engine)
    except UnicodeError:
        pytest.skip("this checkpoint format cannot even hold such a name")
    settings = Settings(finetune={"enabled": False}, state={"directory": tmp_path}, engine=cfg)
    restored, _ = build_engine(settings, CheckpointStore(tmp_path))
    assert restored.streams == ["ok"]


def test_notify_never_blocks_on_a_full_manager_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.service import notify

    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))  # never read: its queue fills
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    t0 = time.monotonic()
    results = [notify.status(f"line {i}") for i in range(2000)]
    assert time.monotonic() - t0 < 5.0
    assert results[0] and not results[-1]
    sock.close()
