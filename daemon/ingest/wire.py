"""Samples in columns on the pipe from the receiver process to the service (stdlib only: the receiver
child does not load numpy).

One block is ``<II n, names length>``, the distinct stream names joined by NUL (UTF-8; names never
hold control characters), then ``n`` uint32 name codes, ``n`` float64 timestamps and ``n`` float64
values, native byte order (both ends are the same machine). Building it is a handful of C-level
passes over the batch; the other end takes the numbers with ``numpy.frombuffer`` instead of
decoding JSON and building a list per sample.
"""

from __future__ import annotations

import struct
from array import array

HEAD = struct.Struct("<II")
SEP = "\x00"


def encode_columns(samples: list) -> bytes:
    """``[(stream, ts, value), ...]`` as one column block."""
    if not samples:
        return HEAD.pack(0, 0)
    streams, ts, values = zip(*samples, strict=True)
    names = dict.fromkeys(streams)
    code = dict(zip(names, range(len(names)), strict=True))
    blob = SEP.join(names).encode("utf-8", "surrogatepass")
    return b"".join(
        (
            HEAD.pack(len(streams), len(blob)),
            blob,
            array("I", map(code.__getitem__, streams)).tobytes(),
            array("d", ts).tobytes(),
            array("d", values).tobytes(),
        )
    )
