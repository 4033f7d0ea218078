"""Payload parsing: every accepted form, every reject reason, and no input that makes it raise."""

from __future__ import annotations

import json
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest import payload as payload_mod
from daemon.ingest.payload import REASONS, PayloadParser, Reject, parse_payload
from daemon.ratelog import RateLimitedLogger
from daemon.settings import PayloadSettings

T = "plant/line1/motor7/temp"
NOW = 1_732_700_000.5


def parse(raw: bytes | str, cfg: PayloadSettings | None = None, topic: str = T) -> object:
    data = raw if isinstance(raw, bytes) else raw.encode()
    return parse_payload(topic, data, NOW, cfg)


def one(raw: bytes | str, cfg: PayloadSettings | None = None) -> tuple[str, float, float]:
    result = parse(raw, cfg)
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


# --- accepted forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("21.5", 21.5),
        (" -3e2\n", -300.0),
        ("7", 7.0),
        ('"21.5"', 21.5),  # a JSON string holding a number
        ("true", 1.0),
        ("false", 0.0),
        ("ON", 1.0),
        ("off", 0.0),
        ("On", 1.0),
        ("TRUE", 1.0),
        ('"OFF"', 0.0),
    ],
)
def test_plain_numbers_and_words(raw: str, value: float) -> None:
    assert one(raw) == (T, NOW, value)


def test_plain_numbers_skip_the_json_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise AssertionError("json parser used for a plain number")

    monkeypatch.setattr(payload_mod, "_fast_loads", boom)
    monkeypatch.setattr(payload_mod.json, "loads", boom)
    assert PayloadParser().parse(T, b"21.37", NOW) == [(T, NOW, 21.37)]


@pytest.mark.parametrize(
    ("raw", "ts", "value"),
    [
        ('{"value": 21.37}', NOW, 21.37),
        ('{"value": 21.37, "ts": 1732700000.1}', 1732700000.1, 21.37),
        ('{"value": 21.37, "ts": 1732700000100}', 1732700000.1, 21.37),  # milliseconds
        ('{"value": 1, "ts": 1732700000100000}', 1732700000.1, 1.0),  # microseconds
        ('{"value": 1, "ts": 1732700000100000000}', 1732700000.1, 1.0),  # nanoseconds
        ('{"value": 1, "ts": "1732700000"}', 1732700000.0, 1.0),
        ('{"value": 1, "ts": "2024-11-27T09:33:20Z"}', 1732700000.0, 1.0),
        ('{"value": 1, "ts": "2024-11-27T10:33:20+01:00"}', 1732700000.0, 1.0),
        ('{"value": 1, "ts": "2024-11-27T09:33:20"}', 1732700000.0, 1.0),  # no offset: UTC
        ('{"value": 1, "ts": null}', NOW, 1.0),
        ('{"value": "22.5"}', NOW, 22.5),
        ('{"value": true}', NOW, 1.0),
        ('{"value": "ON"}', NOW, 1.0),
        ('{"value": 123456789012345678901234567890}', NOW, 1.2345678901234568e29),
        (' \n{"value": 3}', NOW, 3.0),
    ],
)
def test_json_objects_with_value_and_timestamp(raw: str, ts: float, value: float) -> None:
    stream, got_ts, got = one(raw)
    assert stream == T and got == value and got_ts == pytest.approx(ts, abs=1e-6)


def test_dotted_keys_template_and_no_timestamp_key() -> None:
    cfg = PayloadSettings(value_key="sensor.temp", timestamp_key="meta.time", stream_name="{2}")
    raw = '{"sensor": {"temp": 19.5}, "meta": {"time": 1732700000}}'
    assert one(raw, cfg) == ("motor7", 1732700000.0, 19.5)
    assert parse('{"sensor": {"humidity": 3}, "meta": {"time": 1732700000}}', cfg) == [
        ("motor7/sensor/humidity", 1732700000.0, 3.0)  # timestamp field is not a stream
    ]
    cfg = PayloadSettings(timestamp_key=None, stream_name="{topic}")
    assert one('{"value": 1, "ts": 5}', cfg) == (T, NOW, 1.0)
    too_few_levels = PayloadParser(PayloadSettings(stream_name="{9}"))
    assert too_few_levels.stream("a/b") == "a/b"


