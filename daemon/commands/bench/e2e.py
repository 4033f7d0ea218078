"""``lstm-stream bench e2e``: the daemon end to end through a real Mosquitto, next to a bare subscriber.

Prints one JSON object. Everything runs on 127.0.0.1 in a temporary folder:

- a private Mosquitto on a free port (``max_queued_messages`` large, ``max_inflight_messages 0``);
- per QoS, two daemons (``python -m daemon run``), fresh state, fine-tuning off:
  ``A`` subscribes ``bench/#`` with ``http.per_stream = "none"`` and is used for throughput (the bench
  polls its ``/metrics`` several times a second to see the processed counter; with per-stream export
  on, every poll would render 10k streams and distort what is measured), ``B`` subscribes ``lat/#``
  with ``per_stream = "all"`` and is used for latency while Prometheus scrapes it every second;
- a bare paho subscriber process (same protocol and QoS, ``bare/#``) whose ``on_message`` only counts;
- ``K`` long-lived publisher processes (spawned), each owning every K-th topic, so each stream's
  messages leave one connection in order. Payloads are ``{"value": v, "ts": <time.time()>}``, so
  the daemon's ``lstm_stream_ingest_latency_seconds`` histogram measures publish -> scored. They
  write MQTT 3.1.1 PUBLISH packets themselves (:class:`RawPublisher`), 2-5 us of CPU a message
  (paho's ``publish()`` cost tens), so the load generator leaves the CPU to what is measured, as
  sensors on other machines would. Paced (the latency phase), they send at most every 1 ms.
- Nagle is off on every connection (the broker's ``set_tcp_nodelay true``, the clients' sockets),
  as recommended for the daemon (README).

Per QoS and stream count, ``rounds`` times (daemon and bare runs alternate, medians reported):
``N`` messages as fast as the publishers go; the rate is ``N / (done - first publish)``, where
``done`` is interpolated between two polls of the counter (the daemon's samples processed, the bare
subscriber's shared counter: the same method for both). ``lost`` = published - processed once the
counter stops moving. Then the latency phase on ``B`` at half the daemon's rate, with Prometheus
(or, without it, the bench) scraping ``/metrics`` every second: p50/p99 from the histogram's bucket
deltas, interpolated like ``histogram_quantile``. At the largest stream count, a batched phase sends
JSON arrays of ``batch_size`` samples per message. Idle subscribers receive nothing: each phase
publishes under its own prefix. Every phase has a timeout; all processes are stopped on exit,
Ctrl-C or an error (and by ``PR_SET_PDEATHSIG`` if the bench itself is killed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.commands.bench.broker import Broker
from daemon.commands.bench.options import BenchError, Options, add_arguments, options_from_args
from daemon.commands.bench.phases import Ctx
from daemon.commands.bench.publishers import Publishers
from daemon.commands.bench.qos import run_qos
from daemon.commands.bench.report import assemble


def run_cli(args: argparse.Namespace) -> int:
    """``lstm-stream bench e2e``: print the JSON object; exit 0 (1 when the bench itself failed)."""
    opts = options_from_args(args)
    try:
        result = run(opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench e2e failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def run(opts: Options) -> dict:
    """Run every phase; returns the result object (see the module docstring)."""
    if not opts.streams or not opts.qos or opts.messages < 1 or opts.publishers < 1:
        raise BenchError("need stream counts, QoS levels, messages >= 1 and publishers >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="lstm-bench-e2e-", dir=opts.workdir))
    old_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    broker: Broker | None = None
    pubs: Publishers | None = None
    ok = False
    started = time.monotonic()
    try:
        broker = Broker(tmp).start()
        mpctx = mp.get_context("spawn")
        pubs = Publishers(mpctx, opts.publishers, broker)
        c = Ctx(opts, tmp, broker, pubs, mpctx, time.monotonic() + opts.timeout_s, [])
        by_qos: dict[str, dict] = {}
        for qos in opts.qos:
            by_qos[str(qos)] = run_qos(c, qos)
        result = assemble(by_qos, opts, c.notes, time.monotonic() - started, tmp)
        ok = True
        return result
    finally:
        if pubs is not None:
            pubs.close()
        if broker is not None:
            broker.stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old_term)
        if opts.keep_dir or not ok:
            opts.log(f"[bench e2e] logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.commands.bench.e2e`` (same flags as ``lstm-stream bench e2e``)."""
    p = argparse.ArgumentParser(prog="python -m daemon.commands.bench.e2e")
    p.add_argument("--streams", default=None)
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
