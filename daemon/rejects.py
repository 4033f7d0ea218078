"""Why a payload was dropped before the engine: the reasons ingest counts and the metrics label.

A shared leaf, so that outputs can pre-create one series per reason without importing ingest.
"""

from __future__ import annotations

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
