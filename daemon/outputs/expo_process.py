"""``/metrics`` and ``/healthz`` served from a child process, so rendering 10k streams never holds the
engine's GIL (``http.exposition = "process"``).

The parent binds the port (a port in use fails at start-up, and a restarted child keeps it), and
hands the child the listening socket and the shared-memory snapshot (:mod:`.snapshot`) over a pipe.
Per scrape the child asks the parent for the aggregate registry's text (about 1 ms of the parent's
time) and appends the per-stream families, rendered from the snapshot by its own
:class:`~daemon.outputs.snaptext.SnapshotText`; ``/healthz`` is the parent's health check, asked the
same way, and 503 if the parent does not answer within ``RPC_TIMEOUT_S``.

The child ignores SIGTERM/SIGINT (systemd signals the whole cgroup) and exits when the parent asks
or when the control pipe closes (the parent died, however). The parent's :meth:`check` restarts a
child that died; meanwhile connections wait in the socket's backlog.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from daemon import spawn
from daemon.heap import compact_heap
from daemon.outputs.server import HealthCheck, health_response, listening_socket, serve_socket
from daemon.outputs.snapshot import SnapshotReader, SnapshotWriter
from daemon.outputs.snaptext import SnapshotText

log = logging.getLogger(__name__)

PROCESS_NAME = b"lstm-stream-exp"  # the child's name in ps and /proc/<pid>/comm (15 bytes at most)
RPC_TIMEOUT_S = 5.0  # the parent answers within this, or the scrape fails (503)
METRICS, HEALTH, STOP = b"m", b"h", b"stop"
Observe = Callable[[str, float], None]  # (work, CPU seconds) spent by the parent's interpreter


class ExpositionProcess:
    """Parent side: owns the socket and the snapshot, starts (and restarts) the child, answers it.

    ``scrape()`` returns the aggregate text (``generate_latest`` of the registry); ``health`` is
    the service's check; ``observe(work, seconds)``, if given, is told the parent's CPU time per
    answer (``work`` = ``scrape`` or ``health``).
    """

    def __init__(
        self,
        scrape: Callable[[], bytes],
        writer: SnapshotWriter,
        health: HealthCheck | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        mode: str = "all",
        observe: Observe | None = None,
    ) -> None:
        self._scrape = scrape
        self.writer = writer
        self._health = health
        self.mode = mode
        self._observe = observe
        self.sock = listening_socket(bind, port)
        self.process: BaseProcess | None = None
        self._ctl: Connection | None = None
        self._rpc_thread: threading.Thread | None = None
        self.restarts = 0
        self.error = ""  # why the child was last found dead

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> ExpositionProcess:
        """Start the child and the thread that answers it; returns self."""
        ctx = spawn.context()  # no fork of a threaded parent; no resource tracker process
        ctl, ctl_child = ctx.Pipe()
        rpc, rpc_child = ctx.Pipe()
        proc = ctx.Process(
            target=child_main,
            args=(ctl_child, rpc_child, self.mode, self.writer.horizons, logging.getLogger().level),
            name="lstm-stream-exposition",
            daemon=True,
        )
        proc.start()
        ctl_child.close()
        rpc_child.close()
        reduction.send_handle(ctl, self.sock.fileno(), proc.pid)
        reduction.send_handle(ctl, self.writer.fd, proc.pid)
        self.process, self._ctl = proc, ctl
        # the child ignores SIGTERM, which multiprocessing's exit handler sends before joining it:
        # stop it first if the parent exits without stop() (an exception on the way out)
        atexit.register(self._close_child)
        self._rpc_thread = threading.Thread(target=self._answer, args=(rpc,), name="exposition", daemon=True)
        self._rpc_thread.start()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def check(self) -> bool:
        """Restart the child if it died (call every second or so); True if it had to."""
        if self.process is None or self.alive():
            return False
        self.error = f"exposition process ended (exit code {self.process.exitcode})"
        log.error("%s: restarting it", self.error)
        self._close_child()
        self.restarts += 1
        self.start()
        return True

    def _answer(self, conn: Connection) -> None:
        """Parent thread: answer the child's requests until it goes away."""
        try:
            while True:
                req = conn.recv_bytes()
                t0 = time.thread_time()
                kind, tag = req[:1], req[1:]
                if kind == METRICS:
                    body = self._scrape()
                    work = "scrape"
                else:
                    status, text = health_response(self._health)
                    body = b"%d\n%s" % (status, text)
                    work = "health"
                conn.send_bytes(tag + b"\n" + body)
                if self._observe is not None:
                    self._observe(work, time.thread_time() - t0)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def _close_child(self) -> None:
        proc, ctl = self.process, self._ctl
        if ctl is not None:
            with contextlib.suppress(OSError):
                ctl.send_bytes(STOP)
        if proc is not None:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        if ctl is not None:
            ctl.close()
        if self._rpc_thread is not None:
            self._rpc_thread.join(5.0)
        self.process = self._ctl = self._rpc_thread = None

    def stop(self) -> None:
        """Stop the child and close the socket."""
        self._close_child()
        atexit.unregister(self._close_child)
        self.sock.close()

    def __enter__(self) -> ExpositionProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ChildOwner:
    """Child side: what the HTTP handler asks for, from the parent (aggregates, health) and the
    snapshot (per-stream families)."""

    def __init__(self, rpc: Connection, reader: SnapshotReader, cache: SnapshotText) -> None:
        self.rpc = rpc
        self.reader = reader
        self.cache = cache
        self._lock = threading.Lock()
        self._tag = 0

    def _ask(self, kind: bytes) -> bytes:
        """Send a request to the parent (caller holds the lock); its tag, for :meth:`_answer`."""
        self._tag += 1
        tag = b"%d" % self._tag
        self.rpc.send_bytes(kind + tag)
        return tag

    def _answer(self, tag: bytes) -> bytes:
        """The parent's answer to ``tag``, or RuntimeError after ``RPC_TIMEOUT_S``."""
        deadline = time.monotonic() + RPC_TIMEOUT_S
        while self.rpc.poll(max(0.0, deadline - time.monotonic())):
            got, _, body = self.rpc.recv_bytes().partition(b"\n")
            if got == tag:  # an answer to an earlier request that timed out is dropped
                return body
        raise RuntimeError(f"the engine's process did not answer within {RPC_TIMEOUT_S:g} s")

    def scrape(self) -> list[bytes]:
        """The aggregates from the parent and the per-stream text (rendered while the parent answers),
        in chunks the handler writes one by one: no joined copy of 8 MB per request."""
        with self._lock:
            tag = self._ask(METRICS)
            per_stream = self.cache.render_chunks(self.reader.read())
            return [self._answer(tag), *per_stream]

    def health(self) -> tuple[int, bytes]:
        try:
            with self._lock:
                status, _, body = self._answer(self._ask(HEALTH)).partition(b"\n")
            return int(status), body
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            return 503, f"{exc}\n".encode()


def child_main(
    ctl: Connection, rpc: Connection, mode: str, horizons: tuple[int, ...], log_level: int
) -> None:
    """The exposition process: serve HTTP until the parent says stop or goes away."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, PROCESS_NAME)  # PR_SET_NAME
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    compact_heap()  # a thread per request, each rendering megabytes: one arena, big blocks returned
    sock = socket.socket(fileno=reduction.recv_handle(ctl))
    reader = SnapshotReader(reduction.recv_handle(ctl))
    server = serve_socket(sock, _ChildOwner(rpc, reader, SnapshotText(mode, horizons)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    with contextlib.suppress(EOFError, OSError):
        ctl.recv_bytes()  # STOP, or EOF when the parent is gone
    os._exit(0)  # serving threads and all: nothing to flush
