"""One LSTM serving step, torch vs onnxruntime, at several stream counts; and what each costs in RSS.

    python scripts/bench_step.py [--widths 1,16,500,10000]

The engine steps every stream of a round through one LSTM step: onnxruntime by default
(:mod:`lstm_stream.onnx_step`), torch's fused kernel (``model.step``) with ``engine.runtime = "torch"``
or for models the ONNX graph cannot express. This times both on one thread, checks they give the same
outputs, and measures the resident memory each runtime adds to a fresh interpreter (why the serving
process imports neither torch nor onnx).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lstm_stream.export import export_step_onnx, session
from lstm_stream.pretrained import load_pretrained

RSS = "import numpy; {imp}; print(int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20)"


def rss_mb(imp: str) -> float:
    """RSS (MB) of a fresh interpreter after ``import numpy`` and ``imp``."""
    out = subprocess.run([sys.executable, "-c", RSS.format(imp=imp)], capture_output=True, text=True)
    return float(out.stdout.strip())


def timed(fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="1,16,500,10000")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = load_pretrained()
    model = p.model.eval()
    layers, hidden = model.cfg.layers, model.cfg.hidden
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        export_step_onnx(model, path, p.config)
        sess = session(path, threads=1)
        names = [i.name for i in sess.get_inputs()]
        rows = {}
        for n in (int(w) for w in args.widths.split(",")):
            rng = np.random.default_rng(0)
            x = rng.normal(size=n).astype(np.float32)
            h, c = (0.3 * rng.normal(size=(2, layers, n, hidden))).astype(np.float32)
            feed = dict(zip(names, [x, h, c], strict=True))
            state = (torch.from_numpy(h), torch.from_numpy(c))

            def run_torch(x=x, state=state):
                with torch.inference_mode():
                    return model.step(torch.from_numpy(x), state)

            mean, _, (h_t, _) = run_torch()
            got = sess.run(None, feed)
            diff = max(float(np.abs(got[0] - mean.numpy()).max()), float(np.abs(got[2] - h_t.numpy()).max()))
            reps = max(5, 4000 // max(1, n // 25))
            t_torch = timed(run_torch, reps)
            t_ort = timed(lambda feed=feed: sess.run(None, feed), reps)
            rows[n] = {
                "torch_ms": round(1000 * t_torch, 3),
                "onnxruntime_ms": round(1000 * t_ort, 3),
                "ratio": round(t_ort / t_torch, 3),
                "max_abs_diff": diff,
            }
    out = {
        "step": rows,
        "rss_mb": {
            "numpy": round(rss_mb("pass"), 1),
            "numpy+torch": round(rss_mb("import torch"), 1),
            "numpy+onnxruntime": round(rss_mb("import onnxruntime"), 1),
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
