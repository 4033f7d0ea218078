"""Synthetic sensor series: sine, noise, trend, level steps, seasonality, and injected anomalies.

Used to pretrain the shipped model (no real data, so nothing leaks into a benchmark), by the demo's
simulated sensors, and by tests. Everything is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("sine", "seasonal", "trend", "steps", "random_walk", "square", "noise", "sawtooth")


def sine(
    n: int,
    period: float = 100.0,
    amplitude: float = 1.0,
    noise: float = 0.1,
    phase: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The seed's series: a sine plus Gaussian noise."""
    rng = rng or np.random.default_rng(0)
    t = np.arange(n)
    return amplitude * np.sin(2 * np.pi * t / period + phase) + rng.normal(0.0, noise, n)


def random_series(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One normal (anomaly-free) series of the given family with random level, scale and shape."""
    t = np.arange(n, dtype=np.float64)
    level = rng.normal(0, 50) if rng.random() < 0.5 else rng.uniform(-1, 100)
    amp = 10 ** rng.uniform(-1, 2)
    noise = amp * 10 ** rng.uniform(-2.5, -0.5)
    period = rng.choice([12, 24, 48, 96, 144, 288]) * rng.uniform(0.8, 1.2)
    phase = rng.uniform(0, 2 * np.pi)
    base = np.sin(2 * np.pi * t / period + phase)
    if kind == "sine":
        y = amp * base
    elif kind == "seasonal":
        weekly = np.sin(2 * np.pi * t / (period * 7) + rng.uniform(0, 6))
        harm = np.sin(4 * np.pi * t / period + rng.uniform(0, 6))
        y = amp * (base + 0.4 * harm + 0.3 * weekly)
    elif kind == "trend":
        y = amp * (0.5 * base + rng.normal(0, 3) * t / n)
    elif kind == "steps":
        y = np.zeros(n)
        for at in np.sort(rng.integers(0, n, rng.integers(1, 5))):
            y[at:] += rng.normal(0, amp)
    elif kind == "random_walk":
        y = np.cumsum(rng.normal(0, noise, n))
    elif kind == "square":
        y = amp * np.sign(base)
    elif kind == "sawtooth":
        y = amp * ((t / period + phase) % 1.0)
    elif kind == "noise":
        y = np.zeros(n)
        noise = amp * 0.3
    else:
        raise ValueError(f"unknown series kind {kind!r}; choose from {KINDS}")
    return level + y + rng.normal(0, noise, n)


def corpus(count: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` series of length ``n`` cycling through every family: the pretraining corpus."""
    rng = np.random.default_rng(seed)
    return [random_series(KINDS[i % len(KINDS)], n, rng) for i in range(count)]


@dataclass
class Injected:
    """A series with anomalies and where they are (index ranges, inclusive start, exclusive end)."""

    values: np.ndarray
    events: list[tuple[str, int, int]]


def inject(
    values: np.ndarray,
    spikes: list[int] = (),
    shift: int | None = None,
    flat: tuple[int, int] | None = None,
    size: float = 6.0,
) -> Injected:
    """Add spikes (``size`` x the series' spread), a permanent level shift and a flat-line segment."""
    y = np.array(values, dtype=np.float64)
    spread = float(np.std(np.diff(y))) or 1.0
    span = float(np.ptp(y)) or 1.0
    events: list[tuple[str, int, int]] = []
    for i in spikes:
        y[i] += size * max(spread, 0.25 * span)
        events.append(("spike", i, i + 1))
    if shift is not None:
        y[shift:] += 0.8 * span
        events.append(("level_shift", shift, shift + 1))
    if flat is not None:
        a, b = flat
        y[a:b] = y[a]
        events.append(("flatline", a, b))
    return Injected(y, events)


@dataclass
class Sensor:
    """One simulated sensor: a name and its clean signal as a function of the step."""

    name: str
    kind: str
    level: float
    amplitude: float
    period: float
    noise: float


class Simulator:
    """Simulated plant sensors, stepped together, with anomalies injected at random times.

    Each step returns one value per sensor and, where an anomaly was injected, its kind (``spike``,
    ``dip`` for a temporary level drop, ``stuck`` for a flat line), so a demo can show what was caught.
    """

    def __init__(self, sensors: int = 6, seed: int = 0, anomaly_every: int = 300, warmup: int = 400) -> None:
        self.rng = np.random.default_rng(seed)
        kinds = ["temp", "vibration", "pressure", "flow", "current", "humidity"]
        self.sensors = [
            Sensor(
                name=f"plant/line{i // 3 + 1}/machine{i % 3 + 1}/{kinds[i % len(kinds)]}",
                kind=kinds[i % len(kinds)],
                level=float(self.rng.uniform(10, 80)),
                amplitude=float(self.rng.uniform(2, 10)),
                period=float(self.rng.choice([48, 96, 144])),
                noise=float(self.rng.uniform(0.05, 0.3)),
            )
            for i in range(sensors)
        ]
        self.anomaly_every = anomaly_every
        self.warmup = warmup
        self.t = 0
        self.active: dict[int, tuple[str, int, float]] = {}  # sensor -> (kind, until, offset/value)

    def _clean(self, s: Sensor, t: int) -> float:
        base = s.level + s.amplitude * np.sin(2 * np.pi * t / s.period)
        if s.kind == "pressure":
            base += 0.002 * t * s.amplitude
        return float(base + self.rng.normal(0, s.noise * s.amplitude * 0.1))

    def _maybe_inject(self, i: int, value: float) -> tuple[float, str | None]:
        s = self.sensors[i]
        if i in self.active:
            kind, until, param = self.active[i]
            if self.t >= until:
                del self.active[i]
            elif kind == "dip":
                return value - param, None
            elif kind == "stuck":
                return param, None
        if self.t < self.warmup or self.rng.random() >= 1.0 / self.anomaly_every:
            return value, None
        kind = str(self.rng.choice(["spike", "dip", "stuck"]))
        if kind == "spike":
            return value + s.amplitude * float(self.rng.choice([-1, 1])) * self.rng.uniform(2.5, 4), kind
        if kind == "dip":
            offset = s.amplitude * self.rng.uniform(1.5, 2.5)
            self.active[i] = ("dip", self.t + int(self.rng.integers(10, 40)), offset)
            return value - offset, kind
        self.active[i] = ("stuck", self.t + int(self.rng.integers(60, 120)), value)
        return value, kind

    def step(self) -> list[tuple[str, float, str | None]]:
        """Advance one step: (name, value, injected kind or None) for every sensor."""
        out = []
        for i, s in enumerate(self.sensors):
            value, injected = self._maybe_inject(i, self._clean(s, self.t))
            out.append((s.name, value, injected))
        self.t += 1
        return out
