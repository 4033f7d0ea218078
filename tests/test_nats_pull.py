"""The NATS source's pull reader against a real nats-server: every message of a partition queued once and
in order across many fetch boundaries and a lost connection, and positions that name the last one."""

from __future__ import annotations

import logging
import socket
import time

from daemon.ingest import nats_pull
from daemon.ingest.columns import ColumnQueue
from daemon.ingest.nats_positions import Positions, subject_of
from daemon.ingest.nats_source import NatsSource
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import LinkStats
from daemon.ratelog import RateLimitedLogger
from daemon.settings import load_settings
from tests.nats_server import nats_server  # noqa: F401  (fixture)


def _until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _messages(first: int, count: int) -> list[tuple[str, bytes]]:
    """Values ``first..`` on partition 0, every 50th on partition 1 (gaps in partition 0's sequences)."""
    return [
        (subject_of(f"sensors/a/t{i % 5}", "part", int(i % 50 == 25)), f"{i}".encode())
        for i in range(first, first + count)
    ]


def test_every_message_once_across_fetches_and_a_lost_connection(nats_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(nats_pull, "BATCH", 7)  # a fetch boundary every few messages
    seqs = nats_server.publish(_messages(0, 601))  # the last one (600, partition 0) closes the run
    settings = load_settings(None, {"ingest.source": "nats", "nats.servers": [nats_server.url]})
    # a small queue that waits for room: the reader stops mid-stream until the test takes samples
    queue, positions = ColumnQueue(50, block_s=float("inf")), Positions()
    source = NatsSource(
        settings.nats,
        PayloadParser(settings.payload),
        queue,
        positions,
        stats=LinkStats(),
        rate_log=RateLimitedLogger(logging.getLogger(__name__)),
        flush_s=0.001,
    ).start([0])
    taken: list[float] = []

    def last_seen() -> bool:
        taken.extend(queue.drain(1_000_000).values.tolist())
        return 600.0 in taken

    try:
        _until(lambda: len(queue) >= 50, "a full queue")
        source.reader._sock.shutdown(socket.SHUT_RDWR)  # mid-stream: a new consumer after the last handled
        _until(last_seen, "the last message")
        assert source.reader.connects >= 2, "the connection was not made again"
    finally:
        source.close()
    values = [int(v) for v in taken]
    expected = [i for i in range(601) if i % 50 != 25]
    assert len(values) == len(set(values)), (
        f"applied twice: {sorted({v for v in values if values.count(v) > 1})}"
    )
    assert values == expected, f"skipped: {sorted(set(expected) - set(values))}"
    assert positions.applied(len(values)) == {"0": seqs[600]}  # resume right after the last one
