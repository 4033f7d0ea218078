"""Hostile payloads at the parser: caps, future timestamps, bad names, and one answer from both
JSON parsers (orjson and the stdlib fallback) on the same bytes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest import payload as payload_mod
from daemon.ingest.inlet import Inlet
from daemon.ingest.payload import REASONS, PayloadParser, Reject
from daemon.ingest.queue import IngestQueue, LinkStats
from daemon.ratelog import RateLimitedLogger
from daemon.rejects import valid_name
from daemon.settings import PayloadSettings

T = "sensors/a"
NOW = 1_732_700_000.5
DEFAULT = PayloadParser(PayloadSettings())


def parse(raw: bytes | str, parser: PayloadParser = DEFAULT, topic: str = T) -> object:
    return parser.parse(topic, raw if isinstance(raw, bytes) else raw.encode(), NOW)


def both(raw: bytes, topic: str = T, parser: PayloadParser = DEFAULT) -> tuple[object, object]:
    """The result with orjson first (the daemon's path) and with the stdlib parser alone."""
    fast = parser.parse(topic, raw, NOW)
    saved = payload_mod._fast_loads
    payload_mod._fast_loads = payload_mod._stdlib_loads
    try:
        slow = parser.parse(topic, raw, NOW)
    finally:
        payload_mod._fast_loads = saved
    return fast, slow


def test_new_reasons_are_in_the_fixed_set() -> None:
    for reason in ("future", "bad_name", "topic_too_long", "too_many_fields", "too_many_samples"):
        assert reason in REASONS


# --- caps ----------------------------------------------------------------------------------------


def test_topic_length_is_capped_in_bytes() -> None:
    p = PayloadParser(PayloadSettings(max_topic_bytes=16))
    assert parse("1", p, topic="s/" + "x" * 14) == [("s/" + "x" * 14, NOW, 1.0)]
    assert parse("1", p, topic="s/" + "x" * 15) == Reject("topic_too_long")
    assert parse("1", p, topic="s/" + "é" * 7) == [("s/" + "é" * 7, NOW, 1.0)]  # 16 bytes
    assert parse("1", p, topic="s/" + "é" * 8) == Reject("topic_too_long")  # 18 bytes
    assert parse("1", topic="s/" + "x" * 65_000) == Reject("topic_too_long")  # default 256


def test_fields_per_object_are_capped() -> None:
    p = PayloadParser(PayloadSettings(max_fields=3))
    assert len(parse('{"a": 1, "b": 2, "c": {"d": 3}}', p)) == 3
    assert parse('{"a": 1, "b": 2, "c": {"d": 3, "e": 4}}', p) == Reject("too_many_fields")
    # text fields make no streams and do not count
    assert len(parse(json.dumps({"a": 1, **{f"s{i}": "x" for i in range(100)}}), p)) == 1
    many = json.dumps({f"k{i}": i for i in range(1000)})
    assert parse(many) == Reject("too_many_fields")  # default 64


def test_samples_per_message_are_capped() -> None:
    p = PayloadParser(PayloadSettings(max_samples=3))
    assert len(parse("[1, 2, 3]", p)) == 3
    assert parse("[1, 2, 3, 4]", p) == Reject("too_many_samples")
    assert parse(json.dumps(list(range(3000)))) == Reject("too_many_samples")  # default 1000


def test_deep_nesting_is_bad_json_for_both_parsers() -> None:
    for depth in (200, 257, 1000, 1025, 20_000):
        raw = b"[" * depth + b"1" + b"]" * depth
        fast, slow = both(raw)
        assert fast == slow, depth
        assert (fast == Reject("bad_json")) is (depth > payload_mod.MAX_NESTING), depth


# --- time ------------------------------------------------------------------------------------------


def test_future_timestamps_are_rejected() -> None:
    assert parse(json.dumps({"value": 1, "ts": NOW + 299})) == [(T, NOW + 299, 1.0)]
    assert parse(json.dumps({"value": 1, "ts": 4102444800})) == Reject("future")  # year 2100
    assert parse(json.dumps({"value": 1, "ts": 4102444800000})) == Reject("future")  # in ms
    assert parse('{"value": 1, "ts": "2100-01-01T00:00:00Z"}') == Reject("future")
    assert parse(json.dumps([{"value": 1, "ts": NOW}, {"value": 2, "ts": NOW + 1e6}])) == Reject("future")
    assert parse(json.dumps({"a": 1, "ts": NOW + 1e6})) == Reject("future")  # multi-field
    assert parse(json.dumps({"value": 1, "ts": NOW - 1e6})) == [(T, NOW - 1e6, 1.0)]  # the past is fine


def test_future_bound_can_be_zero_or_off() -> None:
    zero = PayloadParser(PayloadSettings(max_future_s=0))
    assert parse(json.dumps({"value": 1, "ts": NOW}), zero) == [(T, NOW, 1.0)]
    assert parse(json.dumps({"value": 1, "ts": NOW + 1}), zero) == Reject("future")
    off = PayloadParser(PayloadSettings(max_future_s=False))
    assert parse(json.dumps({"value": 1, "ts": 4102444800}), off) == [(T, 4102444800.0, 1.0)]


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"\\ud800": 1}',  # a lone surrogate key: orjson refuses it, the stdlib parser takes it
        b'{"a": {"\\udfff": 1}}',
        b'{"ok": 1, "\\u0007bell": 2}',
        b'{"new\\nline": 1}',
        b'{"c1\\u0085": 1}',
        b'{"del\\u007f": 1}',
    ],
)
def test_bad_keys_are_bad_names_for_both_parsers(raw: bytes) -> None:
    assert both(raw) == (Reject("bad_name"), Reject("bad_name"))


