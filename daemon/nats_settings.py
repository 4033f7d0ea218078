"""The ``[nats]`` settings section: the JetStream source (``ingest.source = "nats"``) and partition ownership.

Kept out of :mod:`daemon.settings` (which it joins as ``Settings.nats``) so each file stays short.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class NatsSettings(BaseModel):
    """Where the partitions live (servers, stream, subjects) and which of them this worker owns.

    Messages are on ``<subject_prefix>.<k>.<topic levels>`` with k in ``0 .. partition_count - 1``,
    as nats-server's mapping ``{{partition(n, ...)}}`` writes them (README, "Scale-out on NATS").
    Ownership ``static``: ``partitions`` if given, else ``worker`` of ``workers`` (k % workers ==
    worker), else all of them. ``lease``: partitions are taken and held through leases in a
    JetStream key-value bucket.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[str] = Field(["nats://127.0.0.1:4222"], min_length=1)
    stream: str = Field("SENSORS", description="the JetStream stream holding the partitions")
    subject_prefix: str = Field("part", description="first subject token: <prefix>.<k>.<topic levels>")
    partition_count: int = Field(16, ge=1, le=1024, description="n of the server's partition(n, ...)")
    ownership: Literal["static", "lease"] = "static"
    partitions: list[int] = Field([], description="static: the partitions owned; [] = by worker/workers")
    worker: int = Field(0, ge=0, description="static: this worker's index (owns k % workers == worker)")
    workers: int = Field(1, ge=1, description="static: how many workers share the partitions")
    start: Literal["all", "new"] = Field(
        "all", description="a partition without a saved position starts at the stream's first or next message"
    )
    create_stream: bool = Field(True, description="create the stream (<prefix>.>) if it does not exist")
    max_age_s: float = Field(7 * 86400.0, ge=0, description="retention of a created stream; 0 = unlimited")
    max_bytes: int = Field(-1, ge=-1, description="size limit of a created stream; -1 = unlimited")
    worker_id: str = Field("", description="lease holder name, unique per worker; '' = <hostname>-<pid>")
    lease_bucket: str = Field("lstm-stream-leases", description="key-value bucket of partition leases")
    lease_ttl_s: float = Field(15.0, ge=1, le=3600, description="a lease not renewed this long expires")
    checkpoint_bucket: str = Field("lstm-stream-checkpoints", description="object store of checkpoints")
    connect_timeout_s: float = Field(2.0, gt=0)
    outputs: Literal["mqtt", "nats"] = Field(
        "mqtt", description="events, forecasts and availability on [mqtt] topics or on NATS subjects"
    )
    availability_bucket: str = Field(
        "lstm-stream-availability", description="outputs = nats: key-value bucket of workers' availability"
    )
    batch_min: int = Field(
        1024,
        ge=0,
        description="samples a block of read messages waits for (up to batch_wait_ms) before it goes to the "
        "engine: each engine batch has a fixed cost (~1-3 ms of CPU), which small blocks pay per few "
        "samples; 0 = every ingest.batch_ms, as the MQTT path",
    )
    batch_wait_ms: float = Field(
        100.0,
        gt=0,
        le=10_000,
        description="the latency bound of batch_min: a block smaller than it goes once its oldest sample "
        "waited this long (never sooner than ingest.batch_ms)",
    )

    @field_validator("stream", "subject_prefix", "lease_bucket", "checkpoint_bucket", "availability_bucket")
    @classmethod
    def _token(cls, v: str) -> str:
        if not _TOKEN.match(v):
            raise ValueError(f"{v!r}: letters, digits, '_' and '-' only")
        return v

    @model_validator(mode="after")
    def _ownership(self) -> NatsSettings:
        bad = [k for k in self.partitions if not 0 <= k < self.partition_count]
        if bad:
            raise ValueError(f"partitions {bad} outside 0..{self.partition_count - 1}")
        if self.worker >= self.workers:
            raise ValueError(f"worker {self.worker} must be below workers ({self.workers})")
        return self

    def holder(self) -> str:
        """This worker's name in leases (and in the NATS connection name)."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def static_partitions(self) -> list[int]:
        """The partitions this worker owns under static ownership."""
        if self.partitions:
            return sorted(set(self.partitions))
        return [k for k in range(self.partition_count) if k % self.workers == self.worker]
