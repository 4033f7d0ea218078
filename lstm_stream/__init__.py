"""lstm-stream's engine: batched stateful LSTM forecasting and anomaly scoring for many streams.

Pure computation, no network I/O: ``Engine.process(streams, ts, values)`` turns samples into
forecasts, residuals, anomaly scores and flags; ``checkpoint`` saves and restores it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EngineConfig
    from .engine import Engine, Results

__all__ = ["Engine", "EngineConfig", "Results"]


def __getattr__(name: str) -> Any:
    """Import on first use, so ``lstm_stream.config`` alone (the daemon's settings, its receiver
    process) does not load torch."""
    if name == "EngineConfig":
        from .config import EngineConfig

        return EngineConfig
    if name in ("Engine", "Results"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'lstm_stream' has no attribute {name!r}")


__version__ = "0.1.0"
