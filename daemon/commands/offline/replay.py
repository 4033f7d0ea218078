"""``replay``: publish a CSV to MQTT, in order and paced, in the payload format the daemon reads."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lstm_stream.csvdata import CsvData, load_csv

from .common import (
    EX_FAILURE,
    UserError,
    _add_csv_options,
    _bar,
    _csv_kwargs,
    _dumps,
    _guard,
    _note,
    _positive_float,
    _positive_int,
)


def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="publish a CSV to MQTT in the payload format the daemon reads",
        description="Publish the rows of a CSV, in order, to an MQTT broker: the way to feed the "
        'daemon history for demos and tests. JSON payloads {"value": v, "ts": epoch_seconds} by '
        "default, so the daemon uses the file's timestamps; --format plain sends bare numbers "
        "(the daemon then stamps them on arrival). With QoS 1 the command waits until the broker "
        "has acknowledged every message. The daemon drops a JSON sample whose timestamp is not after its "
        "stream's last one (a file kept unsorted, or with repeated timestamps): use --format plain there.",
    )
    _add_csv_options(p, several=False, required=True, what="CSV file to publish")
    dest = p.add_argument_group("destination").add_mutually_exclusive_group(required=True)
    dest.add_argument(
        "--topic",
        metavar="T",
        help="one topic for every row; with several value columns the JSON payload holds one field "
        "per column (the daemon makes a stream <topic>/<column> of each)",
    )
    dest.add_argument(
        "--topic-per-column", metavar="PREFIX", help="one topic per value column: PREFIX/<column>"
    )
    b = p.add_argument_group("broker")
    b.add_argument("--host", default="localhost", metavar="H", help="MQTT broker host (default localhost)")
    b.add_argument(
        "--port", type=_positive_int, default=1883, metavar="N", help="MQTT broker port (default 1883)"
    )
    b.add_argument("--username", metavar="NAME", help="MQTT user name")
    b.add_argument("--password-file", type=Path, metavar="FILE", help="file holding the MQTT password")
    b.add_argument("--client-id", metavar="ID", help="MQTT client id (default lstm-stream-replay-<pid>)")
    b.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of the messages (default 1)")
    b.add_argument("--retain", action="store_true", help="publish with the retain flag")
    b.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds to wait for connect/acks (30)",
    )
    pace = p.add_argument_group("pace").add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=_positive_float,
        metavar="MSGS_PER_S",
        help="fixed message rate (default, without --speedup: as fast as the broker takes them)",
    )
    pace.add_argument(
        "--speedup",
        type=_positive_float,
        metavar="X",
        help="follow the file's own timestamps X times faster (e.g. 300: 5-minute rows every second)",
    )
    p.add_argument(
        "--format", choices=("json", "plain"), default="json", help="payload format (default json)"
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="publish only the first N rows")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_guard("replay", cmd_replay))


def _number(v: float) -> str:
    return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(float(v))


def replay_messages(data: CsvData, args: argparse.Namespace) -> list[tuple[float, str, bytes]]:
    """(row time, topic, payload) of every message, in publishing order."""
    cols = data.columns
    if args.topic_per_column is not None:
        prefix = args.topic_per_column.rstrip("/")
        topics = [f"{prefix}/{c}" for c in cols]
    else:
        topics = [args.topic]
        if len(cols) > 1:
            if args.format == "plain":
                raise UserError(
                    f"{data.path}: {len(cols)} value columns do not fit one plain payload: use "
                    "--topic-per-column, --format json or one --value-col"
                )
            clash = [c for c in cols if c in ("value", "ts")]
            if clash:
                raise UserError(
                    f"column {clash[0]!r} collides with the daemon's payload keys: use --topic-per-column"
                )
    for t in topics:
        if not t or "+" in t or "#" in t or "\0" in t:
            raise UserError(f"{t!r}: a publish topic must be non-empty, without '+' or '#'")
    n = len(data) if args.limit is None else min(args.limit, len(data))
    msgs: list[tuple[float, str, bytes]] = []
    for i in range(n):
        ts = float(data.time[i])
        row = data.values[i]
        if args.topic_per_column is not None:
            for t, v in zip(topics, row, strict=True):
                msgs.append((ts, t, _payload(args.format, float(v), ts)))
        elif len(cols) == 1:
            msgs.append((ts, topics[0], _payload(args.format, float(row[0]), ts)))
        else:
            body = ", ".join(f"{json.dumps(c)}: {_number(float(v))}" for c, v in zip(cols, row, strict=True))
            msgs.append((ts, topics[0], f'{{{body}, "ts": {ts!r}}}'.encode()))
    return msgs


def _payload(fmt: str, v: float, ts: float) -> bytes:
    if fmt == "plain":
        return _number(v).encode()
    return f'{{"value": {_number(v)}, "ts": {ts!r}}}'.encode()


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay``: publish rows in order, paced, and wait for every acknowledgement."""
    import paho.mqtt.client as mqtt

    data = load_csv(args.csv, **_csv_kwargs(args), min_rows=1)
    for note in data.notes:
        _note(args, f"{args.csv}: {note}")
    msgs = replay_messages(data, args)
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"{args.password_file}: cannot read the password: {exc.strerror}") from None
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id or f"lstm-stream-replay-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    if args.username:
        client.username_pw_set(args.username, password)
    connected = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        result["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(args.host, args.port, keepalive=60)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot connect to mqtt://{args.host}:{args.port}: {exc}") from None
    client.loop_start()
    sent = 0
    t_start = time.monotonic()
    try:
        if not connected.wait(args.timeout):
            raise UserError(f"mqtt://{args.host}:{args.port}: no answer to CONNECT in {args.timeout:g}s")
        reason = result["reason"]
        if getattr(reason, "is_failure", False):
            raise UserError(f"mqtt://{args.host}:{args.port} refused the connection: {reason}")
        infos = []
        t0_row = msgs[0][0] if msgs else 0.0
        with _bar(args, len(msgs), "replay", "msg") as bar:
            for k, (ts, topic, payload) in enumerate(msgs):
                if args.rate:
                    due = t_start + k / args.rate
                elif args.speedup:
                    due = t_start + max(0.0, ts - t0_row) / args.speedup
                else:
                    due = 0.0
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                info = client.publish(topic, payload, qos=args.qos, retain=args.retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                    raise UserError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
                infos.append(info)
                sent += 1
                bar.update(1)
        deadline = time.monotonic() + args.timeout
        for info in infos:
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_published(info, left):
                break
        acked = sum(1 for i in infos if i.is_published())
    finally:
        client.disconnect()
        client.loop_stop()
    seconds = time.monotonic() - t_start
    topics = sorted({t for _, t, _ in msgs})
    summary = {
        "messages": sent,
        "completed": acked,
        "rows": min(len(data), args.limit or len(data)),
        "topics": topics,
        "qos": args.qos,
        "format": args.format,
        "seconds": round(seconds, 3),
        "rate": round(sent / seconds, 1) if seconds > 0 else None,
    }
    if args.json:
        print(_dumps(summary))
    else:
        where = topics[0] if len(topics) == 1 else f"{len(topics)} topics"
        word = "acknowledged" if args.qos else "written"
        print(
            f"replay: {sent} {args.format} messages ({summary['rows']} rows) to {where} on "
            f"{args.host}:{args.port} in {seconds:.2f}s ({summary['rate']} msg/s), qos {args.qos}, "
            f"{acked}/{sent} {word}"
        )
    if acked < sent:
        print(
            f"lstm-stream replay: {sent - acked} message(s) not {'acknowledged' if args.qos else 'sent'} "
            f"within {args.timeout:g}s",
            file=sys.stderr,
        )
        return EX_FAILURE
    return 0


def _wait_published(info: Any, timeout: float) -> bool:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        return False
    return info.is_published()
