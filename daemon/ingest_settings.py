"""The ``[ingest]`` settings section: the queue between receiving and the engine, and micro-batching.

Kept out of :mod:`daemon.settings` (which it joins as ``Settings.ingest``) so each file stays short.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lstm_stream.config import OffOrZero


class IngestSettings(BaseModel):
    """The bounded queue between the MQTT thread and the engine, and micro-batching."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_size: int = Field(100_000, ge=1)
    block_s: float = Field(
        10.0, ge=0, description="how long the MQTT thread waits for room in a full queue before dropping"
    )
    batch_max: int = Field(4096, ge=1)
    reorder_window_ms: Annotated[float | None, OffOrZero] = Field(
        500.0,
        gt=0,
        description="a sample up to this much older than its stream's newest (and among its last 8) is put "
        "in order, not rejected as out_of_order; nothing waits for it; false or 0 = off",
    )
    stream_batch_max: Annotated[int | None, OffOrZero] = Field(
        16,
        ge=1,
        description="samples of one stream applied per micro-batch (each is one batched LSTM round); the "
        "rest go first into the next batches, so a message of 1,000 samples cannot stall every other "
        "stream for its length; false or 0: no bound",
    )
    stream_batch_ms: Annotated[float | None, OffOrZero] = Field(
        2.0,
        gt=0,
        description="time a micro-batch may spend on streams' second and later samples (each one more "
        "LSTM round) after the round that steps every stream present, beyond what those rounds earn at that "
        "round's cost per sample (wide rounds of batched payloads earn their own time; one stream's long "
        "array does not); the rest go first into the next batches, and carried samples alone get one "
        "batch per batch_ms, so an array costs the other streams at most this much per batch and a share "
        "of a core; false or 0: no bound",
    )
    receiver: Literal["process", "thread"] = Field(
        "process", description="MQTT receive path in a child process (own GIL) or a thread of the daemon"
    )
    source: Literal["mqtt", "nats"] = Field("mqtt", description="samples from MQTT, or JetStream ([nats])")
    batch_ms: float = Field(10.0, ge=0, le=10_000)
