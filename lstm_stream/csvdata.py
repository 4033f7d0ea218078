"""CSV time series for the offline commands: one time column, one or more numeric value columns.

Every problem a user can make in a file becomes a :class:`DataError` whose message names the file,
the line (1-based, as an editor shows it) and the problem, so the command line prints one line and
no traceback. Timestamps are ISO 8601 text (no offset = UTC, as the daemon reads payloads) or epoch
numbers (seconds, or ms/us/ns told apart by magnitude). Pure Python and numpy: no torch here.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

Missing = Literal["error", "drop", "interpolate"]
Duplicates = Literal["error", "keep"]
Unsorted = Literal["error", "sort", "keep"]

#: Header names taken as the time column when none is given (compared case-insensitively).
TIME_NAMES = ("timestamp", "time", "datetime", "date_time", "date", "ts", "epoch", "time_stamp")
#: Cell texts read as a missing value.
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})


class DataError(ValueError):
    """A problem in a user's CSV; ``str()`` is one line: ``file:line: problem``."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass
class CsvData:
    """A loaded file: aligned rows of time (epoch seconds) and float values, with their line numbers."""

    path: Path
    time_col: str
    columns: list[str]  # value column names, in file order
    time: np.ndarray  # float64 epoch seconds, non-decreasing
    time_text: list[str]  # the timestamps as written in the file
    values: np.ndarray  # (rows, columns) float64, finite
    lines: np.ndarray  # 1-based line number of each row in the file
    notes: list[str]  # what was dropped, interpolated or sorted (empty for a clean file)

    def __len__(self) -> int:
        return len(self.time)

    def series(self, column: str | int = 0) -> np.ndarray:
        """One value column as a float64 array (by name or position)."""
        idx = self.columns.index(column) if isinstance(column, str) else column
        return self.values[:, idx]

    def rows(self, start: int, stop: int | None = None) -> CsvData:
        """The rows ``[start, stop)`` as a new :class:`CsvData` (arrays are views)."""
        sl = slice(start, stop)
        return replace(
            self,
            time=self.time[sl],
            time_text=self.time_text[sl],
            values=self.values[sl],
            lines=self.lines[sl],
        )

    @property
    def key(self) -> str:
        """``<parent folder>/<file name>``: how NAB label files name a data file."""
        return f"{self.path.parent.name}/{self.path.name}"

    def stream_names(self) -> list[str]:
        """One stream name per value column: the file stem, plus ``/column`` when there are several."""
        stem = self.path.stem
        return [stem] if len(self.columns) == 1 else [f"{stem}/{c}" for c in self.columns]


# ------------------------------------------------------------------ parsing helpers
def parse_epoch(x: float) -> float:
    """Epoch seconds from seconds, milliseconds (> 1e11), microseconds (> 1e14) or nanoseconds."""
    if x > 1e17:
        return x / 1e9
    if x > 1e14:
        return x / 1e6
    if x > 1e11:
        return x / 1e3
    return x


