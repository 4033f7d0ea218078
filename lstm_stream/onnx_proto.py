"""Just enough of ONNX's protobuf encoding to write the serving graph without the ``onnx`` package.

The serving process builds its LSTM step graph from the weights at start and after every swap;
importing ``onnx`` (and protobuf) for that costs 16 MB of resident memory (``python
scripts/bench_step.py``'s interpreter figures: numpy + onnxruntime 47 MB, + onnx 63 MB). A graph is a
handful of messages (model, graph, nodes with integer attributes, tensors as raw bytes, value infos),
written here field by field in field-number order, as protobuf serializers do: for the serving graphs
the bytes equal those ``onnx.helper`` wrote before (checked when this replaced it), and
``tests/test_onnx_step.py`` checks that ``onnx`` reads them, its checker accepts them and writes
them back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT, INT64 = 1, 7  # TensorProto.DataType
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}
_ATTR_INT = 2  # AttributeProto.AttributeType.INT


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint (negative numbers as 64-bit two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _len(field: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: int) -> bytes:
    """A NodeProto with integer attributes ("" skips an optional input)."""
    out = b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(4, op_type)
    for name, value in sorted(attrs.items()):
        out += _len(5, _len(1, name) + _int(3, int(value)) + _int(20, _ATTR_INT))
    return out


def tensor(name: str, value: np.ndarray) -> bytes:
    """A TensorProto holding ``value`` (float32 or int64) as raw little-endian bytes."""
    arr = np.ascontiguousarray(value)
    dims = b"".join(_int(1, d) for d in arr.shape)
    raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return dims + _int(2, _DTYPES[arr.dtype]) + _len(8, name) + _len(9, raw)


def value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    """A ValueInfoProto of a tensor; a str dimension is symbolic (``"n"``)."""
    shape = b"".join(_len(1, _len(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _len(1, name) + _len(2, _len(1, _int(1, elem_type) + _len(2, shape)))


def model(
    nodes: Sequence[bytes],
    name: str,
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes],
    opset: int,
    ir_version: int,
) -> bytes:
    """A serialized ModelProto of one graph in the default domain."""
    graph = b"".join(_len(1, n) for n in nodes) + _len(2, name)
    graph += b"".join(_len(5, t) for t in initializers)
    graph += b"".join(_len(11, v) for v in inputs) + b"".join(_len(12, v) for v in outputs)
    return _int(1, ir_version) + _len(7, graph) + _len(8, _len(1, "") + _int(2, opset))
