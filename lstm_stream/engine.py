"""The engine: samples ``(stream, ts, value)`` in, forecasts, residuals, scores and flags out.

``Engine.process`` takes a micro-batch as columns, validates it, gives new streams a slot, and runs
one batched LSTM step for every stream present (a stream with several samples in the batch is
stepped once per sample, in order). Nothing here knows about MQTT, files or clocks: the caller
passes the time, and ``snapshot``/``restore`` turn the whole state into arrays and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

from . import adaptation, admission, fastnp, horizon, late, scaling, scoring, seasonal, selection
from .config import EngineConfig
from .rounds import RoundBudget, by_round, occurrence_rank
from .runner import ModelRunner
from .state import Column, StreamTable
from .weights import Weights

if TYPE_CHECKING:
    from .models import Forecaster

REJECTS = (
    "",
    "not_finite",
    "not_a_number",
    "out_of_order",
    "duplicate",
    "over_capacity",
    "bad_timestamp",
    "new_stream_rate",
    "deferred",
)
# NEW_STREAM_RATE: a new stream beyond the admission rate (engine.new_streams_per_s)
# DEFERRED: not applied in this call, beyond its rounds' bound (``max_rounds``, ``round_budget_s``); not
# a rejection: the caller passes it again (first, in order) with the next batch
OK, NOT_FINITE, NOT_A_NUMBER, OUT_OF_ORDER, DUPLICATE, OVER_CAPACITY, BAD_TIMESTAMP, *_ = range(len(REJECTS))
NEW_STREAM_RATE, DEFERRED = REJECTS.index("new_stream_rate"), REJECTS.index("deferred")
COUNTERS = ("processed", "rejected", "evicted", "expired", "flagged", "reordered")  # reordered: see late.py
TS_RING = 8  # recent timestamps kept per stream, to tell a redelivered duplicate from a late sample


@dataclass
class Results:
    """Per-sample outputs of one ``process`` call, as columns aligned with the input order.

    ``forecast``/``spread`` are what was served for this value one step earlier (NaN for a stream's
    first sample), and ``served`` names the forecaster that made it (an index into
    ``selection.NAMES``; see :mod:`lstm_stream.selection`); ``next_forecast``/``next_spread`` are the
    served prediction of the next value, made by ``next_served``. Rejected samples
    (``reject != 0``) have NaN outputs and changed nothing.
    """

    stream: Sequence[str]
    ts: np.ndarray
    value: np.ndarray
    forecast: np.ndarray
    spread: np.ndarray
    residual: np.ndarray
    score: np.ndarray
    is_anomaly: np.ndarray
    reason: np.ndarray
    next_forecast: np.ndarray
    next_spread: np.ndarray
    reject: np.ndarray
    evicted: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # new streams not admitted (full table, rate)
    served: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    next_served: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    # the path after each sample, steps 1..H (step 1 is next_forecast), and the half-width of its
    # central interval, (n, H); (0, 0) when the horizon is off or process() was asked for no paths
    path: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    halfwidth: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def accepted(self) -> np.ndarray:
        """Mask of samples that were applied."""
        return self.reject == OK

    def reason_of(self, i: int) -> str:
        """Reason name of sample ``i``'s flag ('' when not flagged)."""
        return scoring.REASONS[int(self.reason[i])]

    def served_of(self, i: int) -> str:
        """Name of the forecaster that made sample ``i``'s ``forecast`` (model, persistence, ...)."""
        return selection.NAMES[int(self.served[i])]

    def reject_of(self, i: int) -> str:
        """Reject reason name of sample ``i`` ('' when accepted)."""
        return REJECTS[int(self.reject[i])]

    @cached_property
    def lower(self) -> np.ndarray:
        """Lower bounds of the paths' central intervals, (n, H)."""
        with np.errstate(all="ignore"):  # 1e308 minus a width may overflow: -inf is the bound then
            return self.path - self.halfwidth

    @cached_property
    def upper(self) -> np.ndarray:
        """Upper bounds of the paths' central intervals, (n, H)."""
        with np.errstate(all="ignore"):
            return self.path + self.halfwidth


