"""SIGTERM/SIGINT set a threading.Event without taking a lock inside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread
holds the very lock the handler would take: ``Event.set()`` in a handler deadlocks when the signal
lands while the main thread is inside ``Event.wait()`` holding the event's condition lock (seen: a
daemon that ignored SIGTERM for good, once in CI and in about 1 of 30 stops with the cores busy).
Here the handler only writes a byte to a pipe; a relay thread reads it and sets the event from
ordinary thread context.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While installed, each of ``signals`` sets ``event`` (from a relay thread, never the handler)."""

    def __init__(self, event: threading.Event, signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
        self.event = event
        self._read, self._write = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._write, False)  # a handler never blocks, even on a full pipe
        self._relay = threading.Thread(target=self._forward, name="stop-signals", daemon=True)
        self._relay.start()
        self._previous: list[tuple[int, Any]] = [(sig, signal.signal(sig, self._handle)) for sig in signals]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler: one byte into the pipe, no lock (a full pipe already says 'stop')."""
        with contextlib.suppress(OSError):  # BlockingIOError included
            os.write(self._write, b"\0")

    def _forward(self) -> None:
        """The relay thread: each byte sets the event; EOF (``close``) ends it."""
        with contextlib.suppress(OSError):
            while os.read(self._read, 64):
                self.event.set()

    def close(self) -> None:
        """Put the previous handlers back and end the relay thread (a second call does nothing)."""
        if self._write < 0:
            return
        for sig, handler in self._previous:
            signal.signal(sig, handler)
        self._previous = []
        os.close(self._write)
        self._write = -1
        self._relay.join(timeout=5)
        os.close(self._read)

    def __enter__(self) -> StopSignals:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
