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


def _source(settings, positions: Positions | None = None) -> tuple[NatsSource, ColumnQueue, LinkStats]:
    """A source reading partition 0 into a queue that waits for room, read every millisecond."""
    queue, stats = ColumnQueue(10_000, block_s=float("inf")), LinkStats()
    source = NatsSource(
        settings.nats,
        PayloadParser(settings.payload),
        queue,
        positions or Positions(),
        stats=stats,
        rate_log=RateLimitedLogger(logging.getLogger(__name__)),
        flush_s=0.001,
    ).start([0])
    return source, queue, stats


def test_every_message_once_across_fetches_and_a_lost_connection(nats_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(nats_pull, "BATCH", 7)  # a fetch boundary every few messages
    seqs = nats_server.publish(_messages(0, 601))  # the last one (600, partition 0) closes the run
    # blocks as small as read (batch_min 0): the reader is mid-stream when the connection drops
    overrides = {"ingest.source": "nats", "nats.servers": [nats_server.url], "nats.batch_min": 0}
    settings = load_settings(None, overrides)
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


def test_a_block_waits_for_batch_min_samples_or_batch_wait_ms(nats_server):  # noqa: F811
    """``nats.batch_min``: read samples go to the queue once a block holds that many (the engine's
    fixed cost per batch is paid per more samples); ``nats.batch_wait_ms`` bounds the wait."""
    overrides = {"ingest.source": "nats", "nats.servers": [nats_server.url], "nats.batch_min": 100}
    settings = load_settings(None, {**overrides, "nats.batch_wait_ms": 10_000})
    source, queue, stats = _source(settings)
    try:
        _until(source.ready.is_set, "the stream made by the source")  # not by publish(), meanwhile
        nats_server.publish([(subject_of("sensors/a/t", "part", 0), f"{i}".encode()) for i in range(60)])
        _until(lambda: stats.received == 60, "60 messages read")
        time.sleep(0.05)  # 50 flush_s periods: without batch_min they would be queued by now
        assert len(queue) == 0, "a block of 60 went to the queue before it held batch_min = 100"
        nats_server.publish([(subject_of("sensors/a/t", "part", 0), f"{i}".encode()) for i in range(60, 100)])
        _until(lambda: len(queue) == 100, "the block of 100")
        assert queue.drain(1000).values.tolist() == [float(i) for i in range(100)]
    finally:
        source.close()
    # the bound: a block below batch_min goes once its oldest sample waited batch_wait_ms
    settings = load_settings(None, {**overrides, "nats.batch_wait_ms": 200})
    source, queue, stats = _source(settings, Positions({"0": 100}))  # after the first test's messages
    try:
        nats_server.publish([(subject_of("sensors/a/t", "part", 0), b"7")])
        _until(lambda: len(queue) == 1, "a lone sample queued within batch_wait_ms")
    finally:
        source.close()


def test_a_partition_whose_requests_went_unanswered_asks_again(nats_server, monkeypatch):  # noqa: F811
    """A pull request whose end the reader never counted left the partition "asked" for good: nothing
    more was requested, the server dropped the idle consumer and the partition stopped without a word
    (seen once in `bench scale`'s failover). Now a partition that heard nothing of its requests for
    ``STALE_S`` gets a new consumer after the last message handled (a request to a consumer that is
    gone gets no answer at all). Here the uncounted end is made by hand: the count of messages asked is
    set far above what was delivered once the open request expired."""
    monkeypatch.setattr(nats_pull, "EXPIRES_NS", 300_000_000)  # requests end (408) after 0.3 s
    monkeypatch.setattr(nats_pull, "STALE_S", 1.0)
    settings = load_settings(None, {"ingest.source": "nats", "nats.servers": [nats_server.url]})
    source, queue, stats = _source(settings)
    reader = source.reader
    try:
        _until(source.ready.is_set, "the stream made by the source")
        nats_server.publish([(subject_of("sensors/a/t", "part", 0), f"{i}".encode()) for i in range(5)])
        _until(lambda: stats.received == 5, "the first 5 messages")
        with reader._lock:
            reader._asked[0] = 10**9  # as if a request's end went uncounted: nothing more is asked
        time.sleep(0.5)  # the open request expires (its 408 leaves the count far above the deliveries)
        nats_server.publish([(subject_of("sensors/a/t", "part", 0), f"{i}".encode()) for i in range(5, 10)])
        _until(lambda: len(queue) == 10, "the next 5 queued after the stale ask", timeout=10.0)
        assert queue.drain(100).values.tolist() == [float(i) for i in range(10)]  # each once, in order
        assert reader.stale_renewals == 1
    finally:
        source.close()