def test_bad_topics_are_bad_names() -> None:
    for topic in ("sensors/\x00a", "sensors/\ta", "sensors/\x9b", "sensors/\ud800"):
        assert parse("1", topic=topic) == Reject("bad_name")
    assert parse("1", topic="sensors/küche/温度") == [("sensors/küche/温度", NOW, 1.0)]
    assert parse('{"température": 1}') == [(T + "/température", NOW, 1.0)]


def test_valid_name() -> None:
    assert valid_name("sensors/a b/c") and valid_name("日本/é") and valid_name("")
    assert not valid_name("a\x00") and not valid_name("a\ud800") and not valid_name("a\x85")


def test_surrogates_in_text_values_are_harmless() -> None:
    assert both(b'{"value": "\\ud800"}') == (Reject("not_a_number"),) * 2
    assert both(b'{"value": 2, "name": "\\ud800"}') == ([(T, NOW, 2.0)],) * 2
    assert both(b'{"a": 2, "name": "\\ud800"}') == ([(T + "/a", NOW, 2.0)],) * 2


class _Msg:
    """A paho message whose topic bytes are not UTF-8 (``topic`` raises as paho's does)."""

    payload = b"1"

    @property
    def topic(self) -> str:
        return b"sensors/\xff".decode("utf-8")


def test_a_topic_that_is_not_utf8_is_counted_as_bad_name() -> None:
    import logging

    stats = LinkStats()
    inlet = Inlet(DEFAULT, IngestQueue(10), stats, RateLimitedLogger(logging.getLogger("t")))
    inlet.on_message(None, None, _Msg())
    assert stats.rejected["bad_name"] == 1 and stats.rejected["internal"] == 0


# --- one answer from both parsers -------------------------------------------------------------------

CORPUS = [
    b"1",
    b"1e400",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b'{"value": NaN}',
    b'{"value": Infinity}',
    b'{"value": 1e400}',
    b'{"value": 123456789012345678901234567890}',
    b'{"value": 1' + b"0" * 400 + b"}",
    b'{"value": 1, "value": 2}',
    b'{"value": "\\ud800"}',
    b'{"\\ud800": 1}',
    b'{"\\ud83d\\ude00": 1}',  # a valid surrogate pair: an emoji key
    b'["\\ud800"]',
    b"[1, 2, NaN]",
    b"[1, 2,]",
    b"[01]",
    b"\xef\xbb\xbf[1]",
    b"\xff\xfe[\x001\x00]\x00",  # UTF-16: stdlib json.loads(bytes) would take it
    b'{"a": 1}\x00',
    b'{"a": "\x01"}',
    b'{"a": 1, "b": [1, 2], "c": {"d": true, "e": "ON"}}',
    b" \t\n[1]\r\n",
    b"\x0c[1]",
    b'"21.5"',
    b'"\\u0000"',
    b"[" * 300 + b"]" * 300,
    b'{"ts": 1e400, "value": 1}',
    b'{"ts": 99999999999999999999999, "value": 1}',
    b'[{"ts": "2100-01-01", "value": 1}]',
]


@pytest.mark.parametrize("raw", CORPUS)
def test_corpus_gives_one_answer_from_both_parsers(raw: bytes) -> None:
    fast, slow = both(raw)
    assert fast == slow
    if isinstance(fast, Reject):
        assert fast.reason in REASONS


json_text = st.recursive(
    st.sampled_from(
        ["1", "-0", "1e400", "NaN", "Infinity", "null", "true", '"ON"', '"\\ud800"', '"\\udc00x"', '"a"']
    )
    | st.integers().map(str)
    | st.floats().map(repr),
    lambda c: (
        st.lists(c, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(
            st.tuples(st.sampled_from(['"value"', '"ts"', '"a"', '"\\ud800"', '"\\u0001"', '"b"']), c),
            max_size=4,
        ).map(lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(json_text)
def test_property_both_parsers_agree_on_json_like_text(text: str) -> None:
    fast, slow = both(text.encode("utf-8", "surrogatepass"))
    assert fast == slow


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=40))
def test_property_never_raises_and_both_parsers_agree(raw: bytes, topic: str) -> None:
    fast, slow = both(raw, topic or "t")
    assert fast == slow
    if isinstance(fast, Reject):
        assert fast.reason in REASONS
    else:
        for stream, ts, value in fast:
            assert valid_name(stream) and math.isfinite(ts) and math.isfinite(value)
