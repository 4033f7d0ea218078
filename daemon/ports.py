"""Free loopback ports for the processes the demo, the benchmarks and the tests start."""

from __future__ import annotations

import socket

_HANDED_OUT: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now and that this process has not handed
    out before: the kernel may give the same free port twice in a row (two daemons set up one after
    the other once got the same HTTP port, and the second could not bind it)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port
    raise RuntimeError(f"no free port on {host} that was not handed out before")
