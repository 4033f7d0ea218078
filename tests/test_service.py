"""Unit: how the service builds its engine from settings (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.service.restore import build_engine
from daemon.settings import Settings
from lstm_stream.checkpoint import CheckpointStore


@pytest.mark.parametrize(("enabled", "history"), [(True, 512), (False, 0)])
def test_history_is_kept_only_when_finetuning_reads_it(tmp_path: Path, enabled: bool, history: int) -> None:
    settings = Settings(finetune={"enabled": enabled}, state={"directory": tmp_path})
    engine, source = build_engine(settings, CheckpointStore(tmp_path))
    assert source == "pretrained model"
    assert engine.config.history_len == history
    assert ("hist_z" in engine.arrays) == enabled


def test_the_receiver_process_does_not_load_torch() -> None:
    """The receiver child imports the settings and the MQTT code only (about 200 MB less)."""
    code = "import sys, daemon.ingest.receiver, daemon.commands.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
