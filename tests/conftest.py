"""Shared fixtures: small engine configurations and the shipped pretrained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lstm_stream.config import EngineConfig, ModelConfig

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NAB = SHARED / "data" / "nab-dev"  # the 40-file NAB development set


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked slow first (stable otherwise), so parallel workers (pytest-xdist, as
    scripts/test.sh runs the suite) start the long ones at once and the short ones fill the gaps."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def small_cfg() -> EngineConfig:
    """A tiny, fast engine: hidden 16, 2 layers, short windows and history."""
    return EngineConfig(model=ModelConfig(hidden=16, layers=2), look_back=8, history_len=64, max_streams=64)


@pytest.fixture(scope="session")
def pretrained():
    """The shipped synthetic-only model (loaded once)."""
    from lstm_stream.pretrained import load_pretrained

    return load_pretrained()


def nab_file(rel: str) -> Path:
    """Path of a NAB development file; skips the test when shared data is absent."""
    path = NAB / rel
    if not path.exists():
        pytest.skip(f"NAB data not found at {path}")
    return path


from tests.broker import broker  # noqa: E402,F401  (fixture re-export)
from tests.prom import prometheus  # noqa: E402,F401  (fixture re-export)