def parse_datetime(text: str) -> float:
    """ISO 8601 text to epoch seconds; no offset means UTC (as the daemon reads timestamps)."""
    t = text.strip()
    if t[-1:] in ("Z", "z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sniff_delimiter(header_line: str) -> str:
    """Comma unless the header has none and has semicolons or tabs."""
    if "," in header_line:
        return ","
    for d in (";", "\t"):
        if d in header_line:
            return d
    return ","


def detect_time_column(header: Sequence[str]) -> str | None:
    """The first header that names a time (timestamp, time, date, ts, ...), else None."""
    lowered = [h.strip().lower() for h in header]
    for name in TIME_NAMES:
        if name in lowered:
            return header[lowered.index(name)]
    for h, low in zip(header, lowered, strict=True):
        if "time" in low or "date" in low:
            return h
    return None


# ------------------------------------------------------------------ loading
def load_csv(
    path: str | os.PathLike,
    time_col: str | None = None,
    value_cols: Sequence[str] | None = None,
    *,
    missing: Missing = "error",
    duplicates: Duplicates = "error",
    unsorted: Unsorted = "error",
    min_rows: int = 2,
    min_rows_reason: str = "",
) -> CsvData:
    """Read one CSV and check it; raises :class:`DataError` for anything a user must fix.

    ``time_col``/``value_cols`` default to detection: a column named like a time, and every other
    column whose cells are mostly numbers. ``missing``: empty/NaN cells are an error, drop their
    rows, or are interpolated linearly in time (ends take the nearest value). ``duplicates``: equal
    timestamps are an error or kept (NAB files repeat some). ``unsorted``: an earlier timestamp after
    a later one is an error, or the rows are sorted (stable), or the file order is kept (NAB's
    machine_temperature repeats an hour; rows are a sequence, times only label them). At least
    ``min_rows`` rows must remain (``min_rows_reason`` says why, in the message).
    """
    path = Path(path)
    header, records = _read_records(path)
    t_col, v_cols = _choose_columns(path, header, records, time_col, value_cols)
    t_idx = header.index(t_col)
    v_idx = [header.index(c) for c in v_cols]

    epoch_mode = _time_mode(records, t_idx)
    times: list[float] = []
    texts: list[str] = []
    lines: list[int] = []
    vals: list[list[float]] = []
    notes: list[str] = []
    dropped = 0
    for line, fields in records:
        raw_t = fields[t_idx].strip()
        if raw_t.lower() in MISSING_TEXT:
            if missing == "drop":
                dropped += 1
                continue
            raise DataError(path, f"missing timestamp in column {t_col!r}", line)
        t = _parse_time(path, line, raw_t, epoch_mode)
        row: list[float] = []
        for c, j in zip(v_cols, v_idx, strict=True):
            cell = fields[j].strip()
            if cell.lower() in MISSING_TEXT:
                row.append(math.nan)
                continue
            try:
                v = float(cell)
            except ValueError:
                raise DataError(
                    path, f"unparsable value {cell!r} in column {c!r} (not a number)", line
                ) from None
            if not math.isfinite(v):
                raise DataError(path, f"value {cell!r} in column {c!r} is not finite", line)
            row.append(v)
        if any(math.isnan(v) for v in row):
            if missing == "error":
                col = v_cols[next(i for i, v in enumerate(row) if math.isnan(v))]
                raise DataError(
                    path,
                    f"missing value in column {col!r} (use --missing drop or --missing interpolate)",
                    line,
                )
            if missing == "drop":
                dropped += 1
                continue
        times.append(t)
        texts.append(raw_t)
        lines.append(line)
        vals.append(row)
    if dropped:
        notes.append(f"dropped {dropped} row(s) with missing cells")

    time = np.asarray(times, dtype=np.float64)
    values = np.asarray(vals, dtype=np.float64).reshape(len(times), len(v_cols))
    line_arr = np.asarray(lines, dtype=np.int64)
    order, note = _check_order(path, time, texts, line_arr, duplicates, unsorted)
    if note:
        notes.append(note)
    if order is not None:
        time, values, line_arr = time[order], values[order], line_arr[order]
        texts = [texts[i] for i in order]
    if missing == "interpolate":
        filled = _interpolate(path, time, values, v_cols)
        if filled:
            notes.append(f"interpolated {filled} missing value(s)")
    if len(time) < min_rows:
        last = int(line_arr[-1]) if len(line_arr) else None
        why = f" ({min_rows_reason})" if min_rows_reason else ""
        raise DataError(path, f"too few rows: {len(time)} data row(s), at least {min_rows} needed{why}", last)
    return CsvData(path, t_col, list(v_cols), time, texts, values, line_arr, notes)


def load_csvs(paths: Sequence[str | os.PathLike], **kwargs: object) -> list[CsvData]:
    """:func:`load_csv` for each path with the same options."""
    return [load_csv(p, **kwargs) for p in paths]  # type: ignore[arg-type]


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank row; CRLF, BOM and ; or tab handled."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, "not UTF-8 text (is it a CSV file?)", line) from None
    first = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff_delimiter(first))
    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                if len(set(header)) != len(header):
                    dup = next(h for h in header if header.count(h) > 1)
                    raise DataError(path, f"header names column {dup!r} twice", line)
                if any(_is_number(h) for h in header):
                    raise DataError(
                        path, f"the first line must be a header of column names, got {fields!r}", line
                    )
                continue
            if len(fields) != len(header):
                raise DataError(
                    path,
                    f"unparsable row: {len(fields)} field(s) where the header has {len(header)}",
                    line,
                )
            records.append((line, fields))
    except csv.Error as exc:
        raise DataError(path, f"unparsable row: {exc}", reader.line_num) from None
    if header is None:
        raise DataError(path, "empty file (no header)")
    return header, records


def _choose_columns(
    path: Path,
    header: list[str],
    records: list[tuple[int, list[str]]],
    time_col: str | None,
    value_cols: Sequence[str] | None,
) -> tuple[str, list[str]]:
    """The time column and the value columns, given or detected."""
    if time_col is not None:
        if time_col not in header:
            raise DataError(path, f"no time column {time_col!r}; the columns are {header}", 1)
        t_col = time_col
    else:
        found = detect_time_column(header)
        if found is None:
            raise DataError(
                path,
                f"no time column found among {header} (looked for a name like timestamp, time, date, "
                "ts): name it with --time-col",
                1,
            )
        t_col = found
    if value_cols:
        for c in value_cols:
            if c not in header:
                raise DataError(path, f"no value column {c!r}; the columns are {header}", 1)
            if c == t_col:
                raise DataError(path, f"column {c!r} is the time column, not a value column", 1)
        chosen = list(dict.fromkeys(value_cols))
        for c in chosen:
            _require_numeric(path, header, records, c)
        return t_col, chosen
    others = [h for h in header if h != t_col]
    if not others:
        raise DataError(path, f"only a time column ({t_col!r}); no value column", 1)
    numeric = [c for c in others if _mostly_numeric(records, header.index(c))]
    if not numeric:
        _require_numeric(path, header, records, others[0])  # raises, naming the first bad cell
    return t_col, numeric


