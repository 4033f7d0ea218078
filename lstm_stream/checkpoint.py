"""Checkpoints: versioned, checksummed, atomically written snapshots of a model or a whole engine.

One safetensors file holds the model weights (``model.*``) and, for an engine, every per-stream array
(``state.*``); its string metadata holds the format version, the configuration and stream names as
JSON, and a SHA-256 over all of it. Nothing is pickled. Files are written to a temporary name,
fsynced and renamed, so a crash leaves either the old file or the new one. A truncated, corrupt or
unknown-version file raises :class:`CheckpointError`; :class:`CheckpointStore` then falls back to
the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .config import EngineConfig, ModelConfig
from .engine import Engine
from .weights import Weights

if TYPE_CHECKING:
    from .models import Forecaster

FORMAT = "lstm-stream-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says which file and why."""


def _digest(meta_json: str, tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def encode(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Serialise arrays and JSON metadata into checksummed safetensors bytes."""
    meta_json = json.dumps(meta, sort_keys=True)
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "meta": meta_json,
        "sha256": _digest(meta_json, tensors),
    }
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=header)


def decode(data: bytes, source: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Parse and verify checkpoint bytes; raises CheckpointError naming ``source`` and the problem."""
    try:
        tensors = st_load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{source}: not a readable checkpoint (truncated or corrupt): {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not an lstm-stream checkpoint (format {header.get('format')!r})")
    if header.get("version") != str(VERSION):
        raise CheckpointError(
            f"{source}: checkpoint format version {header.get('version')!r} is not supported "
            f"(this build reads {VERSION})"
        )
    meta_json = header.get("meta", "")
    if _digest(meta_json, tensors) != header.get("sha256"):
        raise CheckpointError(f"{source}: checksum mismatch (the file is corrupt)")
    return tensors, json.loads(meta_json)


def _read_header(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("header length out of range")
    return json.loads(data[8 : 8 + n].decode()).get("__metadata__", {}) or {}


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (then fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


# ------------------------------------------------------------------ models
def model_tensors(model: Forecaster | Weights) -> dict[str, np.ndarray]:
    """The model's weights (a torch model's or :class:`Weights`) as numpy arrays under ``model.`` keys."""
    if isinstance(model, Weights):
        return {f"model.{k}": v for k, v in model.arrays.items()}
    return {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def weights_from(tensors: dict[str, np.ndarray], mcfg: ModelConfig) -> Weights:
    """The ``model.`` tensors as :class:`Weights` of configuration ``mcfg`` (checked; no torch)."""
    arrays = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return Weights(mcfg, arrays).check()


def model_from(tensors: dict[str, np.ndarray], mcfg: ModelConfig) -> Forecaster:
    """Rebuild a torch model of configuration ``mcfg`` from ``model.`` tensors (imports torch)."""
    return weights_from(tensors, mcfg).to_model()


def save_model(
    path: str | os.PathLike, model: Forecaster | Weights, config: EngineConfig, info: dict | None = None
) -> None:
    """Write a model-only checkpoint (what ``train`` produces and what ships as the default);
    ``model`` is a torch model or its :class:`Weights`."""
    meta = {
        "kind": "model",
        "engine_config": config.model_dump(mode="json"),
        "info": info or {},
        "created": time.time(),
    }
    write_atomic(path, encode(model_tensors(model), meta))


@dataclass
class LoadedModel:
    """A model's weights read from any checkpoint, with the engine configuration it was trained under."""

    weights: Weights
    config: EngineConfig
    version: int = 0
    info: dict = field(default_factory=dict)
    _model: Forecaster | None = field(default=None, repr=False)

    @property
    def model(self) -> Forecaster:
        """The torch model of these weights (built once, on first use: imports torch)."""
        if self._model is None:
            self._model = self.weights.to_model()
        return self._model


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read the model (and its configuration) from a model or engine checkpoint."""
    tensors, meta = decode(_read(path), str(path))
    cfg = EngineConfig.model_validate(meta["engine_config"])
    return LoadedModel(
        weights_from(tensors, cfg.model), cfg, int(meta.get("model_version", 0)), meta.get("info", {})
    )


def _read(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None


# ------------------------------------------------------------------ engines
def snapshot_parts(engine: Engine, info: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Copies of every array and the metadata of a snapshot: safe to encode in another thread
    while the engine goes on."""
    table = engine.table
    used = len(table.names)
    tensors = {k: v.copy() for k, v in model_tensors(engine.weights).items()}
    for name, arr in table.arrays.data.items():
        tensors[f"state.{name}"] = arr[:used].copy()
    meta = {
        "kind": "engine",
        "engine_config": engine.config.model_dump(mode="json"),
        "model_version": engine.model_version,
        "names": list(table.names),
        "free": list(table.free),
        "seq": table.seq,
        "counters": dict(engine.counters),
        "info": info or {},
        "created": time.time(),
    }
    return tensors, meta


def snapshot(engine: Engine, info: dict | None = None) -> bytes:
    """The whole engine (model, every stream's state, counters) as checkpoint bytes."""
    return encode(*snapshot_parts(engine, info))


def restore(data: bytes, source: str = "<bytes>") -> Engine:
    """An engine that continues exactly where the snapshot was taken."""
    return restore_decoded(*decode(data, source), source)


# columns added after checkpoints that lack them were written, and the column each starts as there
STARTS_AS = {"se_scale_naive": "se_mae_naive"}  # the seasonal error level, robust since 2026-12-02


def _excluded_as_nan_targets(tensors: dict[str, np.ndarray], excluded: np.ndarray) -> None:
    """``hist_excl`` (until 2026-12-02): a step left out of training is now a NaN target."""
    targets = tensors.get("state.hist_y")
    if targets is not None:
        tensors["state.hist_y"] = np.where(excluded.astype(bool), np.nan, targets).astype(targets.dtype)


# columns older checkpoints hold that the engine no longer keeps, and how each folds into the state
RETIRED = {"hist_excl": _excluded_as_nan_targets}


def upgrade_columns(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An older file's tensors as the engine keeps them now (a new dict; ``tensors`` is left as it
    is): a column added since starts from its source (``STARTS_AS``), a retired one is folded into
    what replaced it (``RETIRED``). Whole-engine and partition checkpoints alike."""
    out = dict(tensors)
    for col, source_col in STARTS_AS.items():
        if f"state.{col}" not in out and f"state.{source_col}" in out:
            out[f"state.{col}"] = out[f"state.{source_col}"].copy()
    for col, fold in RETIRED.items():
        if f"state.{col}" in out:
            fold(out, out.pop(f"state.{col}"))
    return out


def restore_decoded(tensors: dict[str, np.ndarray], meta: dict[str, Any], source: str) -> Engine:
    """:func:`restore` from what :func:`decode` returned."""
    if meta.get("kind") != "engine":
        raise CheckpointError(f"{source}: a model-only checkpoint has no stream state to restore")
    cfg = EngineConfig.model_validate(meta["engine_config"])
    engine = Engine(cfg, weights_from(tensors, cfg.model), int(meta["model_version"]))
    table = engine.table
    names: list[str | None] = meta["names"]
    table.arrays.grow(max(1, len(names)))
    table.arrays.reset(np.arange(len(names)))  # initial values where the file lacks a column
    for key, arr in upgrade_columns(tensors).items():
        if key.startswith("state."):
            col = key[len("state.") :]
            if col not in table.arrays.data:
                raise CheckpointError(f"{source}: unexpected state column {col!r}")
            table.arrays.data[col][: len(arr)] = arr
    table.names = list(names)
    table.ids = {n: i for i, n in enumerate(names) if n is not None}
    table.free = list(meta["free"])
    table.seq = int(meta["seq"])
    engine.counters.update(meta.get("counters", {}))
    return engine


class CheckpointStore:
    """A folder of numbered engine checkpoints; keeps the newest ``keep``, loads the newest good one."""

    PATTERN = re.compile(r"^checkpoint-(\d{8})\.safetensors$")

    def __init__(self, directory: str | os.PathLike, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.loaded_info: dict[str, Any] = {}  # the ``info`` of what load_latest returned

    def remove_stale(self) -> list[Path]:
        """Delete temporary files a killed write left behind (``.checkpoint-*.tmp``)."""
        if not self.directory.is_dir():
            return []
        stale = [
            p
            for p in self.directory.iterdir()
            if p.name.startswith(".checkpoint-") and p.name.endswith(".tmp")
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def info_of(self, path: Path) -> dict[str, Any]:
        """The ``info`` a checkpoint was saved with ({} when it cannot be read)."""
        try:
            return decode(_read(path), str(path))[1].get("info", {}) or {}
        except Exception:  # noqa: BLE001 - an unreadable file has no info
            return {}

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if self.PATTERN.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, engine: Engine, info: dict | None = None) -> Path:
        """Write a new checkpoint atomically and prune old ones; returns its path."""
        return self.save_parts(*snapshot_parts(engine, info))

    def save_parts(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        """Encode and write a snapshot taken with :func:`snapshot_parts` (may run in a thread)."""
        existing = self.paths()
        number = int(self.PATTERN.match(existing[0].name).group(1)) + 1 if existing else 1
        path = self.directory / f"checkpoint-{number:08d}.safetensors"
        write_atomic(path, encode(tensors, meta))
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[Engine | None, Path | None, list[str]]:
        """The newest checkpoint that reads cleanly, its path, and why newer ones were refused."""
        errors: list[str] = []
        for path in self.paths():
            try:
                tensors, meta = decode(_read(path), str(path))
                engine = restore_decoded(tensors, meta, str(path))
                self.loaded_info = meta.get("info", {}) or {}
                return engine, path, errors
            except CheckpointError as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - an older format or another shape: use the previous one
                why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]  # one log line
                errors.append(f"{path}: cannot be loaded by this build ({why})")
        return None, None, errors
