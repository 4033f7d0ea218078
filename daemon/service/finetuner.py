"""Background fine-tuning: a copy of the model trains off the ingest path and comes back as a result.

``mode = "process"`` (default) runs the training in a child process at low priority (``nice``) with one
torch thread, exchanging safetensors files in the state directory: a crash or a hang in training can
never take the service down, and the ingest core is not taken. ``mode = "thread"`` runs it in a
thread with one torch thread (cheaper to start, shares the GIL with ingestion, imports torch into the
service). ``mode = "inline"`` runs it to the end inside :meth:`Finetuner.start` (blocking the caller):
for offline replays such as ``evaluate --online``, where the result must not depend on timing. The
model goes out and a candidate comes back as numpy :class:`~lstm_stream.weights.Weights`: in process
mode the service never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstm_stream import checkpoint
from lstm_stream.config import EngineConfig
from lstm_stream.history import Triple
from lstm_stream.weights import Weights

if TYPE_CHECKING:
    from lstm_stream.models import Forecaster
    from lstm_stream.training import FinetuneResult

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a fine-tune run produced, as the service consumes it."""

    outcome: str
    candidate: Forecaster | Weights | None  # weights from the worker process, a model from a thread
    candidate_loss: float
    live_loss: float
    seconds: float
    error: str = ""


def pack_job(model: Forecaster | Weights, history: list[Triple], cfg: EngineConfig) -> bytes:
    """Model weights and buffered history as checkpoint bytes (no pickle crosses the process gap)."""
    tensors = checkpoint.model_tensors(model)
    if history:
        lengths = np.array([len(z) for z, _, _ in history], dtype=np.int64)
        tensors["job.lengths"] = lengths
        tensors["job.z"] = np.concatenate([z for z, _, _ in history]).astype(np.float32)
        tensors["job.y"] = np.concatenate([y for _, y, _ in history]).astype(np.float32)
        tensors["job.excl"] = np.concatenate([e for _, _, e in history]).astype(np.bool_)
    return checkpoint.encode(tensors, {"kind": "finetune_job", "engine_config": cfg.model_dump(mode="json")})


def unpack_job(data: bytes) -> tuple[Forecaster, list[Triple], EngineConfig]:
    """Inverse of :func:`pack_job` (the worker's side: the model comes back as a torch model)."""
    tensors, meta = checkpoint.decode(data, "finetune job")
    cfg = EngineConfig.model_validate(meta["engine_config"])
    model = checkpoint.model_from(tensors, cfg.model)
    history: list[Triple] = []
    if "job.lengths" in tensors:
        edges = np.concatenate([[0], np.cumsum(tensors["job.lengths"])])
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            history.append((tensors["job.z"][a:b], tensors["job.y"][a:b], tensors["job.excl"][a:b]))
    return model, history, cfg


def pack_result(result: FinetuneResult, seconds: float, cfg: EngineConfig) -> bytes:
    """A finished run (candidate weights when there is one) as checkpoint bytes."""
    tensors = checkpoint.model_tensors(result.candidate) if result.candidate is not None else {}
    meta = {
        "kind": "finetune_result",
        "outcome": result.outcome,
        "candidate_loss": _json_float(result.candidate_loss),
        "live_loss": _json_float(result.live_loss),
        "seconds": seconds,
        "error": result.error,
        "engine_config": cfg.model_dump(mode="json"),
    }
    return checkpoint.encode(tensors, meta)


def _json_float(x: float) -> float | None:
    return None if x != x or x in (float("inf"), float("-inf")) else float(x)


def unpack_result(data: bytes) -> Outcome:
    """Inverse of :func:`pack_result` (the service's side: the candidate comes back as weights)."""
    tensors, meta = checkpoint.decode(data, "finetune result")
    cfg = EngineConfig.model_validate(meta["engine_config"])
    candidate = checkpoint.weights_from(tensors, cfg.model) if tensors else None
    nan = float("nan")
    return Outcome(
        meta["outcome"],
        candidate,
        nan if meta["candidate_loss"] is None else meta["candidate_loss"],
        nan if meta["live_loss"] is None else meta["live_loss"],
        float(meta["seconds"]),
        meta.get("error", ""),
    )


