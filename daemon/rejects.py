"""Why a payload was dropped before the engine: the reasons ingest counts and the metrics label,
and what makes a stream name valid (``bad_name``).

A shared leaf, so that outputs can pre-create one series per reason, and check names, without
importing ingest.
"""

from __future__ import annotations

import re

REASONS = (
    "too_large",
    "not_utf8",
    "not_a_number",
    "not_finite",
    "bad_json",
    "no_value",
    "bad_timestamp",
    "future",
    "bad_name",
    "topic_too_long",
    "too_many_fields",
    "too_many_samples",
)

# Characters no stream name may hold: C0/C1 controls (brokers refuse them in topics, logs and
# label values garble) and lone surrogates (not encodable as UTF-8: metrics, Home Assistant ids,
# forecast topics and checkpoints would all fail on them). Only text that is not printable ASCII
# is searched, so the common case costs two C calls.
BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def valid_name(name: str) -> bool:
    """A usable stream name: no control characters, no lone surrogates (so it encodes as UTF-8)."""
    return (name.isascii() and name.isprintable()) or BAD_NAME_CHARS.search(name) is None
