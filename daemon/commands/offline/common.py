"""What the offline commands share: exit codes, option types, output, error handling, CSV options.

Also the checkpoint loading and the held-out test part that ``evaluate`` and ``export`` both use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_stream.csvdata import DataError

EX_USAGE = 2  # user errors: bad CSV, missing file, bad option
EX_FAILURE = 1  # the command ran but failed a check (ONNX mismatch, unacknowledged messages)
EX_INTERRUPTED = 130


class UserError(Exception):
    """Something the user must fix; printed as one line, exit status 2."""


# ------------------------------------------------------------------ small helpers
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _fraction(text: str) -> float:
    v = _positive_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def _unit_interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars plain numbers, paths text."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, allow_nan=False)


def _show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _bar(args: argparse.Namespace, total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=not _show_progress(args), leave=False
    )


def _note(args: argparse.Namespace, text: str) -> None:
    """A remark on stderr (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _guard(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; user errors become one line on stderr and exit status 2, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from lstm_stream.checkpoint import CheckpointError

        try:
            return fn(args)
        except (UserError, DataError, CheckpointError) as exc:
            print(f"lstm-stream {name}: {exc}", file=sys.stderr)
            return EX_USAGE
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            print(f"lstm-stream {name}: invalid option ({loc}): {err['msg']}", file=sys.stderr)
            return EX_USAGE
        except BrokenPipeError:  # output piped into head & co.: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EX_FAILURE
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"lstm-stream {name}: {where}{exc.strerror or exc}", file=sys.stderr)
            return EX_USAGE
        except KeyboardInterrupt:
            print(f"lstm-stream {name}: interrupted", file=sys.stderr)
            return EX_INTERRUPTED

    return run


# ------------------------------------------------------------------ CSV options and loading
def _add_csv_options(p: argparse.ArgumentParser, *, several: bool, required: bool, what: str) -> None:
    g = p.add_argument_group("CSV input")
    if several:
        g.add_argument(
            "--csv",
            action="append",
            type=Path,
            metavar="FILE",
            required=required,
            help=f"{what}; repeat for several files (one global model over every series)",
        )
    else:
        g.add_argument("--csv", type=Path, metavar="FILE", required=required, help=what)
    g.add_argument(
        "--time-col",
        metavar="C",
        help="the time column (default: the column named timestamp, time, date, ts, ...); ISO 8601 "
        "text (no offset = UTC) or epoch seconds/ms/us/ns",
    )
    g.add_argument(
        "--value-col",
        action="append",
        metavar="C",
        help="a value column; repeat for several (default: every numeric column)",
    )
    g.add_argument(
        "--missing",
        choices=("error", "drop", "interpolate"),
        default="error",
        help="empty/NaN cells: stop with an error naming the row (default), drop those rows, or "
        "interpolate linearly in time",
    )
    g.add_argument(
        "--duplicates",
        choices=("error", "keep"),
        default="error",
        help="repeated timestamps: error (default) or keep the rows (some NAB files repeat a few)",
    )
    g.add_argument(
        "--unsorted",
        choices=("error", "sort", "keep"),
        default="error",
        help="a timestamp earlier than the row before: error (default), sort the rows by time, or "
        "keep the file's row order (NAB's machine_temperature file needs keep + --duplicates keep)",
    )


def _csv_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "time_col": args.time_col,
        "value_cols": args.value_col,
        "missing": args.missing,
        "duplicates": args.duplicates,
        "unsorted": args.unsorted,
    }


# ------------------------------------------------------------------ checkpoint and test part
def _load_checkpoint(path: Path) -> Any:
    from lstm_stream.checkpoint import load_model

    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    return load_model(path)


def _one_column(args: argparse.Namespace, data_cols: Sequence[str], path: Path) -> None:
    if len(data_cols) > 1:
        raise UserError(
            f"{path}: {len(data_cols)} value columns ({', '.join(data_cols)}): choose one with --value-col"
        )


def _test_start(args: argparse.Namespace, info: dict[str, Any], n: int) -> tuple[int, str]:
    if args.whole:
        return 0, "whole file"
    tf = args.test_fraction or info.get("split", {}).get("test_fraction")
    if not tf:
        raise UserError(
            "the checkpoint records no train/test split (not made by train): give --test-fraction or --whole"
        )
    return _split_rows(n, tf), f"test part (last {tf:g})"


def _split_rows(n: int, test_fraction: float) -> int:
    """First row of the test part: the last ``test_fraction`` of ``n`` rows (at least 2 rows)."""
    n_test = max(2, int(round(n * test_fraction)))
    return max(0, n - n_test)


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: folder {parent} does not exist")