def test_multi_field_objects_become_one_stream_per_field() -> None:
    z2m = {
        "battery": 100,
        "humidity": 45.2,
        "temperature": 21.37,
        "state": "ON",
        "occupancy": True,
        "update": {"state": "idle", "installed_version": 1},
        "color": {"x": 0.3, "y": 0.4},
        "friendly_name": "kitchen",
        "list": [1, 2],
        "nothing": None,
        "ts": 1732700000,
    }
    result = parse(json.dumps(z2m))
    assert result == [
        (f"{T}/battery", 1732700000.0, 100.0),
        (f"{T}/humidity", 1732700000.0, 45.2),
        (f"{T}/temperature", 1732700000.0, 21.37),
        (f"{T}/state", 1732700000.0, 1.0),
        (f"{T}/occupancy", 1732700000.0, 1.0),
        (f"{T}/update/installed_version", 1732700000.0, 1.0),
        (f"{T}/color/x", 1732700000.0, 0.3),
        (f"{T}/color/y", 1732700000.0, 0.4),
    ]
    tasmota = '{"Time": "2024-11-27T10:00:00", "ENERGY": {"Total": 1.5, "Power": 45}}'
    assert parse(tasmota) == [(f"{T}/ENERGY/Total", NOW, 1.5), (f"{T}/ENERGY/Power", NOW, 45.0)]
    assert parse('{"a": 1, "b": NaN}') == [(f"{T}/a", NOW, 1.0)]  # a bad field is skipped


def test_value_key_wins_over_multi_field_and_multi_field_can_be_off() -> None:
    assert parse('{"value": 2, "other": 3}') == [(T, NOW, 2.0)]
    assert parse('{"temp": 3}', PayloadSettings(multi_field=False)) == Reject("no_value")


def test_arrays_are_batches_of_one_stream() -> None:
    result = parse('[1, 2.5, true, {"value": 4}]')
    assert isinstance(result, list)
    assert [(s, v) for s, _, v in result] == [(T, 1.0), (T, 2.5), (T, 1.0), (T, 4.0)]
    # no timestamps: arrival order, 1 us apart, the last at arrival (never equal: not duplicates)
    stamps = [ts for _, ts, _ in result]
    assert stamps[-1] == NOW and stamps == sorted(set(stamps))
    assert stamps[0] == pytest.approx(NOW - 3e-6, abs=1e-7)
    assert parse('[{"ts": 1732700000, "value": 1}, {"ts": 1732700001000, "value": 2}]') == [
        (T, 1732700000.0, 1.0),
        (T, 1732700001.0, 2.0),
    ]


# --- rejects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 65537, "too_large"),
        (b"\xff\xfe\x00", "not_utf8"),
        (b'{"value": "\xff"}', "not_utf8"),
        (b"abc", "not_a_number"),
        (b"0x1A", "not_a_number"),
        (b'{"value": "warm"}', "not_a_number"),
        (b'{"value": {"deep": 1}}', "not_a_number"),
        (b'[1, "x"]', "not_a_number"),
        (b"[[1, 2]]", "not_a_number"),
        (b"nan", "not_finite"),
        (b"-inf", "not_finite"),
        (b"1e400", "not_finite"),
        (b'{"value": NaN}', "not_finite"),  # the non-standard JSON literal
        (b'{"value": -Infinity}', "not_finite"),
        (b'{"value": 1e999}', "not_finite"),
        (b'{"value": "nan"}', "not_finite"),
        (b'{"a": NaN}', "not_finite"),
        (b"[1, NaN]", "not_finite"),
        (b"{bad", "bad_json"),
        (b'{"value": 1', "bad_json"),
        (b'"unterminated', "bad_json"),
        (b"[" * 5000, "bad_json"),
        (b"", "no_value"),
        (b"   ", "no_value"),
        (b"null", "no_value"),
        (b"[]", "no_value"),
        (b"{}", "no_value"),
        (b'{"value": null}', "no_value"),
        (b'{"name": "kitchen"}', "no_value"),
        (b'[{"ts": 1}]', "no_value"),
        (b'{"value": 1, "ts": "yesterday"}', "bad_timestamp"),
        (b'{"value": 1, "ts": -5}', "bad_timestamp"),
        (b'{"value": 1, "ts": 0}', "bad_timestamp"),
        (b'{"value": 1, "ts": true}', "bad_timestamp"),
        (b'{"value": 1, "ts": [1]}', "bad_timestamp"),
        (b'{"value": 1, "ts": NaN}', "bad_timestamp"),
        (b'{"value": 1, "ts": "0001-01-01T00:00:00"}', "bad_timestamp"),
        (b'[{"value": 1, "ts": "soon"}]', "bad_timestamp"),
    ],
)
def test_every_reject_reason(raw: bytes, reason: str) -> None:
    assert reason in REASONS
    assert parse(raw) == Reject(reason)


