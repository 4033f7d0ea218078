"""``lstm-stream demo``: simulated plant sensors through the engine, anomalies printed as flagged."""

from __future__ import annotations

import time

import numpy as np

from lstm_stream.pretrained import pretrained_engine
from lstm_stream.synthetic import Simulator


def run_engine_demo(steps: int = 2000, sensors: int = 6, speed: float = 0.0, seed: int = 0) -> dict:
    """Feed ``steps`` rounds of simulated sensors to a pretrained engine; print forecasts and flags."""
    engine = pretrained_engine()
    sim = Simulator(sensors=sensors, seed=seed)
    injected: list[tuple[int, str, str]] = []
    caught = 0
    flagged = 0
    print(f"engine demo: {sensors} simulated sensors, {steps} steps, warm-up {engine.config.scoring.warmup}")
    for t in range(steps):
        rows = sim.step()
        names = [r[0] for r in rows]
        r = engine.process(names, np.full(len(rows), float(t)), np.array([r[1] for r in rows]))
        for name, _, kind in rows:
            if kind:
                injected.append((t, name, kind))
        for i in np.nonzero(r.is_anomaly)[0]:
            flagged += 1
            recent = [k for (ti, n, k) in injected if n == names[i] and t - ti <= 30]
            caught += bool(recent)
            what = f"injected {recent[-1]}" if recent else "not injected"
            print(
                f"ANOMALY t={t:5d} {names[i]:32s} value {r.value[i]:8.2f} forecast {r.forecast[i]:8.2f} "
                f"score {r.score[i]:.2f} reason {r.reason_of(i):10s} ({what})"
            )
        if t % 500 == 0 and t:
            row = ", ".join(
                f"{n.split('/')[-1]} {v:.1f}->{f:.1f}"
                for n, v, f in zip(names, r.value, r.next_forecast, strict=True)
            )
            print(f"t={t:5d} value->next forecast: {row}")
        if speed:
            time.sleep(speed)
    after = [x for x in injected if x[0] >= engine.config.scoring.warmup]
    summary = {"steps": steps, "injected": len(after), "flagged": flagged, "flags_at_injections": caught}
    print(f"summary: {summary}")
    return summary
