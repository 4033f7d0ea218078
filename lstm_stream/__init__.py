"""lstm-stream's engine: batched stateful LSTM forecasting and anomaly scoring for many streams.

Pure computation, no network I/O: ``Engine.process(streams, ts, values)`` turns samples into
forecasts, residuals, anomaly scores and flags; ``checkpoint`` saves and restores it exactly.
"""

from .config import EngineConfig
from .engine import Engine, Results

__all__ = ["Engine", "EngineConfig", "Results"]
__version__ = "0.1.0"
