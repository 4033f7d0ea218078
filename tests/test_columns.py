"""Samples in columns from the receiver process to the engine: the pipe's block format and the queue."""

from __future__ import annotations

import numpy as np

from daemon.ingest.columns import ColumnQueue, Columns, decode_columns
from daemon.ingest.wire import encode_columns

ROWS = [("plant/a", 1.5, -2.25), ("plant/b/ü", 1e9 + 0.1, 1e308), ("plant/a", 3.0, 5e-324), ("x", 4.0, 0.0)]


def test_a_block_round_trips_exactly() -> None:
    block = encode_columns(ROWS)
    got = decode_columns(b"C[]\n" + block, 4)
    assert got.rows() == ROWS
    assert got.ts.dtype == np.float64 and got.ts.flags.writeable
    assert len(decode_columns(encode_columns([]))) == 0


def test_the_queue_drains_in_order_across_blocks_and_splits_them() -> None:
    q = ColumnQueue(100)
    q.put_many(decode_columns(encode_columns(ROWS[:3])))
    q.put_many(ROWS[3:])  # rows (the log's replay) become a block too
    assert len(q) == 4 and q.due(4, 60.0) and not q.due(5, 60.0)
    first = q.drain(2)
    assert first.rows() == ROWS[:2] and len(q) == 2
    assert q.drain(10).rows() == ROWS[2:] and len(q) == 0
    assert len(q.drain(10)) == 0


def test_a_full_queue_drops_what_does_not_fit_and_counts_it() -> None:
    q = ColumnQueue(3, block_s=0.0)
    assert q.put_many(ROWS) == 1
    assert q.dropped == 1 and len(q) == 3
    assert q.drain(3).rows() == ROWS[:3]
    q.close()
    assert q.put_many(ROWS) == 0 and len(q) == 4  # closed: nothing dropped, the final drain takes all


def test_columns_take_and_concat_keep_the_streams() -> None:
    c = Columns.from_rows(ROWS)
    assert Columns.concat([c.take(np.array([3])), c.take(slice(0, 1))]).rows() == [ROWS[3], ROWS[0]]
