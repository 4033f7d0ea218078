"""The engine to serve with: the newest good checkpoint, else the configured model, else the shipped one."""

from __future__ import annotations

import logging

from daemon.rejects import valid_name
from daemon.settings import Settings
from lstm_stream import checkpoint
from lstm_stream.checkpoint import CheckpointStore
from lstm_stream.config import EngineConfig
from lstm_stream.engine import Engine
from lstm_stream.pretrained import load_pretrained

log = logging.getLogger("lstm_stream.service")


def build_engine(settings: Settings, store: CheckpointStore) -> tuple[Engine, str]:
    """The engine to serve with: the newest good checkpoint, else the configured model, else the
    shipped pretrained one. Returns it and a one-line description of where it came from."""
    engine, origin = _engine(settings, store)
    window_ms = settings.ingest.reorder_window_ms
    engine.reorder_window_s = window_ms / 1000.0 if window_ms else None
    return engine, origin


def _engine(settings: Settings, store: CheckpointStore) -> tuple[Engine, str]:
    engine, path, errors = store.load_latest()
    for err in errors:
        log.error("refused checkpoint: %s", err)
    cfg = settings.engine
    if not settings.finetune.enabled:  # nothing reads the training history: do not hold it
        cfg = cfg.model_copy(update={"history_len": 0})
    if engine is not None:
        engine.config = _adopt_tunables(engine.config, cfg)
        _forget_bad_names(engine)
        return (
            engine,
            f"restored {path.name} (model version {engine.model_version}, {len(engine.streams)} streams)",
        )
    if settings.model_path is not None:
        loaded = checkpoint.load_model(settings.model_path)
        cfg = cfg.model_copy(update={"model": loaded.config.model, "scaling": loaded.config.scaling})
        if loaded.config.mode == "window" or loaded.config.model.arch != "lstm":
            cfg = cfg.model_copy(update={"mode": "window", "look_back": loaded.config.look_back})
        return Engine(cfg, loaded.weights, loaded.version), f"model {settings.model_path}"
    loaded = load_pretrained()
    if cfg.model != loaded.config.model:
        log.warning("engine.model differs from the shipped model: starting from random weights")
        return Engine(cfg), "untrained model (engine.model differs from the shipped one)"
    cfg = cfg.model_copy(update={"scaling": loaded.config.scaling})
    return Engine(cfg, loaded.weights), "pretrained model"


def _adopt_tunables(restored: EngineConfig, configured: EngineConfig) -> EngineConfig:
    """Settings that can change across a restart (scoring, training, limits) come from the config;
    those the saved arrays depend on (model, look_back, history_len, mode) stay as saved."""
    fixed = ("model", "look_back", "history_len", "mode", "scaling")
    changed = [k for k in fixed if getattr(restored, k) != getattr(configured, k)]
    if changed:
        log.warning("keeping the checkpoint's %s (the saved state depends on them)", ", ".join(changed))
    return configured.model_copy(update={k: getattr(restored, k) for k in fixed})


def _forget_bad_names(engine: Engine) -> None:
    """Drop restored streams whose names ingest now refuses (``bad_name``; saved by an older version):
    announced or exported again, they would fail every time (a lone surrogate is not UTF-8)."""
    bad = [name for name in engine.streams if not valid_name(name)]
    if bad:
        engine.forget(bad)
        log.warning("dropped %d restored streams with invalid names, e.g. %s", len(bad), ascii(bad[0])[:120])
