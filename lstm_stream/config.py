"""Engine configuration: every tunable of the forecaster, per-stream state, scaling and scoring.

Plain pydantic models (no environment, no files): the daemon nests :class:`EngineConfig` inside its
settings, so a bad value is reported with the full dotted key (``engine.scoring.threshold``).
Defaults are the product's defaults, tuned on the NAB development subset (see ``docs/tuning.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_OFF_WORDS = ("false", "off", "none")
# export --quantize: the int8 graph's test MAE may grow by at most this much (relative); here, not in
# export.py, so the CLI's help reads it without importing torch
MAX_MAE_INCREASE = 0.20


def switch_off(value: Any, zero_is_off: bool = False) -> Any:
    """``false`` (TOML), ``"false"``/``"off"``/``"none"`` (environment), and ``0`` where zero has no
    other meaning, become None: the setting's feature is off. TOML has no null, so without this a
    feature that is on by default could not be switched off from a file. ``true`` is refused."""
    if value is True:
        raise ValueError("true is not a value here: give one, or false to switch it off")
    if value is False or value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in _OFF_WORDS:
        return None
    if zero_is_off and isinstance(value, (int, float)) and value == 0:
        return None
    if zero_is_off and isinstance(value, str) and value.strip() in ("0", "0.0"):
        return None
    return value


# A number whose feature is off when the setting is false or 0 (None in Python).
OffOrZero = BeforeValidator(lambda v: switch_off(v, zero_is_off=True))
# A number whose 0 means something, so only false switches the feature off.
OffOnly = BeforeValidator(switch_off)


class _Strict(BaseModel):
    """Unknown keys are errors, so a typo in a config file never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Architecture of the forecaster network."""

    arch: Literal["lstm", "bilstm", "attention"] = "lstm"
    hidden: int = Field(64, ge=8, le=512, description="LSTM units per layer (32-256 advised)")
    layers: int = Field(2, ge=1, le=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout between LSTM layers")
    residual: bool | None = Field(
        None, description="residual connections between layers; None = only when layers > 3"
    )
    head: Literal["gaussian", "mse"] = Field(
        "gaussian", description="gaussian: mean and spread (NLL); mse: point forecast"
    )
    predict_delta: bool = Field(
        True, description="forecast = last input + predicted change (never worse than lag)"
    )

    @property
    def use_residual(self) -> bool:
        """Whether layers are joined by residual connections."""
        return self.layers > 3 if self.residual is None else self.residual


class ScalerConfig(_Strict):
    """Online robust per-stream scaling (winsorised exponentially weighted location and spread)."""

    memory: int = Field(2000, ge=10, description="samples of memory once warm (EW weight 1/memory)")
    winsor: float = Field(4.0, gt=0, description="updates use values clipped to center +- winsor * scale")
    min_scale: float = Field(1e-6, gt=0, description="floor on the scale, relative to |center|+1")
    clip: float = Field(8.0, gt=0, description="scaled inputs to the network are clipped to +-clip")


class ScoringConfig(_Strict):
    """Residual -> likelihood score in [0, 1] -> flag; plus range and flat-line rules."""

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="one global flag threshold")
    short_window: int = Field(10, ge=1, description="samples averaged into the recent error (EW span)")
    mid_window: Annotated[int | None, OffOrZero] = Field(
        None, ge=2, description="a second, longer average for sustained error (false or 0 = off)"
    )
    seasonal_window: Annotated[int | None, OffOrZero] = Field(
        10, ge=1, description="EW span of the error vs the value one period ago (false or 0 = off)"
    )
    long_winsor: Annotated[float | None, OffOrZero] = Field(
        None, gt=0, description="long-run fit moves at most this many spreads per sample (false or 0 = off)"
    )
    spread_floor: Annotated[float | None, OffOrZero] = Field(
        0.1, gt=0, description="the one-step spread is at least this many typical steps (false or 0 = off)"
    )
    level_window: Annotated[int | None, OffOrZero] = Field(
        30, ge=1, description="EW span of the value's level vs its long-run history (false or 0 = off)"
    )
    level_floor: float = Field(
        1.0, ge=0.0, description="the level's long-run spread: at least this many times white noise's"
    )
    long_memory: int = Field(1000, ge=10, description="samples of memory of the long-run error distribution")
    long_periods: Annotated[float | None, OffOrZero] = Field(
        7.0,
        gt=0,
        description="on a stream with a period, the long-run error distribution remembers at least this "
        "many periods (its errors vary over the day and week); false or 0 = long_memory alone",
    )
    warmup: int = Field(200, ge=0, description="no flags during a stream's first samples")
    suppress: int = Field(100, ge=0, description="samples after a flag with no new flag")
    likelihood_suppress: Annotated[int | None, OffOrZero] = Field(
        200,
        ge=0,
        description="samples after a flag with no new likelihood or seasonal flag: an event's aftermath "
        "(rules keep `suppress`; false or 0 = `suppress` for all)",
    )
    rule_onset: bool = Field(
        True,
        description="a rule's onset is a new event even while a likelihood condition goes on (one "
        "suppressed by `likelihood_suppress` would otherwise hide it)",
    )
    spike_once: bool = Field(
        True,
        description="a lone outlier counts once: the error is the smaller of the value against this "
        "forecast and the one before (a forecast that copied the outlier makes its return a second surprise)",
    )
    record_pass: Annotated[float | None, OffOrZero] = Field(
        3.0,
        ge=0.0,
        description="a new record this many spreads from the forecast flags even within the suppression "
        "(false or 0 = off)",
    )
    range_margin: Annotated[float | None, OffOnly] = Field(
        0.01, ge=0.0, description="flag values beyond the seen range by this fraction of it (false = off)"
    )
    range_steps: Annotated[float | None, OffOrZero] = Field(
        0.5, ge=0.0, description="a record must also exceed the old one by this many typical steps (0 = off)"
    )
    range_warmup: int = Field(
        300, ge=0, description="samples a stream must have seen before the range rule may flag"
    )
    flatline_window: int = Field(
        24, ge=3, description="a stuck run must last this many samples (and twice any before)"
    )
    flatline_ratio: Annotated[float | None, OffOrZero] = Field(
        0.01, ge=0.0, description="flag when recent spread < ratio * long-run spread (false or 0 = off)"
    )
    regime_after: Annotated[int | None, OffOrZero] = Field(
        None, ge=1, description="a condition lasting this many samples resets statistics (false or 0 = never)"
    )


class SeasonalConfig(_Strict):
    """Blend of the LSTM forecast with the values of past periods (0 = off)."""

    blend: float = Field(0.3, ge=0.0, le=1.0, description="weight of the seasonal-naive value")
    learn: int = Field(
        256, ge=16, description="samples before a first guess of the period (checked at each doubling)"
    )
    window: int = Field(1024, ge=16, description="ring of raw values; periods up to a third of it")
    redetect: int = Field(8000, ge=16, description="samples between later period detections")
    periods: int = Field(
        3,
        ge=1,
        description="the seasonal-naive value is the median of the values 1..periods periods back (as many "
        "as the ring holds): one odd day in the past does not echo; 1: the value one period ago",
    )

    @model_validator(mode="after")
    def _learn_fits(self) -> SeasonalConfig:
        if self.learn > self.window:
            raise ValueError(f"learn={self.learn} must not exceed window={self.window}")
        return self


class SelectionConfig(_Strict):
    """Per stream, serve the forecast (model, persistence, EWMA, seasonal naive, damped model or their
    blend) with the lowest running error."""

    enabled: bool = Field(True, description="false: always serve the model's forecast")
    memory: int = Field(200, ge=2, description="samples of memory of each candidate's running error")
    margin: float = Field(
        0.05, ge=0.0, lt=1.0, description="switch only to a candidate with this fraction less error"
    )
    ewma_alpha: float = Field(0.3, gt=0.0, le=1.0, description="weight of the newest value in the EWMA")
    confidence: float = Field(
        1.645,
        ge=0.0,
        description="switch to a candidate (or the per-stream correction) only when its paired advantage in "
        "absolute error over the served one is this many standard errors above zero (1.645: one-sided "
        "5 %); a switch back to persistence needs only the margin",
    )


class AdaptationConfig(_Strict):
    """Per stream, a linear correction of the served forecast fitted online (needs the selection)."""

    enabled: bool = Field(True, description="false: serve the selection's forecast uncorrected")
    memory: int = Field(500, ge=10, description="samples of memory of the least-squares fit")
    ridge: float = Field(1.0, ge=0.0, description="pull of the weights towards no correction (in samples)")
    huber: float = Field(1.5, gt=0.0, description="residuals beyond this many typical ones weigh less")
    clip: float = Field(
        8.0, gt=0.0, description="features and targets, in typical errors of the served forecast, are clipped"
    )


class TrainConfig(_Strict):
    """Fitting and fine-tuning."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seq_len: int = Field(64, ge=2, description="training sequence length (truncated BPTT)")
    burn_in: int = Field(8, ge=0, description="first steps of each sequence not in the loss")
    stride: int = Field(16, ge=1, description="step between training sequences")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="most recent part held out")
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    lr_patience: int = Field(2, ge=1, description="ReduceLROnPlateau patience")
    clip_grad: float = Field(1.0, gt=0)
    seed: int = 0
    min_improvement: float = Field(
        0.1, ge=0, description="fine-tune: candidate must beat live loss by this fraction"
    )


