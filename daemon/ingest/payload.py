"""MQTT payloads -> samples ``(stream, ts, value)``, or a :class:`Reject` with a fixed reason.

Accepted forms (``value_key``/``timestamp_key`` are dotted paths, default ``value`` and ``ts``):

- a plain number ``21.5``, or a JSON number; ``ON``/``OFF``/``true``/``false`` (any case) -> 1/0;
- an object ``{"value": 21.5, "ts": 1732700000.1}``: one sample of stream ``<topic>``;
- an object without the value key (Zigbee2MQTT, Tasmota): one stream ``<topic>/<field>`` per
  numeric or boolean field, nested objects flattened with ``/``, strings and arrays ignored;
- an array ``[{"ts": .., "value": ..}, ...]`` or ``[21.5, 21.6]``: several samples of one stream
  (elements without a timestamp get the arrival time minus 1 us per later element).

Timestamps are epoch seconds, milliseconds (> 1e11), microseconds (> 1e14), nanoseconds (> 1e17)
or ISO 8601 text (no offset = UTC); absent or null means the arrival time. The plain-number path
never touches a JSON parser, since it runs on the MQTT network thread for every message.

Hostile input is refused here, before it can name a stream or move a clock: topics over
``max_topic_bytes`` (``topic_too_long``), names (topic, field keys) with control characters or lone
surrogates (``bad_name``), objects with more than ``max_fields`` numeric fields, arrays of more than
``max_samples`` elements, and timestamps more than ``max_future_s`` ahead of arrival (``future``). Both
JSON parsers (orjson, and the stdlib one it falls back to) give the same answer on the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

from daemon.rejects import REASONS, valid_name


def _stdlib_loads(payload: bytes) -> Any:
    """stdlib json on strict UTF-8 (``json.loads`` of bytes would also take UTF-16 and UTF-32)."""
    return json.loads(payload.decode("utf-8"))


try:
    import orjson

    _fast_loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    _fast_loads = _stdlib_loads

MAX_DEPTH = 8  # nesting flattened in multi-field objects; deeper levels are ignored
# Deeper JSON is bad_json whichever parser read it: orjson takes up to 1024 levels, the stdlib one
# stops near the interpreter's recursion limit minus the current stack, so only a bound well below
# both gives one answer. Only payloads with more brackets than this are walked to measure it.
MAX_NESTING = 256
GOOD_TOPICS = 65_536  # topics (and field keys) remembered as checked: a known one costs a set lookup
# Array elements without their own timestamp: arrival order, this far apart, the last one at the
# arrival time. Equal timestamps would make the engine drop all but the first as duplicates.
ARRAY_SPACING_S = 1e-6

Sample = tuple[str, float, float]  # (stream, ts in epoch seconds, value)


@dataclass(frozen=True, slots=True)
class Reject:
    """Why a payload was dropped: ``reason`` is one of :data:`REASONS` (a metric label)."""

    reason: str


(
    TOO_LARGE,
    NOT_UTF8,
    NOT_A_NUMBER,
    NOT_FINITE,
    BAD_JSON,
    NO_VALUE,
    BAD_TIMESTAMP,
    FUTURE,
    BAD_NAME,
    TOPIC_TOO_LONG,
    TOO_MANY_FIELDS,
    TOO_MANY_SAMPLES,
) = (Reject(r) for r in REASONS)


class _Refused(Exception):
    """Raised inside the flattening walk to abandon a whole message with ``reject``."""

    def __init__(self, reject: Reject) -> None:
        self.reject = reject


_WORDS = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0}
_NUMBERS = (frozenset({float}), frozenset({int}), frozenset({float, int}))  # element types, fast path
_FLOATS, _DICTS = frozenset({float}), frozenset({dict})
_MISSING = object()
_isfinite = math.isfinite


class PayloadConfig(Protocol):
    """The fields of ``daemon.settings.PayloadSettings`` the parser reads."""

    value_key: str
    timestamp_key: str | None
    max_bytes: int
    multi_field: bool
    stream_name: str
    max_topic_bytes: int
    max_fields: int
    max_samples: int
    max_future_s: float | None


def _lookup(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if type(node) is not dict:
            return _MISSING
        node = node.get(key, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _to_value(x: Any) -> float | Reject:
    """A JSON scalar as a finite float: numbers, booleans, numeric or ON/OFF text."""
    t = type(x)
    if t is float:
        return x if _isfinite(x) else NOT_FINITE
    if t is int:
        try:
            return float(x)
        except OverflowError:
            return NOT_FINITE
    if t is bool:
        return 1.0 if x else 0.0
    if t is str:
        text = x.strip()
        word = _WORDS.get(text.lower())
        if word is not None:
            return word
        try:
            v = float(text)
        except ValueError:
            return NOT_A_NUMBER
        return v if _isfinite(v) else NOT_FINITE
    if x is None:
        return NO_VALUE
    return NOT_A_NUMBER


def _to_timestamp(x: Any) -> float | Reject:
    """Epoch s/ms/us/ns by magnitude, or ISO 8601 text; must be finite and after 1970."""
    t = type(x)
    try:
        if t is int or t is float:
            ts = float(x)
        elif t is str:
            text = x.strip()
            try:
                ts = float(text)
            except ValueError:
                if text[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat lacks "Z"
                    text = text[:-1] + "+00:00"
                dt = datetime.fromisoformat(text)
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=timezone.utc)
                ts = dt.timestamp()
        else:
            return BAD_TIMESTAMP
    except (ValueError, OverflowError, OSError):
        return BAD_TIMESTAMP
    if not _isfinite(ts) or ts <= 0.0:
        return BAD_TIMESTAMP
    if ts > 1e11:
        ts /= 1e9 if ts > 1e17 else 1e6 if ts > 1e14 else 1e3
    return ts


def _slow_loads(payload: bytes) -> Any:
    """stdlib json: accepts NaN/Infinity literals, big integers and escaped lone surrogates, which
    orjson refuses (the surrogates are then refused as names, or ignored as text)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return BAD_JSON


