"""With default settings the serving process never imports torch (weights as numpy, onnxruntime steps),
nor the onnx package (the graph is written by lstm_stream.onnx_proto), nor scipy (26 MB resident for
one function: scoring uses ``math.erfc``), nor nats-py (``ingest.source = "nats"`` only).

Run in a fresh interpreter: other tests import torch into this one, which would hide an import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.service.finetuner import pack_result
from lstm_stream.pretrained import load_pretrained
from lstm_stream.training import FinetuneResult
from tests.daemon_proc import Collector, Daemon, Publisher
from tests.polling import wait_until

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import numpy as np
from daemon.service import service  # everything the daemon's engine process loads
from daemon.service.finetuner import unpack_result
from lstm_stream import checkpoint
from lstm_stream.pretrained import pretrained_engine

e = pretrained_engine()
t = np.arange(200.0)
for ti in t:
    e.process(["a", "b"], [ti, ti], [np.sin(ti / 9), np.cos(ti / 5)])
e.process(["a"], [198.5], [0.3])  # late: put in order, the window replayed
candidate = unpack_result(open(sys.argv[1], "rb").read()).candidate  # a fine-tune's result file
e.swap_model(candidate)
restored = checkpoint.restore(checkpoint.snapshot(e))
r = restored.process(["a", "b"], [200.0, 200.0], [0.1, 0.2])
assert e.counters["reordered"] == 1 and restored.model_version == 1 and np.isfinite(r.next_forecast).all()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "scipy", "nats")))
"""


def test_serving_never_imports_torch(tmp_path: Path) -> None:
    model = load_pretrained()
    result = tmp_path / "result.safetensors"
    candidate = FinetuneResult("accepted", model.model, 0.5, 0.6)
    result.write_bytes(pack_result(candidate, 1.0, model.config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(result)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _maps_torch(pid: int) -> bool:
    """Whether libtorch is mapped into process ``pid``."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_daemon_forecasts_alike_on_either_runtime(tmp_path: Path, broker) -> None:
    """The same short stream through two daemons, runtime torch and onnxruntime: the same forecasts,
    and only the torch one has torch loaded."""
    t0, n = 1.7e9, 60
    y = 10.0 + 3.0 * np.sin(np.arange(n) / 5.0) + np.random.default_rng(0).standard_normal(n)
    daemons, collectors = {}, {}
    pub = Publisher(broker)
    try:
        for runtime in ("torch", "onnxruntime"):
            cfg = {"mqtt": {"forecast_topic": f"fc-{runtime}/{{stream}}"}, "engine": {"runtime": runtime}}
            (tmp_path / runtime).mkdir()
            daemons[runtime] = Daemon(tmp_path / runtime, broker, cfg, name=runtime).start()
            collectors[runtime] = Collector(broker, f"fc-{runtime}/#")
        pub.publish_many(("sensors/rt", {"value": float(v), "ts": t0 + i}) for i, v in enumerate(y))
        for d in daemons.values():
            d.wait_metric("lstm_stream_samples_processed_total", lambda v: v >= n)
        wait_until(lambda: all(len(c.json()) >= n for c in collectors.values()), "forecasts")
        loaded = {k: _maps_torch(d.proc.pid) for k, d in daemons.items()}
    finally:
        pub.close()
        for c in collectors.values():
            c.close()
        for d in daemons.values():
            d.close()
    fc = {k: [b["forecast"] for b in sorted(c.json(), key=lambda b: b["ts"])] for k, c in collectors.items()}
    assert loaded == {"torch": True, "onnxruntime": False}
    assert len(fc["torch"]) == n
    np.testing.assert_allclose(
        np.array(fc["onnxruntime"], float), np.array(fc["torch"], float), rtol=1e-4, atol=1e-4
    )