class EngineConfig(_Strict):
    """Everything the engine needs; the daemon nests this under ``[engine]``."""

    model: ModelConfig = ModelConfig()
    look_back: int = Field(32, ge=2, le=4096, description="rolling window per stream")
    mode: Literal["stateful", "window"] = Field(
        "stateful", description="stateful: one step per sample; window: re-run the look-back"
    )
    max_streams: int = Field(10000, ge=1)
    idle_expiry_s: Annotated[float | None, OffOrZero] = Field(
        86400.0, gt=0, description="streams unseen this long are dropped; false or 0 = never"
    )
    history_len: int = Field(512, ge=0, description="per-stream buffer for fine-tuning")
    evict_idle_s: Annotated[float | None, OffOrZero] = Field(
        3600.0,
        gt=0,
        description="a full table evicts only streams idle this long (else over_capacity); false or 0 = LRU",
    )
    new_streams_per_s: Annotated[float | None, OffOrZero] = Field(
        100.0, gt=0, description="new streams admitted per second (else new_stream_rate); false or 0 = any"
    )
    new_streams_burst: int = Field(1000, ge=1, description="new streams admitted at once at full rate budget")
    scaling: ScalerConfig = ScalerConfig()
    scoring: ScoringConfig = ScoringConfig()
    seasonal: SeasonalConfig = SeasonalConfig()
    selection: SelectionConfig = SelectionConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    train: TrainConfig = TrainConfig()
    torch_threads: int = Field(1, ge=1, description="torch (and onnxruntime) threads in the serving path")
    runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        "auto",
        description="what runs the stateful LSTM step: onnxruntime (about 2x faster at 10k streams, 3x at "
        "a few; lstm_stream/onnx_step.py), torch, or auto = onnxruntime where installed",
    )
    horizon: Annotated[int | None, OffOrZero] = Field(
        12, ge=1, le=256, description="steps of the forecast path made after each sample; false or 0 = off"
    )
    interval: float = Field(0.8, gt=0.0, lt=1.0, description="coverage of the central interval of each step")

    @model_validator(mode="after")
    def _window_only_archs(self) -> EngineConfig:
        if self.model.arch != "lstm" and self.mode == "stateful":
            raise ValueError(f"model.arch={self.model.arch!r} runs over a window: set mode='window'")
        return self
