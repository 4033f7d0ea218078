"""Offline commands: ``train``, ``evaluate``, ``export`` and ``replay`` on CSV history.

The seed's walk-through (train an LSTM on a series, compare it with the truth, export it, serve it)
as commands that hold data out honestly: every split is chronological, the test part is never
seen in training, the scaler is the engine's causal one, and the model is evaluated by serving the
series through the real :class:`~lstm_stream.engine.Engine`, sample by sample, exactly as the
daemon would. ``add_offline_commands(subparsers)`` registers them on ``lstm-stream``'s parser;
``python -m daemon.commands.offline`` runs them on their own.

A user error (bad CSV, missing file, bad option) prints one line and exits with status 2.
"""

# One module per command (train, evaluate, export, replay); common: what they share (exit codes,
# option types, error handling, CSV options, JSON output); scoring: metrics and tables; labels and
# plot: evaluate's anomaly labels and figure.

from __future__ import annotations

import argparse
from typing import Any

from .common import EX_FAILURE, EX_INTERRUPTED, EX_USAGE, UserError
from .evaluate import _add_evaluate, cmd_evaluate
from .export import _add_export, cmd_export
from .labels import load_labels
from .plot import plot_evaluation
from .replay import _add_replay, cmd_replay, replay_messages
from .scoring import FORECASTERS, METRICS, compare
from .train import _add_train, cmd_train

__all__ = [
    "EX_FAILURE",
    "EX_INTERRUPTED",
    "EX_USAGE",
    "FORECASTERS",
    "METRICS",
    "UserError",
    "add_offline_commands",
    "build_parser",
    "cmd_evaluate",
    "cmd_export",
    "cmd_replay",
    "cmd_train",
    "compare",
    "load_labels",
    "main",
    "plot_evaluation",
    "replay_messages",
]


def add_offline_commands(subparsers: Any) -> None:
    """Register train, evaluate, export and replay on ``lstm-stream``'s subparsers."""
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_export(subparsers)
    _add_replay(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the offline commands (``python -m daemon.commands.offline``)."""
    p = argparse.ArgumentParser(prog="lstm-stream", description=__doc__)
    add_offline_commands(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one offline command."""
    args = build_parser().parse_args(argv)
    return args.func(args)
