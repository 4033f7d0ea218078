"""Some streams' state out of one engine and into another: the unit a partition moves with.

A partition's checkpoint holds only its streams' rows (scaler, windows, (h, c), residual statistics,
...) and JSON metadata, in the checksummed checkpoint format, not the model: every worker serves with
its own. Rows carried from another model version are re-warmed by replaying their windows, as after
a model swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lstm_stream import checkpoint
from lstm_stream.checkpoint import CheckpointError
from lstm_stream.engine import Engine

KIND = "streams"
SHAPED_BY = ("model", "look_back", "history_len", "mode")  # the rows' shapes depend on these


def export_streams(
    engine: Engine, names: Sequence[str], info: dict[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Copies of the rows of ``names`` (those tracked) and their metadata: encode them elsewhere."""
    table = engine.table
    kept = [n for n in names if n in table.ids]
    slots = np.array([table.ids[n] for n in kept], dtype=np.int64)
    tensors = {f"state.{col}": arr[slots].copy() for col, arr in table.arrays.data.items()}
    cfg = engine.config.model_dump(mode="json")
    meta = {
        "kind": KIND,
        "names": kept,
        "model_version": engine.model_version,
        "shape": {k: cfg[k] for k in SHAPED_BY},
        "info": info or {},
    }
    return tensors, meta


def encode_streams(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """The checksummed bytes of :func:`export_streams`' result."""
    return checkpoint.encode(tensors, meta)


def adopt_streams(engine: Engine, data: bytes, source: str = "<bytes>") -> tuple[list[str], dict[str, Any]]:
    """Put the streams saved in ``data`` into ``engine`` (replacing any of the same name); returns the
    names adopted and the saved ``info``. Raises :class:`CheckpointError` if the bytes are damaged or
    the rows do not fit this engine (another model shape or window length)."""
    tensors, meta = checkpoint.decode(data, source)
    tensors = checkpoint.upgrade_columns(tensors)  # one written by an older version of the engine
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{source}: not a streams checkpoint")
    cfg = engine.config.model_dump(mode="json")
    differ = [k for k in SHAPED_BY if meta["shape"].get(k) != cfg[k]]
    if differ:
        raise CheckpointError(f"{source}: saved with another {', '.join(differ)}")
    table = engine.table
    names: list[str] = meta["names"]
    engine.forget(names)
    slots, _ = table.add(names, protect=np.array([], dtype=np.int64))
    slots_arr = np.asarray(slots, dtype=np.int64)
    ok = slots_arr >= 0
    for col, arr in table.arrays.data.items():
        saved = tensors.get(f"state.{col}")
        if saved is None or saved.shape[1:] != arr.shape[1:]:
            raise CheckpointError(f"{source}: column {col!r} missing or of another shape")
        arr[slots_arr[ok]] = saved[ok]
    adopted = slots_arr[ok]
    table.touch(adopted, table.arrays["last_seen"][adopted])  # fresh LRU order, same idle clock
    if int(meta["model_version"]) != engine.model_version and len(adopted):
        engine._replay(adopted)  # the carried (h, c) belong to the other model's weights
    return [n for n, good in zip(names, ok, strict=True) if good], meta.get("info", {})
