"""Home Assistant MQTT discovery: a forecast sensor and an anomaly binary sensor per stream.

Optional (``[homeassistant] enabled = true``). For each stream, up to ``max_streams`` of them, the
daemon announces two entities under one device, as retained JSON configs:

- ``<prefix>/sensor/<node_id>/<object_id>/config``: the next-value forecast, state on
  ``<state_prefix>/<object_id>/forecast`` (a plain number, retained, QoS 0, at most once per
  ``state_interval_s`` per stream);
- ``<prefix>/binary_sensor/<node_id>/<object_id>/config``: the anomaly condition
  (``device_class: problem``), state on ``<state_prefix>/<object_id>/anomaly`` (``ON``/``OFF``,
  retained, QoS 1, published only when it changes).

Both carry the daemon's availability topic (``online``/``offline``, the last will), so Home
Assistant marks every entity unavailable when the daemon goes away. ``<object_id>`` is the stream
name reduced to ``[A-Za-z0-9_-]`` plus a short hash of the full name (two names that reduce to
the same text stay apart; the id is the same on every run, so entities survive restarts). Configs
are republished when Home Assistant says ``online`` on ``<prefix>/status`` and after every
(re)connect to the broker; a stream that is evicted or expires is removed with empty retained
payloads on its config and state topics.

Every method runs on the engine thread except :meth:`HomeAssistantDiscovery.on_status`, which the
MQTT network thread calls: it only sets a flag for the next :meth:`~HomeAssistantDiscovery.tick`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.outputs.events import Publish
from daemon.outputs.metrics import package_version
from daemon.ratelog import RateLimitedLogger
from daemon.rejects import valid_name
from daemon.settings import HomeAssistantSettings

log = logging.getLogger(__name__)

COMPONENTS = ("sensor", "binary_sensor")
STATES = ("forecast", "anomaly")  # state topic leaves, in the order of COMPONENTS
ON, OFF = b"ON", b"OFF"
ONLINE, OFFLINE = "online", "offline"  # the daemon's availability payloads (daemon.ingest.link)
MAX_SLUG = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def object_id(stream: str) -> str:
    """A topic- and entity-safe id for ``stream``: ``[A-Za-z0-9_-]`` text plus 8 hex of a hash."""
    slug = _UNSAFE.sub("_", stream).strip("_")[:MAX_SLUG].rstrip("_") or "stream"
    digest = hashlib.blake2s(stream.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{slug}_{digest}"


@dataclass(slots=True)
class _Entry:
    """One announced stream and what was last published for it."""

    object_id: str
    anomaly: bool | None = None  # last anomaly state published (None: none yet)
    forecast_at: float = -math.inf  # when the forecast was last published (clock seconds)


class EntityConfigs:
    """The topics and retained discovery configs of the two entities per stream (no publishing)."""

    def __init__(
        self, settings: HomeAssistantSettings, availability_topic: str, model: str, sw_version: str
    ) -> None:
        self.settings = settings
        self.availability_topic = availability_topic
        node = settings.node_id
        self.device = {
            "identifiers": [node],
            "name": "lstm-stream" if node == "lstm_stream" else f"lstm-stream {node}",
            "manufacturer": "lstm-stream",
            "model": model,
            "sw_version": sw_version,
        }
        self.origin = {"name": "lstm-stream", "sw_version": sw_version}

    def config_topic(self, component: str, oid: str) -> str:
        """``<prefix>/<component>/<node_id>/<object_id>/config``."""
        return f"{self.settings.prefix}/{component}/{self.settings.node_id}/{oid}/config"

    def state_topic(self, oid: str, leaf: str) -> str:
        """``<state_prefix>/<object_id>/<leaf>`` (leaf ``forecast`` or ``anomaly``)."""
        return f"{self.settings.state_prefix}/{oid}/{leaf}"

    def configs(self, stream: str) -> dict[str, dict[str, Any]]:
        """The two discovery configs of ``stream``, by config topic."""
        oid = object_id(stream)
        node = self.settings.node_id
        common = {
            "availability_topic": self.availability_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": self.device,
            "origin": self.origin,
        }
        sensor = {
            "name": f"{stream} forecast",
            "unique_id": f"{node}_{oid}_forecast",
            "state_topic": self.state_topic(oid, "forecast"),
            "state_class": "measurement",
            "icon": "mdi:chart-bell-curve-cumulative",
            "qos": 0,
            **common,
        }
        binary = {
            "name": f"{stream} anomaly",
            "unique_id": f"{node}_{oid}_anomaly",
            "state_topic": self.state_topic(oid, "anomaly"),
            "device_class": "problem",
            "payload_on": ON.decode(),
            "payload_off": OFF.decode(),
            "qos": 1,
            **common,
        }
        return {self.config_topic("sensor", oid): sensor, self.config_topic("binary_sensor", oid): binary}


class HomeAssistantDiscovery:
    """Announces, updates and removes the Home Assistant entities of the daemon's streams (which are
    announced, which wait over the cap, which removals are still owed; what goes out when).

    ``publish(topic, payload, qos, retain)`` sends one message and returns False when it could not
    (e.g. disconnected): removals that fail are retried at the next republish; configs and states
    are republished after every reconnect anyway.
    """

    def __init__(
        self,
        settings: HomeAssistantSettings,
        publish: Publish,
        *,
        availability_topic: str,
        model: str = "LSTM forecaster",
        sw_version: str | None = None,
        rate_log: RateLimitedLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._publish = publish
        self.availability_topic = availability_topic
        self.status_topic = f"{settings.prefix}/status"
        self._clock = clock
        self._rlog = rate_log if rate_log is not None else RateLimitedLogger(log)
        self.entities = EntityConfigs(settings, availability_topic, model, sw_version or package_version())
        self.announced: dict[str, _Entry] = {}  # stream -> entry, in announcement order
        self._waiting: dict[str, None] = {}  # streams over the cap, announced when room frees up
        self._pending_removal: dict[str, None] = {}  # object ids whose removal did not go out
        self._republish = threading.Event()

    def _send(self, topic: str, payload: bytes, qos: int) -> bool:
        return self._publish(topic, payload, qos, True)

    def _announce(self, stream: str) -> None:
        for topic, config in self.entities.configs(stream).items():
            self._send(topic, _dumps(config), 1)

    # --- streams come and go --------------------------------------------------------------------
    def add(self, names: Iterable[str], publish: bool = True) -> list[str]:
        """Announce streams not yet announced, up to ``max_streams``; returns those announced now.

        Streams over the cap wait (at most ``max_streams`` of them) for room; the cap is logged at
        most once per log interval. ``publish=False`` only records them (a republish follows).
        """
        cap = self.settings.max_streams
        added: list[str] = []
        over: list[str] = []
        for name in names:
            if name in self.announced or not valid_name(name):  # a name no config could carry
                continue
            if len(self.announced) >= cap:
                if name not in self._waiting:
                    over.append(name)
                    if len(self._waiting) < cap:
                        self._waiting[name] = None
                continue
            self._waiting.pop(name, None)
            entry = _Entry(object_id(name))
            self._pending_removal.pop(entry.object_id, None)
            self.announced[name] = entry
            added.append(name)
            if publish:
                self._announce(name)
        if over:
            self._rlog.log(
                "homeassistant_capped",
                "home assistant discovery: %d streams announced (homeassistant.max_streams); "
                "%d more not announced, e.g. %r",
                len(self.announced),
                len(over),
                over[0],
            )
        return added

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove the entities of these streams (evicted, expired); announce waiting ones instead.

        Returns the names whose entities were removed.
        """
        removed: list[str] = []
        for name in names:
            self._waiting.pop(name, None)
            entry = self.announced.pop(name, None)
            if entry is None:
                continue
            removed.append(name)
            if not self._clear(entry.object_id):
                self._pending_removal[entry.object_id] = None
        if removed and self._waiting:
            room = self.settings.max_streams - len(self.announced)
            self.add(list(self._waiting)[: max(room, 0)])
        return removed

    def _clear(self, oid: str) -> bool:
        """Empty retained payloads on the config and state topics of ``oid``; True if all went out."""
        ok = True
        for component, leaf in zip(COMPONENTS, STATES, strict=True):
            ok &= self._send(self.entities.config_topic(component, oid), b"", 1)
            ok &= self._send(self.entities.state_topic(oid, leaf), b"", 1)
        return ok

    # --- states ----------------------------------------------------------------------------------
    def update(self, names: Sequence[str], anomaly: Sequence[bool], forecast: Sequence[float]) -> None:
        """The current anomaly condition and next-value forecast of announced streams.

        The anomaly state is published when it changes (or was never published), the forecast at
        most once per ``state_interval_s`` per stream. Names not announced are ignored.
        """
        now = self._clock()
        interval = self.settings.state_interval_s
        state_topic = self.entities.state_topic
        for name, flag, fc in zip(names, anomaly, forecast, strict=True):
            entry = self.announced.get(name)
            if entry is None:
                continue
            flag = bool(flag)
            if flag is not entry.anomaly:
                if self._send(state_topic(entry.object_id, "anomaly"), ON if flag else OFF, 1):
                    entry.anomaly = flag
            if now - entry.forecast_at >= interval and math.isfinite(fc):
                if self._send(state_topic(entry.object_id, "forecast"), f"{fc:.6g}".encode(), 0):
                    entry.forecast_at = now

    # --- Home Assistant restarts, broker reconnects ------------------------------------------------
    def on_status(self, payload: bytes) -> None:
        """A message on ``<prefix>/status`` (network thread): ``online`` asks for a republish."""
        if payload.strip().lower() == b"online":
            self._republish.set()

    def request_republish(self) -> None:
        """Republish everything at the next :meth:`tick` (after a reconnect)."""
        self._republish.set()

    def tick(self) -> bool:
        """Engine thread, about once a second: republish if asked to; True if it did."""
        if not self._republish.is_set():
            return False
        self._republish.clear()
        self.republish()
        return True

    def republish(self) -> None:
        """Every config again, removals that did not go out, and the states at the next update."""
        for oid in list(self._pending_removal):
            if self._clear(oid):
                del self._pending_removal[oid]
        for name, entry in self.announced.items():
            self._announce(name)
            entry.anomaly = None  # states go out again with the next batch of the stream
            entry.forecast_at = -math.inf
        log.info("home assistant discovery: %d streams announced", len(self.announced))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
