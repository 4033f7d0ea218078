"""Late samples put in order: a sample older than its stream's newest, by at most the reorder window and
among its last ``TS_RING`` samples, is inserted where it belongs in the stream's rings instead of
being rejected as ``out_of_order``.

Nothing waits for stragglers (no latency is added to samples that arrive in order): the late one is
written into each count-indexed ring at its place in time (the newer entries move up one, the oldest
leaves as with any new sample), the scaler takes its value, and the caller rebuilds the LSTM state and
the next forecast by replaying the window, as after a model swap. A late sample is not scored: the
forecast it would have been scored against was never made.
"""

from __future__ import annotations

import numpy as np

from . import fastnp, horizon, scaling
from .config import EngineConfig

F32_MAX = float(np.finfo(np.float32).max)


def put_in_order(
    a: dict, cfg: EngineConfig, s: np.ndarray, ts: np.ndarray, x: np.ndarray, k: np.ndarray
) -> None:
    """Apply late samples (distinct slots ``s``, ``k`` places back): the scaler takes each value and
    every count-indexed ring gets it at its place; the caller rebuilds state from the window."""
    count = a["count"][s]
    scaling.update(a, s, x, cfg.scaling)
    center, sc = scaling.stats(a, s, cfg.scaling)
    z = np.clip(scaling.scale(x, center, sc), -cfg.scaling.clip, cfg.scaling.clip).astype(np.float32)
    insert(a["ts_ring"], s, count, k, ts)
    insert(a["win"], s, count, k, z)
    if "se_ring" in a:
        insert(a["se_ring"], s, count, k, np.clip(x, -F32_MAX, F32_MAX))
    if "hz_origin" in a:  # the forecast paths made after each sample: none after this one
        insert(a["hz_origin"], s, count, k, np.full((len(s), *a["hz_origin"].shape[2:]), np.nan))
        insert(a["hz_pick"], s, count, k, np.full((len(s), *a["hz_pick"].shape[2:]), horizon.FLAT))
    if cfg.history_len:
        insert(a["hist_z"], s, count, k, z)
        insert(a["hist_y"], s, count, k, np.full(len(s), np.nan, np.float32))
        retarget(a["hist_y"], a["hist_z"], s, count, k)
    a["count"][s] = count + 1


def classify(
    a: dict, s: np.ndarray, ts: np.ndarray, count: np.ndarray, window: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """None when each sample is newer than its stream's last (the usual case, in few operations);
    else masks of duplicates (the newest ``ts`` again, or one in the ts ring) and of other late
    samples, and each late one's place back from the newest (:func:`places`) where it is at most
    ``window`` older than the newest (-1 elsewhere: out of order)."""
    seen = count > 0
    last = a["last_ts"][s]
    if not fastnp.any_true(seen & (ts <= last)):
        return None
    dup = seen & (ts == last)
    is_late = seen & (ts < last)
    if is_late.any():
        dup |= is_late & (a["ts_ring"][s] == ts[:, None]).any(axis=1)
    is_late &= ~dup
    k = np.full(len(s), -1)
    if window and is_late.any():
        k = np.where(is_late & (last - ts <= window), places(a["ts_ring"][s], count, ts), -1)
    return dup, is_late, k


def places(ts_ring: np.ndarray, count: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """How many of each stream's recent samples are newer than ``ts`` (``k``; the late sample goes
    ``k`` places before the newest end); -1 where the ring cannot tell (all it holds is newer)."""
    newer = np.count_nonzero(ts_ring > ts[:, None], axis=1)  # NaN (unfilled) compares False
    held = np.minimum(count, ts_ring.shape[1])
    return np.where(newer < held, newer, np.where(count < ts_ring.shape[1], newer, -1))


def insert(ring: np.ndarray, slots: np.ndarray, count: np.ndarray, k: np.ndarray, value: np.ndarray) -> None:
    """Insert ``value`` ``k`` places before the newest end of each slot's count-indexed ring (position
    ``count % L`` is the next write); a sample older than all the ring holds is left out of it."""
    length = ring.shape[1]
    for slot, n, places_back, v in zip(slots.tolist(), count.tolist(), k.tolist(), value, strict=True):
        if places_back >= length or places_back > n:
            continue  # older than everything this ring keeps
        src = (n - places_back + np.arange(places_back)) % length
        row = ring[slot]
        row[(src + 1) % length] = row[src].copy()
        row[(n - places_back) % length] = v


def retarget(
    hist_y: np.ndarray, hist_z: np.ndarray, slots: np.ndarray, count: np.ndarray, k: np.ndarray
) -> None:
    """Training targets around inserted samples (``count`` as before the insertion, ``k`` as given to
    :func:`insert`): the late sample's target is the next input, and it is its predecessor's target
    unless the predecessor's step is out of training (a NaN target there: its input was anomalous)."""
    length = hist_z.shape[1]
    for slot, n, places_back in zip(slots.tolist(), count.tolist(), k.tolist(), strict=True):
        if places_back >= length:
            continue
        at = (n - places_back) % length
        hist_y[slot, at] = hist_z[slot, (at + 1) % length]
        before = (at - 1) % length
        if places_back + 1 < length and n - places_back >= 1 and not np.isnan(hist_y[slot, before]):
            hist_y[slot, before] = hist_z[slot, at]