def run_inline(model: Forecaster | Weights, history: list[Triple], cfg: EngineConfig) -> Outcome:
    """Fine-tune in the calling thread (thread and inline mode; imports torch)."""
    from lstm_stream.training import finetune

    t0 = time.monotonic()
    result = finetune(model.to_model() if isinstance(model, Weights) else model, history, cfg)
    return Outcome(
        result.outcome,
        result.candidate,
        result.candidate_loss,
        result.live_loss,
        time.monotonic() - t0,
        result.error,
    )


class Finetuner:
    """Runs at most one fine-tune at a time in the background; the service polls :meth:`result`."""

    def __init__(
        self, workdir: Path, mode: str = "process", nice: int = 10, timeout_s: float = 6 * 3600
    ) -> None:
        self.workdir = Path(workdir)
        self.mode = mode
        self.nice = nice
        self.timeout_s = timeout_s
        self._thread: threading.Thread | None = None
        self._result: Outcome | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """Whether a run is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, model: Forecaster | Weights, history: list[Triple], cfg: EngineConfig) -> bool:
        """Start a run on copies of ``model`` (a torch model or its weights) and ``history``; False when
        one is already running."""
        if self.busy:
            return False
        if self.mode == "inline":
            self._run_thread(model, history, cfg)
            return True
        target = self._run_process if self.mode == "process" else self._run_thread
        self._thread = threading.Thread(
            target=target, args=(model, history, cfg), name="finetune", daemon=True
        )
        self._thread.start()
        return True

    def result(self) -> Outcome | None:
        """The finished run's outcome, once (None while running or when nothing ran)."""
        with self._lock:
            out, self._result = self._result, None
        return out

    def _finish(self, outcome: Outcome) -> None:
        with self._lock:
            self._result = outcome

    def _run_thread(self, model: Forecaster | Weights, history: list[Triple], cfg: EngineConfig) -> None:
        try:
            self._finish(run_inline(model, history, cfg))
        except Exception as exc:  # noqa: BLE001 - reported as an outcome, never raised into the service
            self._finish(
                Outcome("failed", None, float("nan"), float("nan"), 0.0, f"{type(exc).__name__}: {exc}")
            )

    def _run_process(self, model: Forecaster | Weights, history: list[Triple], cfg: EngineConfig) -> None:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        job, out = self.workdir / "finetune-job.safetensors", self.workdir / "finetune-result.safetensors"
        out.unlink(missing_ok=True)
        try:
            checkpoint.write_atomic(job, pack_job(model, history, cfg))
            proc = subprocess.run(
                [sys.executable, "-m", "daemon.service.finetuner", str(job), str(out)],
                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,  # noqa: PLW1509 - sets priority only
                capture_output=True,
                start_new_session=True,  # Ctrl-C at a terminal is the service's to handle, not the worker's
                text=True,
                timeout=self.timeout_s,
            )
            if proc.returncode != 0:
                tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                raise RuntimeError(f"fine-tune worker failed: {tail[0]}")
            self._finish(unpack_result(out.read_bytes()))
        except Exception as exc:  # noqa: BLE001 - reported as an outcome
            err = f"{type(exc).__name__}: {exc}"
            self._finish(Outcome("failed", None, float("nan"), float("nan"), time.monotonic() - t0, err))
        finally:
            job.unlink(missing_ok=True)
            out.unlink(missing_ok=True)


def worker_main(argv: list[str]) -> int:
    """Child-process entry: read the job file, fine-tune on one thread, write the result file."""
    import torch

    from lstm_stream.training import finetune

    torch.set_num_threads(1)
    job, out = Path(argv[0]), Path(argv[1])
    model, history, cfg = unpack_job(job.read_bytes())
    t0 = time.monotonic()
    result = finetune(model, history, cfg)
    checkpoint.write_atomic(out, pack_result(result, time.monotonic() - t0, cfg))
    print(json.dumps({"outcome": result.outcome, "seconds": round(time.monotonic() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
