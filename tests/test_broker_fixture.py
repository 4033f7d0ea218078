"""The test broker itself: starts, accepts connections, stops and restarts on the same port."""

from __future__ import annotations

from tests.broker import Broker, wait_port


def test_broker_restarts_on_the_same_port(tmp_path) -> None:
    b = Broker(tmp_path).start()
    port = b.port
    b.stop()
    wait_port(port, up=False)
    b.start()
    assert b.port == port
    b.stop()
