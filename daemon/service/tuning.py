"""Fine-tuning glue: when to start a background run, and whether what comes back replaces the live model."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from daemon.service.finetuner import Finetuner, Outcome
from daemon.settings import FinetuneSettings
from lstm_stream.engine import Engine
from lstm_stream.history import history_is_fresh

log = logging.getLogger("lstm_stream.service")


class FinetuneObserver(Protocol):
    """What Tuning reports to: the service's Metrics, or an offline replay's tally."""

    def observe_finetune(self, outcome: str, seconds: float, candidate_loss: float, live_loss: float) -> None:
        """One finished run."""

    def set_model(self, version: int) -> None:
        """The served model's version after a swap."""


class Tuning:
    """Starts a fine-tune every ``interval_s`` once ``min_new_samples`` arrived and the new samples fill
    the held-out share of the buffered history (:func:`history_is_fresh`); swaps a better model in.

    Runs on the engine thread (housekeeping); the training itself is the :class:`Finetuner`'s. The
    clock is the caller's: the service passes monotonic seconds, an offline replay the data's own
    timestamps (``evaluate --online``), so both follow one schedule.
    """

    def __init__(
        self, settings: FinetuneSettings, finetuner: Finetuner, engine: Engine, metrics: FinetuneObserver
    ) -> None:
        self.settings = settings
        self.finetuner = finetuner
        self.engine = engine
        self.metrics = metrics
        self.samples_since = 0  # samples the engine accepted since the last run started
        self.next_at = 0.0
        self._forced = False  # force(): run at the next pass whatever the history

    def schedule(self, now: float) -> None:
        """The first run may start ``interval_s`` after ``now`` (the caller's clock, in seconds)."""
        self.next_at = now + self.settings.interval_s

    def count(self, accepted: int) -> None:
        """Samples a batch added to the history a run trains on."""
        self.samples_since += accepted

    def step(self, now: float) -> None:
        """Apply a finished run's outcome; start the next run when it is due and there is new data."""
        outcome = self.finetuner.result()
        if outcome is not None:
            self._apply(outcome)
        ft = self.settings
        if not ft.enabled or self.finetuner.busy or now < self.next_at:
            return
        self.next_at = now + ft.interval_s
        if self.samples_since < ft.min_new_samples:
            return
        train = self.engine.config.train
        history = self.engine.history(min_len=train.seq_len + 1)
        if not history_is_fresh(self.samples_since, history, train) and not self._forced:
            return
        self.samples_since, self._forced = 0, False
        if self.finetuner.start(self.engine.weights.copy(), history, self.engine.config):
            log.info("fine-tune started on %d streams' history (%s)", len(history), ft.mode)

    def _apply(self, o: Outcome) -> None:
        self.metrics.observe_finetune(o.outcome, o.seconds, o.candidate_loss, o.live_loss)
        if o.outcome == "accepted" and o.candidate is not None:
            t0 = time.monotonic()
            self.engine.swap_model(o.candidate)
            self.metrics.set_model(self.engine.model_version)
            log.info(
                "fine-tune accepted: validation loss %.4f < live %.4f; model v%d swapped in (%.2fs)",
                o.candidate_loss,
                o.live_loss,
                self.engine.model_version,
                time.monotonic() - t0,
            )
        else:
            detail = o.error or f"candidate loss {o.candidate_loss:.4f}, live {o.live_loss:.4f}"
            log.warning("fine-tune %s: %s; live model kept", o.outcome, detail)

    def force(self) -> None:
        """Make a run due at the next housekeeping pass, whatever arrived meanwhile."""
        self.samples_since = max(self.samples_since, self.settings.min_new_samples)
        self.next_at = -float("inf")
        self._forced = True
