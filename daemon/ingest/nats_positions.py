"""Where each JetStream partition stands: the stream sequence of the last message whose samples the
engine has applied, saved in every checkpoint (``info["nats_positions"]``) so a restart resumes each
partition right after it, and the subject <-> topic mapping of the NATS source.

Samples reach the engine through the FIFO ingest queue, counted by the service's ``Batches.applied``
(samples processed so far). After putting a message's samples in the queue the source notes a mark
``(samples queued so far, partition, sequence)``; once ``applied`` reaches a mark's count, that message
is applied. So the position read at a snapshot (under the engine lock) covers exactly the state saved.
"""

from __future__ import annotations

from collections import deque
from typing import Any

KEY = "nats_positions"  # the checkpoint info key: {"<partition>": last applied stream sequence}


def topic_of(subject: str, skip: int = 2) -> str:
    """The MQTT topic a partition subject carries: ``part.3.sensors.a.b`` -> ``sensors/a/b``.

    nats-server's MQTT listener turns ``/`` into ``.`` (and refuses topics with ``.`` or spaces), so
    joining the tokens after ``<prefix>.<k>`` with ``/`` names the same streams as MQTT would."""
    return "/".join(subject.split(".")[skip:])


def subject_of(topic: str, prefix: str, partition: int) -> str:
    """The subject a topic lands on in ``partition`` (what nats-server's mapping writes)."""
    return f"{prefix}.{partition}.{topic.replace('/', '.')}"


def ack_fields(reply: str) -> tuple[int, float]:
    """(stream sequence, publish time in epoch seconds) from a JetStream message's reply subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`` (or the form with a
    domain and account hash: two more tokens after ACK, one more at the end)."""
    tokens = reply.split(".")
    off = 0 if len(tokens) == 9 else 2
    return int(tokens[5 + off]), int(tokens[7 + off]) / 1e9


class Positions:
    """Last applied stream sequence per partition, advanced as the engine applies queued samples.

    One writer (the source's thread: :meth:`note`) and one reader under the engine lock
    (:meth:`applied`); ``deque`` appends and pops are atomic, so no lock is needed.
    """

    def __init__(self, restored: dict[str, Any] | None = None) -> None:
        self.done: dict[int, int] = {int(k): int(v) for k, v in (restored or {}).items()}
        self.queued = 0  # samples the source has put in the queue
        self._marks: deque[tuple[int, int, int]] = deque()

    def start_after(self, partition: int) -> int | None:
        """The sequence a partition's consumer resumes after (None: no saved position)."""
        return self.done.get(partition)

    def note(self, samples: int, partition: int, sequence: int) -> None:
        """The source put ``samples`` samples of message ``sequence`` of ``partition`` in the queue
        (0 for a rejected payload: it counts as applied once everything before it is)."""
        self.queued += samples
        self._marks.append((self.queued, partition, sequence))

    def note_many(self, marks: list[tuple[int, int, int]], samples: int) -> None:
        """:meth:`note` for a run of messages queued as one block: ``marks`` hold the counts
        already added up (from :attr:`queued`), ``samples`` is the block's size."""
        self.queued += samples
        self._marks.extend(marks)

    def applied(self, applied: int) -> dict[str, int]:
        """Positions once ``applied`` queued samples are through the engine (saved in a checkpoint)."""
        marks, done = self._marks, self.done
        while marks and marks[0][0] <= applied:
            _, partition, sequence = marks.popleft()
            done[partition] = sequence
        return {str(k): v for k, v in sorted(done.items())}

    def adopt(self, partition: int, sequence: int | None) -> None:
        """A partition taken over with its state (leases): it resumes after ``sequence``."""
        if sequence is None:
            self.done.pop(partition, None)
        else:
            self.done[partition] = sequence
