"""What a NATS-fed worker publishes, and where: events and forecasts on MQTT or NATS subjects
(``nats.outputs``), availability per worker, the publish fence, and the worker's identity in /metrics.

Built by the service once the source exists; on the MQTT path none of this is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.nats_settings import NatsSettings
from daemon.outputs.metrics import (
    NATS_PARTITION_WAIT,
    NATS_PARTITIONS,
    NATS_PARTITIONS_OWNED,
    NATS_STALE_RENEWALS,
    WORKER_INFO,
)
from daemon.outputs.nats_outlet import Availability, NatsOutlet
from daemon.service.fence import LeaseFence

if TYPE_CHECKING:
    from daemon.ingest.nats_pull import PullReader
    from daemon.ingest.nats_source import NatsSource
    from daemon.service.ownership import LeaseOwnership
    from daemon.service.static_ownership import StaticOwnership

log = logging.getLogger("lstm_stream.service")


def worker_availability_topic(topic: str, settings: NatsSettings) -> str:
    """On MQTT each worker keeps its own retained availability (and last will): ``<topic>/<worker_id>``."""
    return f"{topic}/{settings.holder()}"


class PartitionWaits(Collector):
    """Per owned partition, how long it has waited on the server (``PullReader.waits``), and how
    often a silent partition was given a new consumer: a stall shows in Grafana before it is lost."""

    def __init__(self, reader: PullReader) -> None:
        self.reader = reader

    def collect(self) -> list:
        wait = GaugeMetricFamily(
            NATS_PARTITION_WAIT,
            "Seconds a consumed partition has waited on NATS: without a consumer, or with messages asked "
            "for and no delivery or status since (0: neither). Renewed after 10 s, unhealthy after 30 s.",
            labels=["partition"],
        )
        for k, seconds in sorted(self.reader.waits().items()):
            wait.add_metric([str(k)], round(seconds, 3))
        renewals = CounterMetricFamily(
            NATS_STALE_RENEWALS,
            "Partitions given a new consumer because the server stopped answering their pull requests.",
        )
        renewals.add_metric([], self.reader.stale_renewals)
        return [wait, renewals]


class WorkerOutputs:
    """The NATS outlet (if ``nats.outputs = "nats"``), the availability key and the lease fence."""

    def __init__(
        self,
        settings: NatsSettings,
        registry: CollectorRegistry,
        owned: Callable[[], int],
        reader: PullReader | None = None,
    ) -> None:
        self.settings = settings
        self.outlet: NatsOutlet | None = None
        self.availability: Availability | None = None
        self.fence: LeaseFence | None = None
        self._beat: Any = None
        help_owned = "NATS partitions this worker consumes."
        Gauge(NATS_PARTITIONS_OWNED, help_owned, registry=registry).set_function(lambda: float(owned()))
        total = Gauge(NATS_PARTITIONS, "NATS partitions there are (nats.partition_count).", registry=registry)
        total.set(settings.partition_count)
        info = Gauge(
            WORKER_INFO,
            "This worker: its id in leases and availability, and how it owns partitions.",
            ["worker", "ownership", "outputs"],
            registry=registry,
        )
        info.labels(settings.holder(), settings.ownership, settings.outputs).set(1)
        if reader is not None:
            registry.register(PartitionWaits(reader))

    def attach(self, source: NatsSource, ownership: LeaseOwnership | StaticOwnership | None) -> None:
        """Start publishing through ``source``'s connection and fence by ``ownership``'s leases."""
        s = self.settings
        if ownership is not None:
            self.fence = LeaseFence(lambda: ownership.leases, source.partition_of, ownership.tick_s / 2)
        if s.outputs != "nats":
            return
        self.outlet = NatsOutlet(source.loop, lambda: source.nc if source.ready.is_set() else None)
        self._beat = source.submit(self._announce(source))

    async def _announce(self, source: NatsSource) -> None:
        await source.wait_ready()
        s = self.settings
        self.availability = Availability(source.js, s.availability_bucket, s.lease_ttl_s, s.holder())
        await self.availability.run()

    def allowed(self) -> Callable[[str], bool] | None:
        """The event publisher's fence: None (all streams) without leases."""
        return self.fence() if self.fence is not None else None

    def close(self, source: NatsSource, drain: Callable[[], Any]) -> None:
        """A clean stop while still connected: consume no more, ``drain()`` what is queued (its events
        go out on NATS), wait for them to leave, then ``offline`` in the availability bucket."""
        if self._beat is None:
            return
        self._beat.cancel()
        try:
            source.call(source.stop_consuming(source.owned))
            drain()
            source.call(self.outlet.drained(), 10.0)
            if self.availability is not None:
                source.call(self.availability.offline(), 5.0)
        except Exception as exc:  # noqa: BLE001 - the key expires by itself
            log.warning("could not finish publishing on NATS: %r", exc)