def _deeper_than(obj: Any, limit: int) -> bool:
    """True if lists/objects nest more than ``limit`` levels (iterative: no recursion limit)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        stack.extend((c, depth + 1) for c in children if type(c) is dict or type(c) is list)
    return False


class PayloadParser:
    """Parses payloads with one :class:`PayloadConfig`, compiled once (paths split, template)."""

    __slots__ = (
        "_good_keys",
        "_good_topics",
        "max_bytes",
        "max_fields",
        "max_future_s",
        "max_samples",
        "max_topic_bytes",
        "multi_field",
        "template",
        "ts_field",
        "ts_path",
        "value_path",
    )

    def __init__(self, cfg: PayloadConfig | None = None) -> None:
        if cfg is None:
            from daemon.settings import PayloadSettings

            cfg = PayloadSettings()
        self.max_bytes = cfg.max_bytes
        self.multi_field = cfg.multi_field
        self.value_path = tuple(cfg.value_key.split("."))
        self.ts_path = tuple(cfg.timestamp_key.split(".")) if cfg.timestamp_key else None
        self.ts_field = "/".join(self.ts_path) if self.ts_path else None
        self.template = None if cfg.stream_name == "{topic}" else cfg.stream_name
        self.max_topic_bytes = cfg.max_topic_bytes
        self._good_topics: set[str] = set()  # topics that passed _check_topic (at most GOOD_TOPICS)
        self._good_keys: set[str] = set()  # field keys that are valid names (likewise bounded)
        self.max_fields = cfg.max_fields
        self.max_samples = cfg.max_samples
        self.max_future_s = math.inf if cfg.max_future_s is None else cfg.max_future_s

    def stream(self, topic: str) -> str:
        """The stream id of a topic (``stream_name`` template; the topic if a level is missing)."""
        if self.template is None:
            return topic
        try:
            return self.template.format(*topic.split("/"), topic=topic)
        except (IndexError, ValueError):
            return topic

    def parse(self, topic: str, payload: bytes, arrival_ts: float) -> list[Sample] | Reject:
        """Samples ``(stream, ts, value)``, values finite, or a :class:`Reject`; never raises."""
        if type(payload) is not bytes:
            payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        size = len(payload)
        if size > self.max_bytes:
            return TOO_LARGE
        if size == 0:
            return NO_VALUE
        if topic not in self._good_topics:  # one set lookup per message once a topic was checked
            refused = self._check_topic(topic)
            if refused is not None:
                return refused
        first = payload[0]
        if first != 0x7B and first != 0x5B:  # not "{" or "[": try a plain number first
            try:
                value = float(payload)
            except ValueError:
                return self._parse_text(topic, payload, arrival_ts)
            if not _isfinite(value):
                return NOT_FINITE
            return [(self.stream(topic), arrival_ts, value)]
        return self._parse_json(topic, payload, arrival_ts)

    def _check_topic(self, topic: str) -> Reject | None:
        """``topic_too_long`` or ``bad_name`` for a topic not seen yet; a good one is remembered."""
        n = len(topic)  # characters: at most 4 bytes each, so short topics need no encoding
        limit = self.max_topic_bytes
        if n * 4 > limit and (n > limit or len(topic.encode("utf-8", "surrogatepass")) > limit):
            return TOPIC_TOO_LONG
        if not valid_name(topic):
            return BAD_NAME
        good = self._good_topics
        if len(good) >= GOOD_TOPICS:  # a flood of new topics: start over rather than grow
            good.clear()
        good.add(topic)
        return None

    def _parse_text(self, topic: str, payload: bytes, arrival_ts: float) -> list[Sample] | Reject:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            return NOT_UTF8
        if not text or text == "null":
            return NO_VALUE
        if text[0] in '{["':  # JSON after white space, or a JSON string
            return self._parse_json(topic, text.encode(), arrival_ts)
        word = _WORDS.get(text.lower())
        if word is None:
            return NOT_A_NUMBER
        return [(self.stream(topic), arrival_ts, word)]

    def _parse_json(self, topic: str, payload: bytes, arrival_ts: float) -> list[Sample] | Reject:
        try:
            obj = _fast_loads(payload)
        except (ValueError, RecursionError):
            obj = _slow_loads(payload)
            if type(obj) is Reject:
                return obj
        t = type(obj)
        if (
            (t is dict or t is list)
            and len(payload) > 2 * MAX_NESTING  # deeper nesting takes more brackets than that
            and payload.count(b"[") + payload.count(b"{") > MAX_NESTING
            and _deeper_than(obj, MAX_NESTING)
        ):
            return BAD_JSON
        if t is dict:
            return self._from_object(topic, obj, arrival_ts)
        if t is list:
            return self._from_array(topic, obj, arrival_ts)
        value = _to_value(obj)
        if type(value) is Reject:
            return value
        return [(self.stream(topic), arrival_ts, value)]

    def _timestamp(self, obj: dict[str, Any], arrival_ts: float) -> float | Reject:
        if self.ts_path is None:
            return arrival_ts
        raw = _lookup(obj, self.ts_path)
        if raw is _MISSING or raw is None:
            return arrival_ts
        ts = _to_timestamp(raw)
        if type(ts) is float and ts > arrival_ts + self.max_future_s:
            return FUTURE  # it would hold the stream's clock ahead: every later sample out of order
        return ts

    def _from_object(self, topic: str, obj: dict[str, Any], arrival_ts: float) -> list[Sample] | Reject:
        ts = self._timestamp(obj, arrival_ts)
        if type(ts) is Reject:
            return ts
        raw = _lookup(obj, self.value_path)
        if raw is not _MISSING:
            value = _to_value(raw)
            if type(value) is Reject:
                return value
            return [(self.stream(topic), ts, value)]
        if not self.multi_field:
            return NO_VALUE
        out: list[Sample] = []
        try:
            non_finite = self._flatten(obj, "", self.stream(topic) + "/", ts, out, 0)
        except _Refused as refused:
            return refused.reject
        if len(out) > self.max_fields:  # checked once: max_bytes already bounds the walk
            return TOO_MANY_FIELDS
        if out:
            return out
        return NOT_FINITE if non_finite else NO_VALUE

    def _flatten(
        self, node: dict[str, Any], prefix: str, base: str, ts: float, out: list[Sample], depth: int
    ) -> bool:
        """Append one sample per numeric/boolean leaf; True if a leaf was NaN/inf (skipped).

        Raises :class:`_Refused` for a key that is not a valid name."""
        non_finite = False
        good_keys = self._good_keys
        for key, x in node.items():
            if key not in good_keys:
                if not valid_name(key):
                    raise _Refused(BAD_NAME)
                if len(good_keys) >= GOOD_TOPICS:
                    good_keys.clear()
                good_keys.add(key)
            name = prefix + key
            t = type(x)
            if t is dict:
                if depth < MAX_DEPTH:
                    non_finite |= self._flatten(x, name + "/", base, ts, out, depth + 1)
                continue
            if name == self.ts_field or t is list or x is None:
                continue
            if t is str:
                value = _WORDS.get(x.strip().lower())  # other text (names, states) is ignored
                if value is None:
                    continue
            else:
                value = _to_value(x)
                if type(value) is Reject:
                    non_finite = True
                    continue
            out.append((base + name, ts, value))
        return non_finite

    def _from_array(self, topic: str, items: list[Any], arrival_ts: float) -> list[Sample] | Reject:
        """All elements or none: one bad element rejects the batch with its reason."""
        if not items:
            return NO_VALUE
        if len(items) > self.max_samples:
            return TOO_MANY_SAMPLES
        stream = self.stream(topic)
        fast = self._array_fast(stream, items, arrival_ts)
        if fast is not None:
            return fast
        out: list[Sample] = []
        last = len(items) - 1
        for i, item in enumerate(items):
            arrival = arrival_ts - (last - i) * ARRAY_SPACING_S if i != last else arrival_ts
            if type(item) is dict:
                ts = self._timestamp(item, arrival)
                if type(ts) is Reject:
                    return ts
                raw = _lookup(item, self.value_path)
                value = NO_VALUE if raw is _MISSING else _to_value(raw)
            else:
                ts = arrival
                value = _to_value(item)
            if type(value) is Reject:
                return value
            out.append((stream, ts, value))
        return out

    def _array_fast(self, stream: str, items: list[Any], arrival_ts: float) -> list[Sample] | None:
        """The common arrays (numbers, or objects with a numeric value and timestamp in seconds or
        milliseconds at the top level) with whole-list operations in C instead of a Python loop per
        element; None when anything is unusual (the element loop then finds the same samples or reason)."""
        kinds = frozenset(map(type, items))
        n = len(items)
        if kinds in _NUMBERS:
            values: list[Any] = items
            last = n - 1
            ts: list[Any] = [arrival_ts - (last - i) * ARRAY_SPACING_S for i in range(last)] + [arrival_ts]
        elif (
            kinds == _DICTS
            and len(self.value_path) == 1
            and self.ts_path is not None
            and len(self.ts_path) == 1
        ):
            try:
                values = list(map(itemgetter(self.value_path[0]), items))
                ts = list(map(itemgetter(self.ts_path[0]), items))
            except KeyError:
                return None
            ts_kinds = frozenset(map(type, ts))
            if ts_kinds not in _NUMBERS or frozenset(map(type, values)) not in _NUMBERS:
                return None
            try:
                if int in ts_kinds:
                    ts = list(map(float, ts))
                if not (0.0 < min(ts) and max(ts) <= 1e11):  # not all epoch seconds: scale each
                    ts = list(map(_to_timestamp, ts))
                    if frozenset(map(type, ts)) != _FLOATS:
                        return None
            except OverflowError:
                return None
            # the element loop checks each against its own arrival (up to n us earlier): near the
            # limit, let it decide
            if not all(map(_isfinite, ts)) or max(ts) > arrival_ts - n * ARRAY_SPACING_S + self.max_future_s:
                return None
        else:
            return None
        try:
            if type(values[0]) is not float or int in frozenset(map(type, values)):
                values = list(map(float, values))
        except OverflowError:
            return None
        if not all(map(_isfinite, values)):
            return None
        return list(zip(repeat(stream, n), ts, values, strict=True))


_cache: tuple[object, PayloadParser] | None = None


def parse_payload(
    topic: str, payload: bytes, arrival_ts: float, cfg: PayloadConfig | None = None
) -> list[Sample] | Reject:
    """Parse one payload with ``cfg`` (a ``PayloadSettings``; None = defaults).

    The compiled parser of the last ``cfg`` (by identity; settings are frozen) is reused; a
    long-lived caller can hold a :class:`PayloadParser` itself.
    """
    global _cache
    cached = _cache
    if cached is None or cached[0] is not cfg:
        cached = _cache = (cfg, PayloadParser(cfg))
    return cached[1].parse(topic, payload, arrival_ts)
