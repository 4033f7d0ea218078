"""The demo's terminal: whole lines from several threads, and the daemon's log lines among them."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any


class Console:
    """Whole lines to stdout from several threads, flushed at once (so ``| tee`` shows them live)."""

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._write = write

    def __call__(self, line: str = "") -> None:
        with self._lock:
            if self._write is not None:
                self._write(line)
                return
            try:
                print(line, flush=True)
            except BrokenPipeError:  # e.g. `| tee` or `| head` ended: carry on and shut down cleanly
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console(self.format(record))
        except Exception:  # logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def demo_logging(console: Console):
    """The daemon's own INFO lines (checkpoints, fine-tunes) and everyone's warnings, prefixed."""
    handler = _ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("  daemon | %(message)s"))
    root = logging.getLogger()
    levels = {
        name: logging.getLogger(name).level
        for name in ("", "lstm_stream.service", "daemon.service.finetuner")
    }
    quiet = {name: logging.getLogger(name).level for name in ("amqtt", "transitions")}
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("lstm_stream.service").setLevel(logging.INFO)
    logging.getLogger("daemon.service.finetuner").setLevel(logging.INFO)
    for name in quiet:  # amqtt logs every connect and disconnect; its errors still show
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, level in {**levels, **quiet}.items():
            logging.getLogger(name).setLevel(level)