def _mostly_numeric(records: list[tuple[int, list[str]]], j: int) -> bool:
    """Whether most non-missing cells of column ``j`` (first 1000 rows) are numbers."""
    cells = [f[j].strip() for _, f in records[:1000]]
    cells = [c for c in cells if c.lower() not in MISSING_TEXT]
    if not cells:
        return True  # an all-missing column is a value column; the missing-value check reports it
    return sum(_is_number(c) for c in cells) * 2 > len(cells)


def _require_numeric(path: Path, header: list[str], records: list[tuple[int, list[str]]], col: str) -> None:
    """Raise a DataError for a column whose cells are mostly not numbers, naming the first one."""
    j = header.index(col)
    if _mostly_numeric(records, j):
        return
    line, fields = next((ln, f) for ln, f in records if not _is_number(f[j].strip()))
    raise DataError(path, f"column {col!r} is not numeric (first non-number: {fields[j].strip()!r})", line)


def _time_mode(records: list[tuple[int, list[str]]], t_idx: int) -> bool:
    """True when the time column holds epoch numbers (its first non-missing cell is a number)."""
    for _, fields in records:
        cell = fields[t_idx].strip()
        if cell.lower() not in MISSING_TEXT:
            return _is_number(cell)
    return False


def _parse_time(path: Path, line: int, text: str, epoch_mode: bool) -> float:
    try:
        if epoch_mode:
            t = parse_epoch(float(text))
            if not math.isfinite(t):
                raise ValueError
            return t
        return parse_datetime(text)
    except (ValueError, OverflowError, OSError):
        kind = "an epoch number like the first row's" if epoch_mode else "ISO 8601 like 2014-07-01 00:00:00"
        raise DataError(path, f"unparsable timestamp {text!r} (expected {kind})", line) from None


def _check_order(
    path: Path,
    time: np.ndarray,
    texts: list[str],
    lines: np.ndarray,
    duplicates: Duplicates,
    unsorted: Unsorted,
) -> tuple[np.ndarray | None, str]:
    """Raise for unsorted or duplicate timestamps as configured; (sorting order or None, note)."""
    order, note = None, ""
    back = np.flatnonzero(time[1:] < time[:-1]) if len(time) > 1 else np.zeros(0, np.int64)
    if back.size:
        if unsorted == "error":
            i = int(back[0]) + 1
            raise DataError(
                path,
                f"timestamps not sorted: {texts[i]!r} comes after {texts[i - 1]!r} "
                f"(line {int(lines[i - 1])}); use --unsorted sort to sort the rows, or "
                "--unsorted keep to keep the file's order",
                int(lines[i]),
            )
        if unsorted == "sort":
            order = np.argsort(time, kind="stable")
            note = "rows sorted by time"
        else:
            note = f"time goes back at {back.size} row(s); file order kept"
    if duplicates == "error" and len(time) > 1:
        if order is not None or not back.size:  # sorted: a repeat is next to its first occurrence
            srt = time if order is None else time[order]
            idx = np.arange(len(time)) if order is None else order
            dup = np.flatnonzero(srt[1:] == srt[:-1])
            pairs = [(int(idx[k]), int(idx[k + 1])) for k in dup]
        else:  # file order kept: look for any earlier row with the same time
            _, first, inverse = np.unique(time, return_index=True, return_inverse=True)
            rep = np.flatnonzero(first[inverse] != np.arange(len(time)))
            pairs = [(int(first[inverse[k]]), int(k)) for k in rep]
        if pairs:
            j, i = min(pairs, key=lambda p: lines[p[1]])
            raise DataError(
                path,
                f"duplicate timestamp {texts[i]!r} (also on line {int(lines[j])}); "
                "use --duplicates keep to keep repeated timestamps",
                int(lines[i]),
            )
    return order, note


def _interpolate(path: Path, time: np.ndarray, values: np.ndarray, names: list[str]) -> int:
    """Fill NaNs in place, linearly in time; leading/trailing gaps take the nearest value."""
    filled = 0
    for j in range(values.shape[1]):
        col = values[:, j]
        bad = np.isnan(col)
        if not bad.any():
            continue
        if bad.all():
            raise DataError(path, f"column {names[j]!r} has no value at all: nothing to interpolate from")
        col[bad] = np.interp(time[bad], time[~bad], col[~bad])
        filled += int(bad.sum())
    return filled
