"""The NATS source's hot path: JetStream pull consumers read on a raw socket, whole read buffers at a time.

nats-py costs a Python protocol parse, a ``Msg`` object and a callback per message; here one thread
owns a plain TCP connection, asks each owned partition's pull consumer for messages in batches
(``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``), and turns everything one ``recv`` brought into
one block of columns for the engine's queue (:class:`~daemon.ingest.columns.ColumnQueue`), with the
position marks of every message (:class:`~daemon.ingest.nats_positions.Positions`) noted first.

A delivery is ``MSG|HMSG <subject> <sid> $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.
<pending> [hdr_len] <len>``: the consumer name says whether it is the partition's current consumer (a
stale one's messages are dropped), the stream sequence is the position and the duplicate check, the
consumer sequence must rise by one (a gap makes a new consumer after the last message handled), and the
JetStream time is the arrival time of a sample without a timestamp. Requests end with a status on the
partition's inbox (408 with the batch's unfilled count). Consumers are made and deleted by the source
on its nats-py connection; this thread asks for a new one through ``on_lost(k)``.
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from daemon.ingest.columns import ColumnQueue, Columns
from daemon.ingest.inlet import BAD_NAME, INTERNAL
from daemon.ingest.nats_positions import Positions, topic_of
from daemon.ingest.payload import PayloadParser
from daemon.ingest.queue import LinkStats
from daemon.ratelog import RateLimitedLogger

log = logging.getLogger(__name__)

BATCH = 1024  # messages per pull request; a partition keeps up to two requests open
EXPIRES_NS = 5_000_000_000  # an open request ends (status 408) after this long without messages
# a partition asked for messages and heard nothing of its requests (no delivery, no status) this long:
# every request ends within EXPIRES_NS, so its consumer is gone or the count of what it was asked went
# wrong; either way a new consumer after the last message handled (a request to a consumer that no
# longer exists gets no answer at all)
STALE_S = 2 * EXPIRES_NS / 1e9
# a partition still waiting this long (its renewals are failing too) makes the worker unhealthy
STUCK_S = 3 * STALE_S
READ_BYTES = 1 << 18
RETRY_S = 1.0
# a JetStream delivery's frame head: subject, reply fields (consumer, stream seq, consumer seq, time),
# header length (HMSG) and total length; the 11-token reply form has a domain and an account hash
_DELIVERY = re.compile(
    rb"H?MSG ([^ ]+) \d+ \$JS\.ACK\.(?:[^.]+\.[^.]+\.)?[^.]+\.([^.]+)\.\d+\.(\d+)\.(\d+)\.(\d+)\.\d+"
    rb"(?:\.[^ ]+)? (?:(\d+) )?(\d+)\r\n"
)
# the same for the 9-token form only (no domain): a third of the time per frame, as nothing backtracks;
# it cannot match the longer forms (their extra tokens stand where this one wants the space)
_DELIVERY9 = re.compile(
    rb"H?MSG ([^ ]+) \d+ \$JS\.ACK\.[^.]+\.([^.]+)\.\d+\.(\d+)\.(\d+)\.(\d+)\.\d+ (?:(\d+) )?(\d+)\r\n"
)
_STATUS = re.compile(rb"NATS/1\.0 (\d+)")
_PENDING = re.compile(rb"Nats-Pending-Messages: *(\d+)", re.IGNORECASE)


class PullReader:
    """One raw connection reading the owned partitions' pull consumers into ``queue``.

    Other threads call :meth:`start_partition` (a new consumer of ``k``, resuming after ``after``)
    and :meth:`release` (none of ``k``'s messages is queued once it returns); everything on the
    socket happens on this reader's thread.
    """

    def __init__(
        self,
        servers: list[str],
        stream: str,
        parser: PayloadParser,
        queue: ColumnQueue,
        positions: Positions,
        *,
        stats: LinkStats,
        rate_log: RateLimitedLogger,
        partition_of: dict[str, int],
        on_lost: Callable[[int], None],
        on_enqueued: Callable[[], None] | None = None,
        prefix_tokens: int = 2,
        flush_s: float = 0.01,
        flush_max: int = 4096,
        flush_min: int = 0,
        wait_s: float = 0.0,
    ) -> None:
        """``flush_s``/``flush_max``: samples are read every ``flush_s`` and queued as one block once
        ``flush_max`` are read (the service's ``ingest.batch_ms``/``batch_max``); a block is queued
        once it holds ``flush_min`` samples, or its oldest has waited ``wait_s`` (``nats.batch_min``,
        ``batch_wait_ms``; never sooner than ``flush_s``)."""
        self.servers = servers
        self.stream = stream
        self.parser = parser
        self.queue = queue
        self.positions = positions
        self.stats = stats
        self._rlog = rate_log
        self.partition_of = partition_of
        self._on_lost = on_lost
        self._on_enqueued = on_enqueued
        self._skip = prefix_tokens
        self.inbox = f"_INBOX.lstm{id(self):x}{time.monotonic_ns() % 10**9}"
        self.handled: dict[int, int] = {}  # partition -> stream sequence of the last message handled
        self._consumer: dict[int, bytes] = {}  # partition -> its current consumer's name
        self._cseq: dict[int, int] = {}  # partition -> consumer sequence of the last delivery
        self._asked: dict[int, int] = {}  # partition -> messages asked of its consumer (less unfilled)
        self._heard: dict[int, float] = {}  # partition -> when its last request, delivery or status was
        self._subjects: dict[bytes, tuple[str, int]] = {}  # subject -> (topic, partition)
        self._lock = threading.Lock()  # held while a read buffer is turned into samples
        self._flush_s, self._flush_max = flush_s, flush_max
        self._flush_min, self._wait_s = flush_min, max(wait_s, flush_s)
        self._rows: list = []  # samples read, not queued yet (one block per flush)
        self._marks: list[tuple[int, int, int]] = []  # their messages' position marks
        self._since = 0.0  # when the oldest of them was read
        self._read_at = 0.0  # when the socket was last read out
        self._wake_r, self._wake_w = socket.socketpair()
        self._sock: socket.socket | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connects = 0  # connections made (the first, and one per reconnect)
        self.stale_renewals = 0  # consumers replaced because their partition heard nothing (STALE_S)

    # ------------------------------------------------------------------ any thread
    def start(self) -> PullReader:
        self._thread = threading.Thread(target=self._run, name="nats-pull", daemon=True)
        self._thread.start()
        return self

    def start_partition(self, k: int, consumer: str, after: int) -> None:
        """Read partition ``k`` from ``consumer`` (created to start right after ``after``)."""
        with self._lock:
            self.handled[k] = after
            self._consumer[k] = consumer.encode()
            self._cseq[k] = 0
            self._asked[k] = 0
            self._heard[k] = time.monotonic()
        self._wake()

    def release(self, k: int) -> None:
        """Stop partition ``k``: not one more of its messages is queued after this returns (what
        was read before is queued now)."""
        with self._lock:
            self._flush()
            self._consumer.pop(k, None)

    def waits(self) -> dict[int, float]:
        """How long (s) each partition read here has been waiting on the server: one without a
        consumer, since it last heard from it; one with messages asked for, since its last
        delivery or status up to the last read of the socket (what :data:`STALE_S` judges, so a
        wait for queue room does not count); 0 otherwise. For /metrics and /healthz: without the
        lock, which the reader holds while it waits for queue room (single reads of ints and floats:
        a value may be one read old, never torn)."""
        now = time.monotonic()
        return {
            k: now - self._heard.get(k, now) if not consumer else max(0.0, self._unanswered_s(k))
            for k, consumer in list(self._consumer.items())
        }

    def _unanswered_s(self, k: int) -> float:
        """Seconds partition ``k`` has asked for messages and heard nothing of its requests, measured
        up to the last read of the socket (not across a wait for queue room); 0 with nothing asked."""
        if self._asked.get(k, 0) <= self._cseq.get(k, 0):
            return 0.0
        return self._read_at - self._heard.get(k, self._read_at)

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # ------------------------------------------------------------------ the reader's thread
    def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            url = self.servers[attempt % len(self.servers)]
            attempt += 1
            try:
                self._connect(url)
            except OSError as exc:
                self._rlog.log("nats_pull_connect", "cannot reach NATS %s (%r), retrying", url, exc)
                time.sleep(RETRY_S)
                continue
            try:
                self._serve()
            except (OSError, ConnectionError) as exc:
                if not self._stopping:
                    self._rlog.log("nats_pull_lost", "NATS connection lost (%r); reconnecting", exc)
            finally:
                self.connected.clear()
                self._sock.close()
                self._sock = None
            if not self._stopping:
                self._lose_all()
                time.sleep(RETRY_S / 4)

    def _connect(self, url: str) -> None:
        u = urlsplit(url if "://" in url else f"nats://{url}")
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=5.0)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            info = b""
            while b"\r\n" not in info:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before INFO")
                info += chunk
            if b'"tls_required":true' in info.replace(b" ", b"") or u.scheme == "tls":
                raise ConnectionError("the server wants TLS, which the NATS pull reader does not speak")
            opts: dict[str, Any] = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
            opts.update({"no_responders": True, "name": "lstm-stream pull", "lang": "python-raw"})
            if u.username:
                opts.update({"user": u.username, "pass": u.password or ""})
            sub = b"SUB %s.* 1\r\nPING\r\n" % self.inbox.encode()
            sock.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\n" + sub)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.connects += 1
        self.connected.set()
        log.info("NATS pull connection to %s:%s", u.hostname, u.port or 4222)

    def _lose_all(self) -> None:
        """The connection dropped: every partition needs a new consumer after what it handled."""
        with self._lock:
            lost = list(self._consumer)
            for k in lost:
                self._consumer[k] = b""  # wanted, no consumer yet: no requests, deliveries dropped
        for k in lost:
            self._on_lost(k)

    def _serve(self) -> None:
        """Read, parse, queue. With samples pending, the socket is left alone until the next read is
        due (``flush_s`` after the last) and then read out at once: about one read and one parse per
        ``flush_s``, not one per segment the network delivered (the server holds at most two pull
        batches per partition); the block goes to the queue once :meth:`_due`."""
        sock, wake = self._sock, self._wake_r
        buf = b""
        idle_since, pinged = time.monotonic(), False
        while not self._stopping:
            self._request()
            if self._marks:  # a block is filling: wait until the next read (or a wake-up)
                due = min(self._read_at + self._flush_s, self._since + self._wait_s) - time.monotonic()
                if due > 0 and len(self._rows) < self._flush_max:
                    if select.select([wake], [], [], due)[0]:
                        wake.recv(4096)
                    continue
                readable = True
            else:
                ready = select.select([sock, wake], [], [], 1.0)[0]
                if wake in ready:
                    wake.recv(4096)
                readable = sock in ready
            if readable:
                self._read_at = time.monotonic()
                data = self._read_all(sock)
                if data:
                    idle_since, pinged = time.monotonic(), False
                    buf = self._take(buf + data if buf else data)
            elif time.monotonic() - idle_since >= 2 * EXPIRES_NS / 1e9:  # every request ends by then
                if pinged:  # not even a PONG: a dead connection that TCP has not noticed
                    raise ConnectionError("no answer from the server")
                sock.sendall(b"PING\r\n")
                idle_since, pinged = time.monotonic(), True
            if self._marks and self._due(time.monotonic() - self._since):
                self._queue()

    def _due(self, age: float) -> bool:
        """Whether the pending block (its oldest sample read ``age`` s ago) goes to the queue now:
        ``flush_max`` samples, or ``flush_min`` once ``flush_s`` passed, or ``wait_s`` passed."""
        n = len(self._rows)
        if n >= self._flush_max or age >= self._wait_s:
            return True
        return age >= self._flush_s and n >= self._flush_min

    @staticmethod
    def _read_all(sock: socket.socket) -> bytes:
        """Everything the socket holds now (up to a few reads); b"" if nothing; raises once closed."""
        parts = []
        for _ in range(16):
            try:
                data = sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not data:
                if parts:
                    break  # parse what came first; the next read sees the end
                raise ConnectionError("closed by the server")
            parts.append(data)
            if len(data) < READ_BYTES:
                break
        return b"".join(parts)

    def _request(self) -> None:
        """Keep one to two batches asked for and not delivered on every partition with a consumer
        (a consumer's sequence counts its deliveries)."""
        wants, stale = [], []
        asked, cseqs, heard, now = self._asked, self._cseq, self._heard, time.monotonic()
        with self._lock:
            for k, consumer in self._consumer.items():
                if not consumer:
                    continue
                if self._unanswered_s(k) > STALE_S:
                    self._consumer[k] = b""  # no requests, deliveries dropped until the new consumer
                    stale.append(k)
                elif asked[k] - cseqs[k] < BATCH:
                    asked[k] += BATCH
                    heard[k] = now
                    wants.append((k, consumer))
        for k in stale:
            self._rlog.log(
                "nats_pull_stale",
                "partition %d: no answer to its pull requests in %.0f s: a new consumer",
                k,
                self._unanswered_s(k),
                level=logging.WARNING,
            )
            self.stale_renewals += 1
            self._on_lost(k)
        if not wants:
            return
        body = json.dumps({"batch": BATCH, "expires": EXPIRES_NS}).encode()
        out = []
        stream, inbox = self.stream.encode(), self.inbox.encode()
        for k, consumer in wants:
            out.append(
                b"PUB $JS.API.CONSUMER.MSG.NEXT.%s.%s %s.%d %d\r\n%s\r\n"
                % (stream, consumer, inbox, k, len(body), body)
            )
        self._sock.sendall(b"".join(out))

    def _take(self, buf: bytes) -> bytes:
        """Every whole frame of ``buf`` into the pending samples; returns the unread rest."""
        lost: list[int] = []
        with self._lock:
            if not self._marks:
                self._since = time.monotonic()
            end = self._frames(buf, self._rows, self._marks, lost)
        for k in lost:
            self._on_lost(k)
        return buf[end:]

    def _queue(self) -> None:
        """The pending samples into the queue as one block; the service's batch runs right here."""
        with self._lock:
            queued = self._flush()
        if queued and self._on_enqueued is not None:
            self._on_enqueued()

    def _flush(self) -> int:
        """(Under the lock.) Note the pending messages' positions, then queue their samples."""
        rows, marks = self._rows, self._marks
        if not marks:
            return 0
        self._rows, self._marks = [], []
        self.positions.note_many(marks, len(rows))  # before the samples can be applied
        if rows and self.queue.put_many(Columns.from_rows(rows)):
            self._rlog.log("queue_full", "ingest queue full: samples dropped")
        return len(rows)

    def _frames(self, buf: bytes, rows: list, marks: list, lost: list) -> int:  # noqa: C901 - the hot loop
        """Parse the frames of ``buf`` (under the lock); returns where the unread rest starts."""
        match, match_any, find, n = _DELIVERY9.match, _DELIVERY.match, buf.find, len(buf)
        consumers, cseqs, handled = self._consumer, self._cseq, self.handled
        subjects, parse, extend, mark = self._subjects, self.parser.parse, rows.extend, marks.append
        partition_of, rejected = self.partition_of, self.stats.rejected
        base, before = self.positions.queued, len(marks)
        heard, now = self._heard, time.monotonic()
        pos = 0
        while pos < n:
            m = match(buf, pos) or match_any(buf, pos)
            if m is None:
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                used = self._control(buf, pos, eol, lost)
                if used < 0:
                    break
                pos = used
                continue
            subject, consumer, sseq, cseq, ns, hdr, size = m.groups()
            start = m.end()
            stop = start + int(size)
            if stop + 2 > n:
                break
            pos = stop + 2
            where = subjects.get(subject)
            if where is None:
                where = self._subject(subject)
            k = where[1]
            if consumers.get(k) != consumer:  # released, or a consumer replaced since
                continue
            c = int(cseq)
            if c != cseqs[k] + 1:  # a gap in this consumer's deliveries: start over after the last
                consumers[k] = b""
                lost.append(k)
                continue
            cseqs[k] = c
            heard[k] = now
            seq = int(sseq)
            if seq <= handled[k]:
                continue
            handled[k] = seq
            if hdr:
                start += int(hdr)
            topic = where[0]
            if topic is None:
                rejected[BAD_NAME] += 1
                mark((base + len(rows), k, seq))
                continue
            try:
                result = parse(topic, buf[start:stop], int(ns) / 1e9)
                if type(result) is list:
                    extend(result)
                    if len(result) == 1:
                        partition_of[result[0][0]] = k
                    else:
                        for sample in result:
                            partition_of[sample[0]] = k
                else:
                    reason = result.reason
                    rejected[reason] = rejected.get(reason, 0) + 1
                    self._rlog.log(reason, "rejected payload on %s: %s", topic[:120], reason)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the partition
                rejected[INTERNAL] += 1
                self._rlog.log(INTERNAL, "error handling a message: %r", exc, level=logging.ERROR)
            mark((base + len(rows), k, seq))
        self.stats.received += len(marks) - before  # one mark per message handled
        return pos

    def _subject(self, subject: bytes) -> tuple[str | None, int]:
        """(topic, partition) of a delivery's subject, remembered (bounded: partitions x topics)."""
        try:
            text = subject.decode("utf-8")
            topic: str | None = topic_of(text, self._skip)
        except UnicodeDecodeError:
            text, topic = subject.decode("latin-1"), None
        try:
            k = int(text.split(".")[self._skip - 1])
        except (ValueError, IndexError):
            k = -1
        if len(self._subjects) >= 1 << 18:
            self._subjects.clear()
        self._subjects[subject] = where = (topic, k)
        return where

    def _control(self, buf: bytes, pos: int, eol: int, lost: list) -> int:
        """A frame other than a delivery at ``pos``: a request's status, PING, INFO, errors.
        Returns where the next frame starts (-1: not all of it is here yet)."""
        head = buf[pos:eol]
        nxt = eol + 2
        if head.startswith(b"HMSG ") or head.startswith(b"MSG "):
            parts = head.split()
            size = int(parts[-1])
            if nxt + size + 2 > len(buf):
                return -1
            if head.startswith(b"HMSG "):
                self._status(parts[1], buf[nxt : nxt + int(parts[-2])], lost)
            return nxt + size + 2
        if head == b"PING":
            self._sock.sendall(b"PONG\r\n")
        elif head.startswith(b"-ERR"):
            self._rlog.log("nats_pull_err", "NATS: %s", head.decode("utf-8", "replace"))
        return nxt

    def _status(self, subject: bytes, headers: bytes, lost: list) -> None:
        """A pull request's end on ``<inbox>.<k>``: 408 (expired, its unfilled count in the headers),
        409 (e.g. the consumer was deleted: a new one), 100 (heartbeat)."""
        try:
            k = int(subject.rsplit(b".", 1)[1])
        except (ValueError, IndexError):
            return
        m = _STATUS.match(headers)
        code = int(m.group(1)) if m else 0
        if k not in self._consumer or code == 100:
            return
        self._heard[k] = time.monotonic()
        pending = _PENDING.search(headers)
        if code == 409 and b"Deleted" in headers:
            if self._consumer[k]:
                self._consumer[k] = b""
                lost.append(k)
        elif pending is not None:  # the request ended with this many not delivered
            self._asked[k] = max(self._cseq[k], self._asked[k] - int(pending.group(1)))
        else:
            self._asked[k] = self._cseq[k]  # e.g. too many requests waiting: ask again
