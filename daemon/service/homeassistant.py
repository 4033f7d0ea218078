"""Home Assistant discovery fed from the engine: streams as they come and go, their states per batch."""

from __future__ import annotations

from daemon.ingest.link import MqttLink
from daemon.outputs.discovery import HomeAssistantDiscovery
from daemon.outputs.events import Publish
from daemon.ratelog import RateLimitedLogger
from daemon.settings import Settings
from lstm_stream.engine import Engine, Results


def make_discovery(
    settings: Settings, engine: Engine, publish: Publish, rate_log: RateLimitedLogger
) -> HomeAssistantDiscovery | None:
    """The discovery publisher when ``homeassistant.enabled`` (publishing through ``publish``)."""
    if not settings.homeassistant.enabled:
        return None
    m = engine.config.model
    return HomeAssistantDiscovery(
        settings.homeassistant,
        publish,
        availability_topic=settings.mqtt.availability_topic,
        model=f"{m.arch.upper()} forecaster ({m.layers}x{m.hidden})",
        rate_log=rate_log,
    )


class DiscoveryFeed:
    """Keeps the announced entities in step with the engine's streams (engine thread only).

    ``link`` is the connection discovery publishes through: after each (re)connect every tracked
    stream is announced again.
    """

    def __init__(self, discovery: HomeAssistantDiscovery, engine: Engine, link: MqttLink) -> None:
        self.discovery = discovery
        self.engine = engine
        self.link = link
        self._connects = 0  # the link's connect count when everything was last announced

    def batch(self, r: Results) -> None:
        """Announce the batch's new streams, remove evicted ones, publish announced streams' states."""
        d = self.discovery
        if r.evicted:
            d.remove(r.evicted)
        if r.created:
            d.add(r.created)
        if not d.announced:
            return
        names = list(d.announced.keys() & set(r.stream))
        if names:
            slots = self.engine.table.lookup(names)
            known = slots >= 0
            if not known.all():
                names, slots = [n for n, k in zip(names, known.tolist(), strict=True) if k], slots[known]
            a = self.engine.arrays
            d.update(names, a["in_anomaly"][slots].tolist(), a["fc_mean"][slots].tolist())

    def housekeeping(self, expired: list[str]) -> None:
        """Remove expired streams; after each (re)connect announce every tracked stream again
        (restored from a checkpoint, or lost by the broker); republish when Home Assistant asks."""
        d = self.discovery
        if expired:
            d.remove(expired)
        connects = self.link.stats.connects  # the link discovery publishes through
        if connects != self._connects and self.link.is_connected():
            self._connects = connects
            d.add(self.engine.streams, publish=False)
            d.request_republish()
        d.tick()
