"""The order of a partition hand-over under lease ownership, forced on a real nats-server: a take cut
short (the object store failing, then hanging, then shutdown in the middle) never writes over the
previous owner's checkpoint, and the take is tried again rather than left leased but not adopted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from daemon.ingest.columns import ColumnQueue
from daemon.ingest.nats_leases import PartitionStore
from daemon.ingest.nats_positions import Positions
from daemon.ingest.nats_source import NatsSource
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import LinkStats
from daemon.ratelog import RateLimitedLogger
from daemon.service.ownership import POSITION, LeaseOwnership
from daemon.settings import load_settings
from lstm_stream import handover
from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.engine import Engine
from tests.nats_server import nats_server  # noqa: F401  (fixture)

BUCKET = "lstm-stream-checkpoints"
CFG = EngineConfig(model=ModelConfig(hidden=16, layers=2), look_back=8, history_len=64, max_streams=64)


def _previous_owners_checkpoint() -> bytes:
    """What a worker that handed partition 0 over left in the store: 3 streams, position 30."""
    engine = Engine(CFG)
    names = ["sensors/a/0", "sensors/a/1", "sensors/a/2"]
    for t in range(10):
        engine.process(names, np.full(3, 1000.0 + t), np.sin(np.arange(3) + t))
    return handover.encode_streams(*handover.export_streams(engine, names, {POSITION: 30}))


def _store(server, data: bytes | None = None) -> bytes | None:
    """Write ``data`` as partition 0's checkpoint (if given); return what the store holds."""

    async def run(js):
        try:
            obj = await js.object_store(BUCKET)
        except Exception:  # noqa: BLE001 - the bucket does not exist yet
            obj = await js.create_object_store(BUCKET)
        if data is not None:
            await obj.put("partition-0", data)
        return (await obj.get("partition-0")).data

    return server.run(run)


@pytest.mark.integration
def test_a_take_cut_short_never_overwrites_the_previous_owners_checkpoint(nats_server, monkeypatch):  # noqa: F811
    saved = _previous_owners_checkpoint()
    _store(nats_server, saved)
    gets: list[int] = []
    retried = threading.Event()

    async def get(self, k: int) -> bytes | None:
        gets.append(k)
        if len(gets) == 1:
            raise ConnectionError("the object store failed this once")
        retried.set()
        await asyncio.Event().wait()  # then hangs, until the take times out or shutdown cuts it short

    monkeypatch.setattr(PartitionStore, "get", get)
    settings = load_settings(
        None,
        {
            "ingest.source": "nats",
            "nats.servers": [nats_server.url],
            "nats.partition_count": 1,
            "nats.ownership": "lease",
            "nats.lease_ttl_s": 1,
            "nats.worker_id": "w",
            "state.checkpoint_interval_s": 0.05,  # a periodic write every tick
        },
    )
    positions = Positions()
    source = NatsSource(
        settings.nats,
        PayloadParser(settings.payload),
        ColumnQueue(100),
        positions,
        stats=LinkStats(),
        rate_log=RateLimitedLogger(logging.getLogger(__name__)),
    ).start([])
    engine = Engine(CFG)
    # nothing is published: the engine side only needs its lock and a drain that finds nothing queued
    batches = SimpleNamespace(lock=threading.Lock(), drain=lambda: 0, applied=0)
    ownership = LeaseOwnership(settings, source, engine, batches, positions)
    try:
        ownership.start()
        assert retried.wait(30), "the failed take was not tried again"
        ownership.close()  # in the middle of the second take
        assert ownership.held == [] and ownership.adopted == set() and source.owned == []
    finally:
        ownership.close()
        source.close()
    assert engine.streams == []  # nothing adopted
    assert _store(nats_server) == saved  # and nothing written over the previous owner's state
