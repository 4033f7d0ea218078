"""Checkpoints: exact round trip, atomic writes, and refusal of damaged or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from lstm_stream import checkpoint
from lstm_stream.checkpoint import CheckpointError, CheckpointStore
from lstm_stream.engine import Engine


def _engine(cfg, steps: int = 60) -> Engine:
    e = Engine(cfg)
    t = np.arange(steps, dtype=float)
    for i in range(3):
        e.process([f"s{i}"] * steps, t, np.sin(t / (3 + i)))
    return e


def test_store_round_trip_continues_exactly(tmp_path, small_cfg) -> None:
    e = _engine(small_cfg)
    store = CheckpointStore(tmp_path)
    path = store.save(e)
    restored, used, errors = store.load_latest()
    assert used == path and errors == []
    assert restored.streams == e.streams and restored.model_version == e.model_version
    t = np.arange(60.0, 90.0)
    a = e.process(["s1"] * 30, t, np.cos(t))
    b = restored.process(["s1"] * 30, t, np.cos(t))
    np.testing.assert_array_equal(a.next_forecast, b.next_forecast)
    np.testing.assert_array_equal(a.score, b.score)


def test_no_pickle_in_the_file(tmp_path, small_cfg) -> None:
    path = CheckpointStore(tmp_path).save(_engine(small_cfg))
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = header["__metadata__"]
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == str(checkpoint.VERSION)
    assert len(meta["sha256"]) == 64
    assert b"\x80\x04" not in data[:16]  # not a pickle stream


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, small_cfg, damage: str) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    good_engine = _engine(small_cfg)
    good = store.save(good_engine)
    good_engine.process(["s0"], [1000.0], [0.5])
    bad = store.save(good_engine)
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        pos = len(data) - 100
        bad.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(b"\x00" * 64 + b"not a checkpoint")
    engine, used, errors = store.load_latest()
    assert used == good
    assert len(errors) == 1 and bad.name in errors[0]
    assert engine.arrays["count"][engine.table.ids["s0"]] == 60


def test_unknown_version_is_refused_with_a_clear_message(tmp_path, small_cfg) -> None:
    data = checkpoint.snapshot(_engine(small_cfg))
    tensors, meta = checkpoint.decode(data)
    header = {"format": checkpoint.FORMAT, "version": "99", "meta": json.dumps(meta, sort_keys=True)}
    with pytest.raises(CheckpointError, match="version '99' is not supported"):
        checkpoint.decode(st_save(tensors, metadata=header), "x.safetensors")


def test_store_keeps_only_the_newest(tmp_path, small_cfg) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    e = _engine(small_cfg, 10)
    paths = [store.save(e) for _ in range(4)]
    assert store.paths() == [paths[3], paths[2]]
    assert not list(tmp_path.glob("*.tmp"))


def test_model_only_checkpoint(tmp_path, small_cfg) -> None:
    e = _engine(small_cfg)
    checkpoint.save_model(tmp_path / "m.safetensors", e.model, small_cfg, {"note": "x"})
    loaded = checkpoint.load_model(tmp_path / "m.safetensors")
    assert loaded.config == small_cfg and loaded.info == {"note": "x"}
    for a, b in zip(e.model.parameters(), loaded.model.parameters(), strict=True):
        assert (a == b).all()
    with pytest.raises(CheckpointError, match="model-only"):
        checkpoint.restore((tmp_path / "m.safetensors").read_bytes())


@pytest.mark.parametrize("older", ["unknown_config_key", "other_column_shape", "other_model"])
def test_checkpoint_of_an_older_format_is_refused_and_the_previous_one_used(
    tmp_path, small_cfg, older: str
) -> None:
    """Checksummed and readable, but not loadable by this build: one clear error, the previous one used."""
    store = CheckpointStore(tmp_path, keep=3)
    e = _engine(small_cfg)
    good = store.save(e, info={"wal_applied": 7})
    tensors, meta = checkpoint.snapshot_parts(e)
    if older == "unknown_config_key":
        meta["engine_config"]["retired_option"] = 1
    elif older == "other_column_shape":
        key = next(k for k, v in tensors.items() if k.startswith("state.") and v.ndim == 2)
        tensors[key] = np.zeros((tensors[key].shape[0], tensors[key].shape[1] + 3), tensors[key].dtype)
    else:
        meta["engine_config"]["model"]["hidden"] = meta["engine_config"]["model"]["hidden"] * 2
    newer = store.save_parts(tensors, meta)
    restored, used, errors = store.load_latest()
    assert used == good and restored is not None
    assert len(errors) == 1 and str(newer) in errors[0] and "\n" not in errors[0]
    assert store.loaded_info == {"wal_applied": 7}


def test_stale_temporary_files_are_removed(tmp_path, small_cfg) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_engine(small_cfg))
    stale = tmp_path / ".checkpoint-00000002.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert store.remove_stale() == [stale] and not stale.exists()
    assert len(store.paths()) == 1
