"""Write-ahead log of accepted samples: versioned segment files of checksummed records (stdlib; orjson
if installed).

A log is a folder of segments ``wal-<first index:016d>.log``. Every sample ever logged has a global
index (0, 1, 2, ... across restarts); a segment is named by the index of its first sample and holds
the samples up to the next segment's name. A segment starts with :data:`HEADER` (magic and format
version), then records::

    <I payload length> <I crc32 of the next 12 bytes and the payload> <Q first index> <I count> payload

with ``payload`` the JSON list ``[[stream, ts, value], ...]`` (Python floats round-trip exactly
through JSON's repr; NaN and infinities as JSON's extensions). Records are appended and then
fsynced as a group (:meth:`SegmentWriter.sync`): the receiver acknowledges a message to the broker
only after that. A crash can leave a torn last record (or garbage after it): the reader stops at the
first record that does not check out, and what follows in that segment was never acknowledged.

Nothing here imports the daemon or torch: the receiver process writes the log, the service replays
it after the newest checkpoint (:func:`replay`) and cuts it once a checkpoint holds what it says
(:func:`cut`). No pickle: the format is bytes, integers and JSON.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - orjson is optional
    _orjson_dumps = None

MAGIC = b"LSWAL"
VERSION = 1
HEADER = MAGIC + bytes([VERSION]) + b"\r\n"  # 8 bytes; a text-mode mangling shows up at once
_REC = struct.Struct("<IIQI")  # length, crc32, first index, count
_CRC_FROM = 8  # the crc covers the record from the first index on
MAX_PAYLOAD = 1 << 30  # a length beyond this is garbage, not a record
PATTERN = re.compile(r"^wal-(\d{16})\.log$")

Sample = tuple  # (stream, ts, value), as the receiver parses them


class WalError(Exception):
    """A log that cannot be used as a whole (a segment of another format version)."""


def segment_name(first: int) -> str:
    """File name of the segment whose first sample has index ``first``."""
    return f"wal-{first:016d}.log"


def segments(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(first index, path)`` of every segment in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = PATTERN.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def encode_samples(samples: list[Sample]) -> bytes:
    """A record's payload: the samples as compact JSON. orjson when installed (about 8x faster; the
    same floats read back), except where its output holds ``null``: it writes NaN and infinities so,
    and the stdlib encoder keeps them (the receiver never logs them; a stream may be named ``null``)."""
    if _orjson_dumps is not None:
        try:
            data = _orjson_dumps(samples)
        except TypeError:  # e.g. a lone surrogate in a name
            pass
        else:
            if b"null" not in data:
                return data
    return json.dumps(samples, separators=(",", ":")).encode()


def frame(first: int, count: int, payload: bytes) -> bytes:
    """One record: header with checksum, then ``payload`` (``count`` samples from index ``first``)."""
    tail = struct.pack("<QI", first, count) + payload
    return struct.pack("<II", len(payload), zlib.crc32(tail)) + tail


def encode_record(first: int, samples: list[Sample]) -> bytes:
    """One record of ``samples`` from index ``first``."""
    return frame(first, len(samples), encode_samples(samples))


@dataclass
class Record:
    """One record read back: the index of its first sample and its samples."""

    first: int
    samples: list[Sample]

    @property
    def end(self) -> int:
        """Index one past its last sample."""
        return self.first + len(self.samples)


@dataclass
class SegmentScan:
    """What reading one segment found: good records, and where (and why) it stopped early."""

    path: Path
    records: list[Record] = field(default_factory=list)
    good_bytes: int = 0  # file offset just after the last good record
    torn_bytes: int = 0  # bytes after it (a torn tail or garbage); 0 when the file ended cleanly
    problem: str = ""


def read_segment(path: str | os.PathLike, decode_from: int = 0) -> SegmentScan:
    """Read ``path``'s records up to the first one that does not check out (torn or corrupt).

    Records that end at or before ``decode_from`` are checked but not decoded (they are older than
    the checkpoint and only skipped). A segment of another version raises :class:`WalError`.
    """
    path = Path(path)
    data = path.read_bytes()
    scan = SegmentScan(path)
    if len(data) < len(HEADER):
        scan.torn_bytes, scan.problem = len(data), "segment header incomplete"
        return scan
    if data[: len(MAGIC)] != MAGIC:
        raise WalError(f"{path}: not a write-ahead log segment")
    if data[: len(HEADER)] != HEADER:
        raise WalError(
            f"{path}: log format version {data[len(MAGIC)]} is not supported (this build: {VERSION})"
        )
    pos = len(HEADER)
    while pos < len(data):
        if pos + _REC.size > len(data):
            scan.problem = "torn record header"
            break
        length, crc, first, count = _REC.unpack_from(data, pos)
        end = pos + _REC.size + length
        if length > MAX_PAYLOAD or end > len(data):
            scan.problem = "torn record"
            break
        if zlib.crc32(memoryview(data)[pos + _CRC_FROM : end]) != crc:
            scan.problem = "checksum mismatch"
            break
        if first + count > decode_from:
            try:
                samples = [tuple(s) for s in json.loads(data[pos + _REC.size : end])]
            except ValueError:
                scan.problem = "undecodable record"
                break
            if len(samples) != count:
                scan.problem = "record count mismatch"
                break
            scan.records.append(Record(first, samples))
        pos = end
    scan.good_bytes = pos
    scan.torn_bytes = len(data) - pos
    return scan


@dataclass
class Replay:
    """The samples to apply after a checkpoint, in log order, and what the log looked like."""

    records: list[Record] = field(default_factory=list)
    next_index: int = 0  # index the next logged sample gets
    problems: list[str] = field(default_factory=list)  # one line per segment that ended early

    @property
    def samples(self) -> int:
        """How many samples there are to apply."""
        return sum(len(r.samples) for r in self.records)


def replay(directory: str | os.PathLike, after: int) -> Replay:
    """Every logged sample with index >= ``after``, oldest first, each index once.

    Segments are read in order; within one, reading stops at the first bad record (a torn tail is
    never acknowledged, and the next run starts a new segment at the first index it lost). Where
    segments overlap (a batch rewritten after a failed fsync), the first copy of an index wins.
    """
    out = Replay(next_index=after)
    expected = after
    seen_end = 0
    for _first, path in segments(directory):
        scan = read_segment(path, decode_from=expected)
        if scan.problem:
            out.problems.append(
                f"{path.name}: {scan.problem} at byte {scan.good_bytes}, {scan.torn_bytes} bytes dropped"
            )
        for rec in scan.records:
            seen_end = max(seen_end, rec.end)
            if rec.end <= expected:
                continue
            skip = max(0, expected - rec.first)
            out.records.append(Record(rec.first + skip, rec.samples[skip:]))
            expected = rec.end
    out.next_index = max(expected, seen_end, after)
    return out


def cut(directory: str | os.PathLike, applied: int) -> list[Path]:
    """Delete the segments whose every sample has an index below ``applied`` (a checkpoint holds
    them); never the newest segment, which the receiver may be writing. Returns the deleted paths."""
    segs = segments(directory)
    gone = []
    for (_first, path), (next_first, _next) in zip(segs, segs[1:], strict=False):
        if next_first <= applied:
            path.unlink(missing_ok=True)
            gone.append(path)
    if gone:
        _fsync_dir(Path(directory))
    return gone


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends records to the newest segment; :meth:`sync` makes them durable (one fsync per group).

    After a failed write or fsync the segment is abandoned: the next :meth:`append` opens a new one
    named by the first index not yet durable, so a record that may be half on disk is never followed
    by good ones in the same file.
    """

    def __init__(self, directory: str | os.PathLike, next_index: int) -> None:
        self.directory = Path(directory)
        self.next_index = next_index  # index of the next sample appended
        self.durable_index = next_index  # samples below this index are fsynced
        self.bytes_written = 0
        self.syncs = 0
        self._fd: int | None = None
        self._dirty = False

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / segment_name(self.next_index)
        # a segment of this name holds no good record (else the next index would be past it)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            os.write(fd, HEADER)
            os.fsync(fd)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def append(self, samples: list[Sample]) -> int:
        """Append one record of ``samples`` (not yet durable); returns the index of its first sample."""
        return self.append_encoded(encode_samples(samples), len(samples))

    def append_encoded(self, payload: bytes, count: int) -> int:
        """:meth:`append` of samples already encoded by :func:`encode_samples`."""
        if self._fd is None:
            self._open()
        first = self.next_index
        data = frame(first, count, payload)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError:
            self._abandon()
            raise
        self.next_index += count
        self.bytes_written += len(data)
        self._dirty = True
        return first

    def sync(self) -> None:
        """fsync what was appended; on failure the unsynced records are given up (see the class)."""
        if self._fd is None or not self._dirty:
            return
        try:
            os.fdatasync(self._fd)
        except OSError:
            self._abandon()
            raise
        self.syncs += 1
        self._dirty = False
        self.durable_index = self.next_index

    def _abandon(self) -> None:
        """Close the segment and forget what is not durable: the caller appends it again."""
        self.close()
        self.next_index = self.durable_index

    def rotate(self) -> None:
        """Start a new segment at the next append (after a checkpoint, so that the old one can be cut)."""
        if self._fd is not None and not self._dirty:
            self.close()

    def close(self) -> None:
        """Close the current segment (its records stay as they are)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._dirty = False
