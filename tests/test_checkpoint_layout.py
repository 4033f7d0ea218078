"""A checkpoint written before columns shared blocks (e44c565: every column its own array) restores.

Block columns (``state.Column.block``) keep their names, shapes and dtypes in checkpoints, so an old
file must land in the blocks and the engine go on as the old one did. The fixture was written by
e44c565 with ``PYTHONPATH=<that tree> python tests/test_checkpoint_layout.py``: its ``info`` holds
the outputs that tree gave for the next batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lstm_stream import checkpoint
from lstm_stream.config import EngineConfig, ModelConfig, ScoringConfig, SeasonalConfig

FIXTURE = Path(__file__).parent / "data" / "checkpoint-e44c565.safetensors"
OUTPUTS = ("forecast", "spread", "score", "next_forecast", "next_spread")


def _config() -> EngineConfig:
    """Small, with every block in use: a period found early, the mid horizon on."""
    return EngineConfig(
        model=ModelConfig(hidden=16, layers=2),
        look_back=8,
        history_len=32,
        max_streams=16,
        seasonal=SeasonalConfig(learn=32, window=64, redetect=200),
        scoring=ScoringConfig(warmup=20, mid_window=30),
    )


def _batch(start: int, steps: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Three periodic streams, ``steps`` samples each from ``start``, interleaved."""
    t = np.arange(start, start + steps, dtype=float)
    names, ts, values = [], [], []
    for k in range(3):
        names += [f"s{k}"] * steps
        ts.append(t)
        values.append(5.0 + k + np.sin(2 * np.pi * t / (8 + k)) + 0.1 * np.cos(t * (1.7 + k)))
    return names, np.concatenate(ts), np.concatenate(values)


def test_an_old_layout_checkpoint_restores_into_the_blocks_and_goes_on_as_before() -> None:
    tensors, meta = checkpoint.decode(FIXTURE.read_bytes(), str(FIXTURE))
    # that tree's seasonal-naive value was the one one period ago, which `periods` = 1 keeps
    meta["engine_config"]["seasonal"]["periods"] = 1
    engine = checkpoint.restore_decoded(tensors, meta, str(FIXTURE))
    blocks = engine.table.arrays.data.blocks
    assert {"ew_f", "ew_n", "se_errors", "se_forecasts"} <= set(blocks)
    used = len(engine.table.names)
    excluded = tensors["state.hist_excl"].astype(bool)  # retired since: a NaN target says it
    for key, saved in tensors.items():
        col = key[len("state.") :]
        if key.startswith("state.") and col not in checkpoint.RETIRED:
            want = np.where(excluded, np.nan, saved) if col == "hist_y" else saved
            np.testing.assert_array_equal(engine.arrays[col][:used], want, err_msg=key)
    assert np.count_nonzero(blocks["ew_n"][:, :used]) and np.isfinite(blocks["se_errors"][:, :used]).any()
    got = engine.process(*_batch(120, 40))
    for name in OUTPUTS:  # bit for bit on the machine that wrote it; onnxruntime rounds per CPU family
        want = np.array(meta["info"][name], dtype=np.float64)
        np.testing.assert_allclose(getattr(got, name), want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(got.is_anomaly, meta["info"]["is_anomaly"])


def test_an_older_checkpoints_exclusions_become_nan_targets(small_cfg: EngineConfig) -> None:
    """``hist_excl`` (a step left out of fine-tuning) was retired on 2026-12-02: a file that has it
    restores with those steps' targets NaN, every other target as saved."""
    from lstm_stream.engine import Engine

    engine = Engine(small_cfg)
    engine.process(["a"] * 100, np.arange(100.0), np.sin(np.arange(100.0) / 3))
    tensors, meta = checkpoint.decode(checkpoint.snapshot(engine), "now")
    assert "state.hist_excl" not in tensors
    saved = tensors["state.hist_y"][0].copy()
    excluded = np.zeros(tensors["state.hist_y"].shape, dtype=bool)
    excluded[0, 5] = True
    tensors["state.hist_excl"] = excluded
    targets = checkpoint.restore_decoded(tensors, meta, "older").arrays["hist_y"][0]
    assert np.isnan(targets[5]) and np.isfinite(saved[5])
    np.testing.assert_array_equal(np.delete(targets, 5), np.delete(saved, 5))


def _write_fixture() -> None:
    """Run under the tree whose layout the fixture keeps (see the module docstring)."""
    from lstm_stream.engine import Engine

    engine = Engine(_config())
    engine.process(*_batch(0, 120))
    data = checkpoint.snapshot(engine)
    later = checkpoint.restore(data).process(*_batch(120, 40))
    info = {name: getattr(later, name).tolist() for name in (*OUTPUTS, "is_anomaly")}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_bytes(checkpoint.snapshot(engine, info))


if __name__ == "__main__":
    _write_fixture()
    sys.exit(0)
