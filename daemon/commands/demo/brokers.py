"""The demo's MQTT broker on 127.0.0.1: Mosquitto when installed, else the embedded amqtt; free ports."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from daemon.ports import free_port


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind ``host:port`` right now (as brokers do: with SO_REUSEADDR,
    so the TIME_WAIT connections of a previous run do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(requested: int | None, preferred: int, what: str) -> int:
    """``requested`` if given (it must be free); else ``preferred`` if free; else any free port."""
    if requested is not None:
        if requested and not port_free(requested):
            raise DemoError(f"{what} port {requested} is in use; pick another or leave it out")
        return requested or free_port()
    return preferred if port_free(preferred) else free_port()


def wait_port(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Wait until 127.0.0.1:port accepts connections (False on timeout or when ``alive()`` fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class DemoError(Exception):
    """Something the user can fix (a port in use, no broker available): one line, exit non-zero."""


def find_mosquitto() -> str | None:
    """The ``mosquitto`` executable: on PATH, or Debian's /usr/sbin (not on a user's PATH)."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def amqtt_available() -> bool:
    """Whether the embedded broker can be used (the ``demo`` extra is installed)."""
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


class MosquittoBroker:
    """Mosquitto on 127.0.0.1:port with a throw-away config: anonymous, no persistence, no log file."""

    protocol = "5"

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.host = "127.0.0.1"
        self.port = port
        self.conf = workdir / "mosquitto.conf"
        self.errors = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.description = f"Mosquitto ({executable}), MQTT 5 and 3.1.1"

    def start(self) -> MosquittoBroker:
        self.conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"  # no ~40 ms Nagle/delayed-ACK stalls towards subscribers
            "log_dest stderr\n"
            "log_type error\n"
        )
        with self.errors.open("wb") as err:
            self.proc = subprocess.Popen(
                [self.executable, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # the terminal's Ctrl-C is ours to handle: stop it in order
            )
        if not wait_port(self.port, 10.0, alive=lambda: self.proc.poll() is None):
            self.stop()
            detail = self.errors.read_text(errors="replace").strip().splitlines()
            raise DemoError(f"mosquitto did not start: {detail[-1] if detail else 'no output'}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EmbeddedBroker:
    """amqtt's broker on its own asyncio loop in a daemon thread (MQTT 3.1.1 only)."""

    protocol = "3.1.1"

    def __init__(self, port: int) -> None:
        import importlib.metadata

        self.host = "127.0.0.1"
        self.port = port
        self.description = f"embedded amqtt {importlib.metadata.version('amqtt')} (Python), MQTT 3.1.1"
        self._loop = None
        self._thread: threading.Thread | None = None
        self._broker = None

    def start(self) -> EmbeddedBroker:
        import asyncio

        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
        self._thread.start()

        async def start() -> None:
            self._broker = Broker(config, loop=asyncio.get_running_loop())
            await self._broker.start()

        try:
            asyncio.run_coroutine_threadsafe(start(), loop).result(15)
        except Exception as exc:
            self.stop()
            raise DemoError(f"the embedded broker did not start: {exc}") from exc
        return self

    def stop(self) -> None:
        import asyncio

        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._broker is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not loop.is_running():
            loop.close()


def start_broker(port: int, workdir: Path, embedded: bool = False) -> MosquittoBroker | EmbeddedBroker:
    """Mosquitto when installed (unless ``embedded``), else amqtt; raises :class:`DemoError`."""
    mosquitto = None if embedded else find_mosquitto()
    if mosquitto is not None:
        return MosquittoBroker(mosquitto, port, workdir).start()
    if not amqtt_available():
        why = "--embedded-broker needs amqtt" if embedded else "no MQTT broker: mosquitto is not installed"
        raise DemoError(f'{why}; install the embedded one with: pip install "lstm-stream[demo]"')
    return EmbeddedBroker(port).start()
