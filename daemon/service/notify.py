"""sd_notify(3) in the standard library: one datagram to ``$NOTIFY_SOCKET`` per call.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False, so the service
calls these unconditionally. ``WATCHDOG=1`` must come from the loop that proves progress (the
engine loop) at :func:`watchdog_interval_s`, never from a free-running timer.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines) to the service manager; True if it was sent.

    A leading ``@`` in the socket path means Linux's abstract namespace. Send errors return
    False rather than raise: a lost notification must not take the service down. The send never
    waits: with the manager's queue full it fails at once instead of stalling the caller (the engine
    loop sends the watchdog pings).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False  # e.g. "vsock:..." (systemd 253+ in VMs): not supported here
    try:
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())  # a newline would start a new KEY= assignment


def ready(status: str | None = None) -> bool:
    """``READY=1`` (start-up finished: connected and restored), with an optional status line."""
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def status(text: str) -> bool:
    """``STATUS=...``: the line ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}")


def extend_timeout(seconds: float, status: str | None = None) -> bool:
    """``EXTEND_TIMEOUT_USEC``: the start (or stop) in progress needs ``seconds`` more from now (a long
    write-ahead log replay before ``READY=1``), with an optional status line."""
    state = f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1e6))}"
    return notify(state if status is None else f"{state}\nSTATUS={_one_line(status)}")


def stopping() -> bool:
    """``STOPPING=1``: shutdown has begun (draining, final checkpoint)."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """``WATCHDOG=1``: the engine loop made progress."""
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """How often to send :func:`watchdog`: half of ``$WATCHDOG_USEC``; None if not enabled.

    ``$WATCHDOG_PID``, when set, must be this process (a child that inherited the environment
    is not the one being watched).
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