def test_max_bytes_is_configurable() -> None:
    cfg = PayloadSettings(max_bytes=4)
    assert parse(b"1234", cfg) == [(T, NOW, 1234.0)]
    assert parse(b"12345", cfg) == Reject("too_large")


# --- properties --------------------------------------------------------------------------------


def check_result(result: object) -> None:
    if isinstance(result, Reject):
        assert result.reason in REASONS
        return
    assert isinstance(result, list) and result
    for stream, ts, value in result:
        assert isinstance(stream, str) and stream
        assert type(ts) is float and math.isfinite(ts) and ts > 0
        assert type(value) is float and math.isfinite(value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, PayloadSettings(max_bytes=64)]))
def test_never_raises_on_arbitrary_bytes(raw: bytes, cfg: PayloadSettings | None) -> None:
    check_result(parse_payload(T, raw, NOW, cfg))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # includes NaN and +-inf, written as NaN / Infinity literals
    | st.text(max_size=12)
    | st.sampled_from(["ON", "off", "21.5", "2024-11-27T10:00:00Z", "1732700000000"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["value", "ts", "a", "b", "sensor"]), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.text(min_size=1, max_size=20))
def test_never_raises_on_arbitrary_json(value: object, topic: str) -> None:
    check_result(parse_payload(topic, json.dumps(value).encode(), NOW))


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_numbers_round_trip(x: float) -> None:
    assert parse(repr(x)) == [(T, NOW, x)]
    assert parse(json.dumps({"value": x})) == [(T, NOW, x)]


array_elements = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.booleans() | st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "value": st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats()
            | st.sampled_from(["1", None]),
            "ts": st.sampled_from([NOW, NOW + 1e7, 0, -5, NOW * 1e3, NOW * 1e6, NOW * 1e9, 2**80, None, "x"])
            | st.floats(min_value=-1e20, max_value=1e20)
            | st.integers(min_value=-(2**64), max_value=2**64),
            "other": st.just(1),
        },
    ),
)


class _ElementLoop(PayloadParser):
    """The parser without its whole-list fast path for arrays."""

    __slots__ = ()

    def _array_fast(self, *args: object) -> None:
        return None


@settings(max_examples=150, deadline=None)
@given(st.lists(array_elements, min_size=1, max_size=8), st.sampled_from([None, 0.0, 3600.0]))
def test_array_fast_path_matches_the_element_loop(items: list, future: float | None) -> None:
    """Whole-list parsing of arrays gives exactly what the per-element loop gives: samples or reason."""
    cfg = PayloadSettings(max_future_s=future)
    raw = json.dumps(items).encode()
    fast = PayloadParser(cfg).parse(T, raw, NOW)
    assert fast == _ElementLoop(cfg).parse(T, raw, NOW)


def test_array_fast_path_takes_the_common_arrays() -> None:
    """Numbers, and objects with value and ts (seconds or milliseconds), skip the element loop."""
    parser = PayloadParser()
    for raw in (b"[1, 2.5, 3]", b'[{"ts": 1732700000.5, "value": 1}, {"ts": 1732700001000, "value": 2.5}]'):
        items = json.loads(raw)
        assert parser._array_fast(T, items, NOW) == parser.parse(T, raw, NOW)
    assert parser._array_fast(T, [1, True], NOW) is None


# --- rate-limited logging ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_logger_counts_suppressed_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RateLimitedLogger(logging.getLogger("test.payload"), 10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="test.payload")
    assert log.log("bad_json", "rejected payload on %s: %s", "a/b", "bad_json")
    clock.now += 1
    assert not log.log("bad_json", "rejected payload on %s", "a/c")
    assert not log.log("bad_json", "rejected payload on %s", "a/d")
    assert log.log("not_finite", "rejected %d%% of it", 100)  # another reason: its own budget
    assert log.suppressed("bad_json") == 2
    clock.now += 9.5
    assert log.log("bad_json", "rejected payload on %s", "a/e")
    assert [r.getMessage() for r in caplog.records] == [
        "rejected payload on a/b: bad_json",
        "rejected 100% of it",
        "rejected payload on a/e (+2 similar suppressed in the last 10s)",
    ]
    clock.now += 1
    log.log("bad_json", "again")
    caplog.clear()
    log.flush()
    assert [r.getMessage() for r in caplog.records] == ["bad_json: 1 similar lines suppressed"]
    assert log.suppressed("bad_json") == 0