@dataclass
class StreamView:
    """Latest per-stream outputs, one row per tracked stream (copies: safe to read in another thread)."""

    names: list[str]
    value: np.ndarray  # last accepted value
    forecast: np.ndarray  # what was forecast for that value (NaN before the second sample)
    next_forecast: np.ndarray  # forecast of the next value
    score: np.ndarray  # last anomaly score in [0, 1]
    in_anomaly: np.ndarray  # bool: the stream is inside an anomalous condition now
    anomalies: np.ndarray  # flags raised since the stream was created
    last_seen: np.ndarray  # time of the last sample (the ``now`` passed to process)
    samples: np.ndarray  # samples applied
    served: np.ndarray | None = None  # forecaster of next_forecast: index into selection.NAMES
    path: np.ndarray | None = None  # (streams, H): forecasts of the next H values (None: horizon off)
    lower: np.ndarray | None = None  # and their central interval
    upper: np.ndarray | None = None


def coerce_values(values: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 plus reject codes (``not_a_number``, ``not_finite``); never raises."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        x = values.astype(np.float64, copy=False)
        reject = np.zeros(len(x), dtype=np.uint8)
    else:
        n = len(values)
        x = np.zeros(n, dtype=np.float64)
        reject = np.zeros(n, dtype=np.uint8)
        for i, v in enumerate(values):
            if isinstance(v, Real | np.number):
                try:
                    x[i] = float(v)
                    continue
                except (OverflowError, ValueError, TypeError):
                    pass
            reject[i] = NOT_A_NUMBER
    finite = np.isfinite(x)
    if fastnp.count(finite) < len(x):
        reject[(reject == OK) & ~finite] = NOT_FINITE
    if fastnp.any_true(reject):
        x[reject != OK] = 0.0
    return x, reject


class Engine:
    """Forecasts and scores many streams with one shared model and per-stream state."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        model: Forecaster | Weights | None = None,
        model_version: int = 0,
        reorder_window_s: float | None = 0.5,
    ) -> None:
        self.config = config or EngineConfig()
        cfg = self.config
        self._runner = ModelRunner(model, cfg)  # numpy weights on onnxruntime, or a torch model
        self.model_version = model_version
        # a sample this much older than its stream's newest (and among its last TS_RING) is put in order
        # (late.py), else rejected as out_of_order; None: all late samples are. The daemon sets it.
        self.reorder_window_s = reorder_window_s
        self.stateful = self._runner.stateful
        self.table = StreamTable(self._columns(), cfg.max_streams)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._admission = admission.TokenBucket(float(cfg.new_streams_burst))  # new streams admissible

    # ----------------------------------------------------------------- layout
    def _columns(self) -> dict[str, Column]:
        cfg = self.config
        cols: dict[str, Column] = {
            "count": Column((), np.int64),
            "last_ts": Column((), np.float64, -np.inf),
            "ts_ring": Column((TS_RING,), np.float64, np.nan),
            "fc_mean": Column((), np.float64, np.nan),
            "fc_spread": Column((), np.float64, np.nan),
            "win": Column((cfg.look_back,), np.float32),
            "last_value": Column((), np.float64, np.nan),
            "last_forecast": Column((), np.float64, np.nan),
            "last_score": Column((), np.float64),
            "in_anomaly": Column((), np.bool_),
            "n_flags": Column((), np.int64),
            **scaling.COLUMNS,
            **scoring.COLUMNS,
            **seasonal.columns(cfg.seasonal),
            **selection.columns(cfg.selection),
            **adaptation.columns(cfg.adaptation, cfg.selection),
            **horizon.columns(cfg.horizon),
        }
        if self.stateful:
            shape = (cfg.model.layers, cfg.model.hidden)
            cols["h"] = Column(shape, np.float32)
            cols["c"] = Column(shape, np.float32)
        if cfg.history_len:
            hl = (cfg.history_len,)
            # half precision (5e-4 relative; scaled values within +-clip): 20 MB less at 10k streams; a
            # target is NaN where unknown yet or kept out of training (the step's input was anomalous)
            cols["hist_z"] = Column(hl, np.float16, 0.0, True)
            cols["hist_y"] = Column(hl, np.float16, np.nan, True)
        return cols

    @property
    def model(self) -> Forecaster:
        """The served model as a torch ``Forecaster`` (built on first use when serving from weights)."""
        return self._runner.model

    @property
    def weights(self) -> Weights:
        """The served model's parameters as numpy arrays (no torch needed)."""
        return self._runner.weights

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The per-slot arrays, by column name."""
        return self.table.arrays.data

    @property
    def streams(self) -> list[str]:
        """Names of the streams currently tracked."""
        return list(self.table.ids)

    # ---------------------------------------------------------------- process
    def process(
        self,
        streams: Sequence[str],
        ts: Sequence[float] | np.ndarray,
        values: Sequence[object] | np.ndarray,
        now: float | None = None,
        limit_admission: bool = True,
        max_rounds: int | None = None,
        paths: bool = True,
        round_budget_s: float | None = None,
    ) -> Results:
        """Apply a micro-batch of samples; ``now`` (default: each sample's ts) marks streams seen.
        ``paths=False`` leaves ``Results.path`` empty (the engine still tracks them, for ``view``).

        A stream with k samples in the batch is stepped in k rounds (:mod:`rounds`); ``max_rounds``
        bounds the rounds and ``round_budget_s`` the time of narrow ones after the first (so one
        stream's long array cannot hold the call up): a stream's samples beyond them are left
        unapplied, marked ``deferred``, for the caller to pass again first thing next time.
        ``limit_admission=False`` creates new streams without the admission rate
        (``new_streams_per_s``): for samples that were taken in once already, as a write-ahead log
        replays them, all at one ``now``. A full table still evicts only idle streams."""
        n = len(streams)
        x, reject = coerce_values(values)
        ts = np.asarray(ts, dtype=np.float64)
        finite_ts = np.isfinite(ts)
        if fastnp.count(finite_ts) < n:
            reject[(reject == OK) & ~finite_ts] = BAD_TIMESTAMP
        slots, evicted, created, refused = self._slots_for(streams, reject, ts, now, limit_admission)
        nan_out = np.full((6, n), np.nan)  # one allocation for the six NaN-initialised columns
        out = Results(
            stream=streams,
            ts=ts,
            value=np.where(reject == OK, x, np.nan),
            forecast=nan_out[0],
            spread=nan_out[1],
            residual=nan_out[2],
            score=nan_out[3],
            is_anomaly=np.zeros(n, dtype=bool),
            reason=np.zeros(n, dtype=np.uint8),
            next_forecast=nan_out[4],
            next_spread=nan_out[5],
            reject=reject,
            evicted=evicted,
            created=created,
            refused=refused,
            served=np.zeros(n, dtype=np.uint8),
            next_served=np.zeros(n, dtype=np.uint8),
        )
        if self.config.horizon and paths:
            out.path, out.halfwidth = np.full((2, n, self.config.horizon), np.nan)
        ok = (reject == OK).nonzero()[0]
        rank = occurrence_rank(slots[ok])
        rounds = int(np.maximum.reduce(rank)) + 1 if len(ok) else 0
        order, starts = (ok, [0, len(ok)]) if rounds < 2 else by_round(rank)
        if rounds > 1:
            order = ok[order]  # batch positions, round by round
        s_o, ts_o, x_o = slots[order], ts[order], x[order]
        budget = RoundBudget(max_rounds, round_budget_s)
        with fastnp.ignoring_errors():  # finite extremes (1e308) overflow on the way: results, no warnings
            for r in range(rounds):
                lo, hi = starts[r], starts[r + 1]
                if not budget.allows(r, hi - lo):
                    later = order[lo:]
                    reject[later] = DEFERRED
                    out.value[later] = np.nan
                    break
                self._step(order[lo:hi], s_o[lo:hi], ts_o[lo:hi], x_o[lo:hi], now, out)
                budget.ran(r, hi - lo)
        accepted = fastnp.count(reject == OK)
        self.counters["processed"] += accepted
        self.counters["rejected"] += n - accepted - fastnp.count(reject == DEFERRED)
        self.counters["flagged"] += fastnp.count(out.is_anomaly)
        return out

    def _slots_for(
        self,
        streams: Sequence[str],
        reject: np.ndarray,
        ts: np.ndarray,
        now: float | None,
        limit_admission: bool = True,
    ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
        """Slots of the batch's streams, admitting new ones (:mod:`admission`); the samples of those
        not admitted are rejected (``new_stream_rate``, ``over_capacity``). Returns the slots and the
        evicted, created and refused names."""
        bucket = self._admission if limit_admission else None
        got = admission.admit(self.table, streams, reject == OK, ts, now, bucket, self.config)
        self.counters["evicted"] += len(got.evicted)
        refused_at = ((got.slots < 0) & (reject == OK)).nonzero()[0]
        for i in refused_at.tolist():
            reject[i] = NEW_STREAM_RATE if streams[i] in got.limited else OVER_CAPACITY
        refused = list(dict.fromkeys(streams[i] for i in refused_at.tolist()))
        return got.slots, got.evicted, got.created, refused

    def _check_order(
        self, idx: np.ndarray, s: np.ndarray, ts: np.ndarray, count: np.ndarray, out: Results
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """None when every sample is newer than its stream's last; else the mask of those that are,
        and each late sample's place back from the newest (``late.places``; -1 elsewhere) where the
        reorder window lets it in; marks duplicates and other late ones rejected."""
        found = late.classify(self.arrays, s, ts, count, self.reorder_window_s)
        if found is None:
            return None
        dup, is_late, k = found
        out.reject[idx[dup]] = DUPLICATE
        out.reject[idx[is_late & (k < 0)]] = OUT_OF_ORDER
        return ~(dup | is_late), k

    def _step(
        self, idx: np.ndarray, s: np.ndarray, ts: np.ndarray, x: np.ndarray, now: float | None, out: Results
    ) -> None:
        """One sample for each of the (distinct) slots ``s``: score, scale, step, forecast."""
        cfg, a = self.config, self.arrays
        count = a["count"][s]
        order = self._check_order(idx, s, ts, count, out)
        if order is not None:
            keep, places = order
            fit = places >= 0
            if fit.any():
                self._put_in_order(idx[fit], s[fit], ts[fit], x[fit], places[fit], now, out)
            out.value[idx[~keep]] = np.nan
            idx, s, ts, x, count = idx[keep], s[keep], ts[keep], x[keep], count[keep]
            if not len(idx):
                return
        forecast, spread = a["fc_mean"][s], a["fc_spread"][s]
        residual = x - forecast
        naive = seasonal.expected(a, s, cfg.seasonal)
        s_res, s_spread = (x - naive[0], naive[1]) if naive is not None else (None, None)
        naive_now = naive[0] if naive is not None else None  # this value's seasonal-naive forecast
        scored = scoring.score(a, s, x, residual, spread, count, cfg.scoring, s_res, s_spread)
        center, sc, yz = scaling.observe(a, s, x, cfg.scaling, cfg.scaling.clip)
        z = yz[1]
        self._write_target(s, yz[0], count, a["in_anomaly"][s])  # the previous sample's condition
        self._write_inputs(s, z, ts, count)
        sel = cfg.selection.enabled
        if sel:
            served = adaptation.served(a, s)
        model_residual = selection.model_residual(a, s, x) if sel else residual
        new_period = seasonal.observe(a, s, x, model_residual, count, cfg.seasonal)
        mean, spr = self._forecast(s, z, count + 1)
        next_fc, next_sp = seasonal.blend(a, s, count + 1, center + sc * mean, sc * spr, cfg.seasonal)
        if sel:
            naive = a["se_fc_naive"][s] if "se_fc_naive" in a else None
            next_fc, next_sp, choice = selection.update(a, s, x, next_fc, next_sp, naive, sc, cfg.selection)
            next_fc, next_sp, choice = adaptation.step(a, s, x, naive_now, next_fc, next_sp, choice, sc, cfg)
            out.served[idx] = served
            out.next_served[idx] = choice
        if cfg.horizon:
            sel = cfg.selection
            known = None if new_period else naive_now  # the seasonal-naive value, as the blend saw it
            horizon.update(a, s, x, count, next_fc, sel.ewma_alpha, sel.memory, cfg.interval, known)
            if out.path.shape[0]:
                out.path[idx], out.halfwidth[idx] = horizon.current(a, s, count, next_sp, cfg.interval)
        a["fc_mean"][s] = next_fc
        a["fc_spread"][s] = next_sp
        a["count"][s] = count + 1
        a["last_ts"][s] = ts
        a["last_value"][s] = x
        a["last_forecast"][s] = forecast
        a["last_score"][s] = scored.score
        a["in_anomaly"][s] = scored.condition
        self.table.touch(s, ts if now is None else now)
        out.forecast[idx] = forecast
        out.spread[idx] = spread
        out.residual[idx] = residual
        out.score[idx] = scored.score
        if fastnp.any_true(scored.flag):  # (most rounds flag nothing: the outputs are False and 0 already)
            a["n_flags"][s] += scored.flag
            out.is_anomaly[idx] = scored.flag
            out.reason[idx] = scored.reason
        out.next_forecast[idx] = next_fc
        out.next_spread[idx] = next_sp

    def _put_in_order(
        self,
        idx: np.ndarray,
        s: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        k: np.ndarray,
        now: float | None,
        out: Results,
    ) -> None:
        """Late samples within the reorder window: inserted in time order into their streams' rings
        (not scored), then state and next forecast rebuilt from the window (see :mod:`late`)."""
        cfg, a = self.config, self.arrays
        late.put_in_order(a, cfg, s, ts, x, k)
        self._replay(s)
        self.table.touch(s, ts if now is None else now)
        self.counters["reordered"] += len(s)
        out.score[idx] = 0.0
        out.next_forecast[idx] = a["fc_mean"][s]
        out.next_spread[idx] = a["fc_spread"][s]
        if cfg.selection.enabled:
            out.served[idx] = out.next_served[idx] = adaptation.served(a, s)

    def _write_target(self, s: np.ndarray, y: np.ndarray, count: np.ndarray, excluded: np.ndarray) -> None:
        """The history's target for the previous step: this value scaled as that forecast was (``y``),
        or NaN, out of training, where ``excluded`` (that step's input was anomalous)."""
        hl = self.config.history_len
        if hl:
            hist_y, pos = self.arrays["hist_y"], (count - 1) % hl
            target = np.where(excluded, np.nan, y)
            hist_y[s, pos] = np.where(count > 0, target, hist_y[s, pos])  # a first sample: no previous step

    def _write_inputs(self, s: np.ndarray, z: np.ndarray, ts: np.ndarray, count: np.ndarray) -> None:
        """Push the scaled input into the window and history rings, and ts into the ts ring."""
        a, cfg = self.arrays, self.config
        a["win"][s, count % cfg.look_back] = z
        a["ts_ring"][s, count % TS_RING] = ts
        if cfg.history_len:
            pos = count % cfg.history_len
            a["hist_z"][s, pos] = z
            a["hist_y"][s, pos] = np.nan

    def _forecast(self, s: np.ndarray, z: np.ndarray, new_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled forecast (mean, spread) of the next value for slots ``s`` after input ``z``."""
        if self.stateful:
            # (layers, slots, hidden) views: the gather is the contiguous state the LSTM takes
            h_all, c_all = self.arrays["h"].transpose(1, 0, 2), self.arrays["c"].transpose(1, 0, 2)
            mean, spread, h_all[:, s], c_all[:, s] = self._runner.step(z, h_all[:, s], c_all[:, s])
        else:
            mean, spread = self._runner.window(self.windows(s, new_count))
        return mean.astype(np.float64), spread.astype(np.float64)

    def windows(self, s: np.ndarray, count: np.ndarray | None = None) -> np.ndarray:
        """Each slot's window in time order, zero-padded at the front while it is short."""
        a, lb = self.arrays, self.config.look_back
        count = a["count"][s] if count is None else count
        order = (count[:, None] + np.arange(lb)) % lb
        return np.take_along_axis(a["win"][s], order, axis=1)

    # ------------------------------------------------------------- lifecycle
    def expire(self, now: float) -> list[str]:
        """Drop streams idle longer than ``idle_expiry_s`` before ``now``; returns their names."""
        if self.config.idle_expiry_s is None:
            return []
        gone = self.table.expire(now, self.config.idle_expiry_s)
        self.counters["expired"] += len(gone)
        return gone

    def forget(self, names: Sequence[str]) -> list[str]:
        """Drop the named streams now; returns those that existed."""
        return self.table.remove(
            np.array([self.table.ids[n] for n in names if n in self.table.ids], dtype=np.int64)
        )

    def swap_model(self, model: Forecaster | Weights, version: int | None = None) -> None:
        """Serve with ``model`` (a torch model or its weights) from now on, rebuilding every stream's
        state by replaying its window."""
        self._runner = ModelRunner(model, self.config)
        self.model_version = self.model_version + 1 if version is None else version
        slots = self.table.active_slots()
        for chunk in np.array_split(slots, max(1, len(slots) // 4096 + 1)):
            if len(chunk):
                self._replay(chunk)

    def _replay(self, s: np.ndarray) -> None:
        """Rebuild slots ``s``' state and next forecast from their windows (one call over all of them)."""
        a = self.arrays
        mean, spread, h, c = self._runner.replay(self.windows(s))
        if h is not None:
            a["h"][s] = h.transpose(1, 0, 2)
            a["c"][s] = c.transpose(1, 0, 2)
        center, sc = scaling.stats(a, s, self.config.scaling)
        count = a["count"][s]
        fc, sp = center + sc * mean.astype(np.float64), sc * spread.astype(np.float64)
        fc, sp = seasonal.blend(a, s, count, fc, sp, self.config.seasonal)
        if self.config.selection.enabled:
            naive = a["se_fc_naive"][s] if "se_fc_naive" in a else None
            last = a["last_value"][s]
            fc, sp, _ = selection.serve(a, s, last, fc, sp, naive, sc, self.config.selection)
            fc, sp = adaptation.after_swap(a, s, fc, sp, sc, self.config)
        a["fc_mean"][s] = np.where(count > 0, fc, np.nan)
        a["fc_spread"][s] = np.where(count > 0, sp, np.nan)
        horizon.after_swap(a, s, count, fc)

    def history(self, min_len: int = 2) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each stream's buffered (inputs, targets, excluded) in time order, for fine-tuning; the
        engine marks a step out of training by a NaN target, so ``excluded`` is all False here."""
        hl = self.config.history_len
        if not hl:
            return []
        a = self.arrays
        out = []
        for slot in self.table.active_slots().tolist():
            n = int(min(a["count"][slot], hl))
            if n < min_len:
                continue
            order = (a["count"][slot] - n + np.arange(n)) % hl
            out.append(
                (
                    a["hist_z"][slot, order].astype(np.float32),
                    a["hist_y"][slot, order].astype(np.float32),
                    np.zeros(n, dtype=bool),
                )
            )
        return out

    def view(self) -> StreamView:
        """Every tracked stream's latest outputs, as aligned arrays (what metrics export)."""
        slots = self.table.active_slots()
        a = self.arrays
        return StreamView(
            names=[self.table.names[i] for i in slots.tolist()],
            value=a["last_value"][slots],
            forecast=a["last_forecast"][slots],
            next_forecast=a["fc_mean"][slots],
            score=a["last_score"][slots],
            in_anomaly=a["in_anomaly"][slots],
            anomalies=a["n_flags"][slots],
            last_seen=a["last_seen"][slots],
            samples=a["count"][slots],
            served=adaptation.served(a, slots) if "sel_choice" in a else np.zeros(len(slots), dtype=np.uint8),
            **horizon.view(a, slots, self.config.interval),
        )

    def step_seconds(self, names: Sequence[str]) -> np.ndarray:
        """Each named stream's usual sampling interval (median spacing of its recent timestamps; NaN
        for unknown streams or before a second sample): how far apart a path's steps are."""
        slots = self.table.lookup(names)
        known = slots >= 0
        out = np.full(len(slots), np.nan)
        if known.any():
            out[known] = horizon.spacing(self.arrays["ts_ring"][slots[known]])
        return out

    def copy_model(self) -> Forecaster:
        """A deep copy of the live model as a torch ``Forecaster`` (imports torch)."""
        return self._runner.copy_model()

    def memory(self) -> dict[str, int]:
        """Bytes of per-stream state and of history buffers in the slots handed out so far (the
        rest of the capacity is zero pages a growth added, not resident until a stream takes one)."""
        arrays, slots = self.table.arrays, max(1, len(self.table.names))
        return {
            "state_bytes": arrays.nbytes(False, slots),
            "history_bytes": arrays.nbytes(True, slots),
            "slots": slots,
            "capacity": arrays.capacity,
        }
