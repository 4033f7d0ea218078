"""The publish fence of a NATS worker: events and forecasts only for partitions whose lease it holds.

A worker paused (SIGSTOP, swap, a long GC) past its lease TTL may, once it runs again, still apply
messages it had received before its next lease round notices the loss, while another worker already
took the partition and published for the same samples. The fence is read once per batch, on the
engine thread, just before publishing: a stream may publish only if its partition's lease was renewed
less than TTL - margin ago by this worker's monotonic clock. The server expires a lease TTL after the
write that renewed it, which is before this worker saw the write succeed, so a lease that is fresh
here has not expired there, and nobody else can hold it (KV create only succeeds on an absent key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nats-py is imported on the NATS path only (the MQTT daemon imports this module)
    from daemon.ingest.nats_leases import Leases


class LeaseFence:
    """Callable per batch: ``fence()`` -> ``allowed(stream) -> bool`` for this moment's fresh leases."""

    def __init__(
        self, leases: Callable[[], Leases | None], partition_of: dict[str, int], margin_s: float
    ) -> None:
        self.leases = leases
        self.partition_of = partition_of
        self.margin_s = margin_s

    def fresh(self) -> set[int]:
        """Partitions whose lease is held and renewed within TTL - margin (none before the first round)."""
        leases = self.leases()
        if leases is None:
            return set()
        renewed = leases.renewed.copy()  # written on the source's loop: copy in one step
        return {k for k in renewed if leases.fresh(k, self.margin_s)}

    def __call__(self) -> Callable[[str], bool]:
        fresh, get = self.fresh(), self.partition_of.get
        return lambda stream: get(stream) in fresh
