"""``GET /metrics`` and ``GET /healthz`` on a threading HTTP server in a daemon thread.

Bounded against slow or hostile clients: each connection has a socket timeout (``TIMEOUT_S``), and at
most ``MAX_THREADS`` are served at once; a connection beyond that is closed at once, unanswered.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the exposition process imports this module: it needs neither
    from prometheus_client import CollectorRegistry

    from daemon.outputs.exposition import StreamExporter

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TIMEOUT_S = 10.0  # a connection that sends or reads nothing for this long is closed
MAX_THREADS = 8  # connections served at once (Prometheus scrapes one at a time)
HealthCheck = Callable[[], tuple[bool, str]]  # (ok, detail shown on failure)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "lstm-stream"
    timeout = TIMEOUT_S  # socketserver sets it on the connection: a silent client cannot hold a thread

    def do_GET(self) -> None:  # http.server's naming
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path == "/metrics":
            try:
                status, body = 200, owner.scrape()
            except Exception as exc:  # noqa: BLE001 - the engine's process did not answer: say so
                status, body = 503, f"metrics unavailable: {exc}\n".encode("utf-8", "replace")
        elif path == "/healthz":
            status, body = owner.health()
        else:
            status, body = 404, b"not found\n"
        chunks = [body] if isinstance(body, bytes) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(sum(map(len, chunks))))
            self.end_headers()
            if send_body:
                for chunk in chunks:
                    self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the scraper gave up; nothing to tell it

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(http.server.ThreadingHTTPServer):
    """A thread per connection, at most ``max_threads`` at once; the rest are closed unanswered."""

    daemon_threads = True
    block_on_close = False
    owner: ServerOwner
    max_threads = MAX_THREADS

    def server_activate(self) -> None:
        """Listen, and make the thread slots (here: ``max_threads`` is read once the class is set up)."""
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self.refused = 0  # connections closed because every thread was busy

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """Serve in a thread if one is free, else close the connection now."""
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug("http: %d connections busy, closing one from %s", self.max_threads, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        """Serve one connection in its thread, then give the thread's slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ServerOwner(Protocol):
    """What the handler asks: the /metrics body (bytes, or chunks written one after the other) and
    the /healthz answer."""

    def scrape(self) -> bytes | list[bytes]: ...

    def health(self) -> tuple[int, bytes]: ...


def listening_socket(bind: str, port: int) -> socket.socket:
    """A listening TCP socket on ``bind``:``port`` (IPv6 when ``bind`` has a colon; 0 = a free port)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    return socket.create_server((bind, port), family=family, backlog=64)


def serve_socket(sock: socket.socket, owner: ServerOwner) -> _Server:
    """An HTTP server (not yet serving) around an already listening ``sock``, answering for ``owner``."""
    server_class = _Server
    if sock.family == socket.AF_INET6:
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_class(sock.getsockname()[:2], _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
    server._slots = threading.BoundedSemaphore(server.max_threads)
    server.refused = 0
    server.owner = owner
    return server


def health_response(check: HealthCheck | None) -> tuple[int, bytes]:
    """Status and body of /healthz from ``check``: 200 ``ok``, else 503 and why (a check that raises
    is an unhealthy service, not a crashed server)."""
    if check is None:
        return 200, b"ok\n"
    try:
        ok, detail = check()
    except Exception as exc:  # noqa: BLE001
        ok, detail = False, f"health check failed: {exc!r}"
    if ok:
        return 200, b"ok\n"
    return 503, (detail.rstrip("\n") + "\n").encode("utf-8", "replace")


class MetricsServer:
    """``GET /metrics`` (registry + per-stream text) and ``GET /healthz`` on a daemon thread.

    ``health`` returns ``(ok, detail)``: 200 ``ok`` or 503 ``detail``. Binding happens here (so a
    port in use fails at start-up); ``port=0`` picks a free port, see :attr:`port`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        exporter: StreamExporter | None = None,
        health: HealthCheck | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe(work, cpu_s)``, if given, is told the CPU time of each scrape (``work`` =
        ``scrape``): rendering here holds the engine's interpreter."""
        self.registry = registry
        self._observe = observe
        self.exporter = exporter
        self._health = health
        server_class = _Server
        if ":" in bind:
            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._server = server_class((bind, port), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="metrics-http",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scrape(self) -> bytes:
        """The full /metrics body."""
        from prometheus_client import generate_latest

        t0 = time.thread_time()
        body = generate_latest(self.registry)
        if self.exporter is not None:
            body += self.exporter.render()
        if self._observe is not None:
            self._observe("scrape", time.thread_time() - t0)
        return body

    def health(self) -> tuple[int, bytes]:
        """Status and body of /healthz."""
        return health_response(self._health)
