"""Simulated plant sensors with injected anomalies, the ledger of what was injected and flagged, and
the watcher that prints each anomaly event as it arrives."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from daemon.commands.demo.console import Console

TOPIC_PREFIX = "demo"

SIM_WARMUP = 300  # steps before the simulator injects anything: warm-up plus some settling

ANOMALY_EVERY = 300  # mean steps between injections, per sensor

GRACE_STEPS = 30  # a flag up to this many steps after an injection ended counts as catching it


@dataclass
class Injection:
    """An anomaly the simulator injected: steps ``start`` to ``end`` (inclusive) on one stream."""

    stream: str
    kind: str
    start: int
    end: int
    flags: int = 0


@dataclass
class Ledger:
    """What was injected and what was flagged; steps are recovered from timestamps (``t0 + step/rate``)."""

    t0: float
    rate: float
    injections: dict[str, list[Injection]] = field(default_factory=dict)
    flagged: int = 0
    matched: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step_of(self, ts: float) -> int:
        return round((ts - self.t0) * self.rate)

    def ts_of(self, step: int) -> float:
        return self.t0 + step / self.rate

    def inject(self, stream: str, kind: str, start: int, end: int) -> None:
        with self.lock:
            self.injections.setdefault(stream, []).append(Injection(stream, kind, start, end))

    def flag(self, stream: str, ts: float) -> Injection | None:
        """Count a flag; the injection it belongs to (the latest one it can explain), if any."""
        step = self.step_of(ts)
        with self.lock:
            self.flagged += 1
            for inj in reversed(self.injections.get(stream, [])):
                if inj.start - 1 <= step <= inj.end + GRACE_STEPS:
                    inj.flags += 1
                    self.matched += 1
                    return inj
        return None

    def missed(self, warmup: int, before: int) -> list[Injection]:
        """Injections after warm-up that nothing flagged and whose grace period ended before ``before``."""
        with self.lock:
            out = [
                i
                for lst in self.injections.values()
                for i in lst
                if i.start >= warmup and not i.flags and i.end + GRACE_STEPS < before
            ]
        return sorted(out, key=lambda i: i.start)

    def summary(self, warmup: int) -> dict[str, int]:
        with self.lock:
            after = [i for lst in self.injections.values() for i in lst if i.start >= warmup]
            return {
                "injected": len(after),
                "caught": sum(1 for i in after if i.flags),
                "flagged": self.flagged,
                "flags_at_injections": self.matched,
                "flags_elsewhere": self.flagged - self.matched,
            }


def _mqtt_client(client_id: str):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(0)
    return client


class SensorFeed(threading.Thread):
    """The simulator stepped at ``rate`` steps per second, each sensor's value published as JSON."""

    def __init__(self, broker, ledger: Ledger, sensors: int, seed: int, stop: threading.Event) -> None:
        super().__init__(name="sensors", daemon=True)
        from lstm_stream.synthetic import Simulator

        self.sim = Simulator(sensors=sensors, seed=seed, anomaly_every=ANOMALY_EVERY, warmup=SIM_WARMUP)
        self.topics = [f"{TOPIC_PREFIX}/{s.name}" for s in self.sim.sensors]
        self.ledger = ledger
        self.stop_event = stop
        self.steps = 0
        self.published = 0
        self.client = _mqtt_client("lstm-stream-demo-sensors")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def run(self) -> None:
        ledger, sim = self.ledger, self.sim
        while not self.stop_event.is_set():
            ts = ledger.ts_of(self.steps)
            delay = ts - time.time()
            if delay > 0 and self.stop_event.wait(delay):
                break
            step = sim.t
            for i, (_, value, kind) in enumerate(sim.step()):
                self.client.publish(self.topics[i], json.dumps({"value": round(value, 4), "ts": ts}), qos=1)
                self.published += 1
                if kind:
                    active = sim.active.get(i)  # dips and stuck values last until a later step
                    end = active[1] - 1 if active and kind in ("dip", "stuck") else step
                    ledger.inject(self.topics[i], kind, step, end)
            self.steps += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AnomalyWatcher:
    """Subscribes to the anomaly topic and prints every event as it arrives."""

    def __init__(self, broker, topic: str, ledger: Ledger, console: Console, width: int) -> None:
        self.ledger = ledger
        self.console = console
        self.width = width
        self.subscribed = threading.Event()
        self.client = _mqtt_client("lstm-stream-demo-watcher")
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            event = json.loads(msg.payload)
            stream, ts = str(event["stream"]), float(event["ts"])
        except (ValueError, KeyError, TypeError):
            self.console(f"(unreadable event on {msg.topic}: {msg.payload[:80]!r})")
            return
        inj = self.ledger.flag(stream, ts)
        at = ts - self.ledger.t0
        if inj is None:
            what = "nothing injected here"
        else:
            lag = at - (inj.start / self.ledger.rate)
            what = f"injected {inj.kind} at t={inj.start / self.ledger.rate:.1f}s"
            what += f" ({inj.end - inj.start + 1} steps)" if inj.end > inj.start else ""
            what += f", flagged {lag:.1f}s later" if lag >= 0.05 else ""
        self.console(
            f"ANOMALY t={at:6.1f}s {stream:<{self.width}} value {event.get('value', float('nan')):8.2f} "
            f"forecast {event.get('forecast', float('nan')):8.2f} score {event.get('score', 0.0):.2f} "
            f"{event.get('reason', '?'):<10} | {what}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
