"""Daemon settings: defaults < TOML file < environment (``LSTM_STREAM_``, ``__``) < CLI flags.

Build them once in ``main`` with :func:`load_settings` and pass them down; nothing here runs at
import time (the state directory and the credentials directory are read when settings are built).
Every section forbids unknown keys, and every error becomes one :class:`ConfigError` line naming
the dotted key, so the CLI can print it and exit 78 (EX_CONFIG, which systemd will not restart).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from daemon.ingest_settings import IngestSettings
from daemon.nats_settings import NatsSettings
from daemon.plain import read_password
from lstm_stream.config import EngineConfig, OffOnly

if sys.version_info >= (3, 11):
    from tomllib import TOMLDecodeError
else:  # pragma: no cover - pydantic-settings reads TOML with tomli before 3.11
    from tomli import TOMLDecodeError

DEFAULT_CONFIG_PATH = Path("/etc/lstm-stream/config.toml")
CREDENTIAL_NAME = "mqtt_password"  # the unit's LoadCredential=mqtt_password:...
EX_CONFIG = 78  # sysexits.h; the unit has RestartPreventExitStatus=78

# The TOML file of the Settings being built; set by load_settings (a classmethod cannot take it).
_TOML_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "lstm_stream_toml_file", default=None
)


class ConfigError(Exception):
    """An invalid configuration: the message is one line naming the key (or file) and why."""


class _Section(BaseModel):
    """A settings section: unknown keys are errors, values do not change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- validation helpers ---------------------------------------------------------------------


def _text_off(value: Any) -> Any:
    """TOML ``false`` or an empty string (environment) switch a text setting's feature off (None)."""
    if value is True:
        raise ValueError("true is not a value here: give one, or false to switch it off")
    return None if value is False or value == "" else value


TextOff = BeforeValidator(_text_off)  # a text setting whose feature is off when false or ""


def _check_filter(topic_filter: str) -> str:
    """Reject MQTT topic filters a broker would refuse (misplaced ``+``/``#``, empty)."""
    body = topic_filter
    if body.startswith("$share/"):
        parts = body.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2] or "+" in parts[1] or "#" in parts[1]:
            raise ValueError(f"{topic_filter!r}: shared filters are $share/<group>/<filter>")
        body = parts[2]
    if not body or "\0" in body or len(body.encode()) > 65535:
        raise ValueError(f"{topic_filter!r}: not a valid topic filter")
    levels = body.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"{topic_filter!r}: '+' must be a whole level")
    return topic_filter


def _check_publish_topic(topic: str) -> str:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"{topic!r}: a publish topic must be non-empty, without '+' or '#'")
    return topic


def _template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc}") from None


# --- sections --------------------------------------------------------------------------------


class TlsSettings(_Section):
    """TLS towards the broker; files are checked only when TLS is enabled."""

    enabled: bool = False
    ca_file: Path | None = Field(None, description="CA bundle; None = the system store")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client key, if not inside cert_file")
    insecure: bool = Field(False, description="skip certificate/hostname checks (testing only)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and info.data.get("enabled") and not v.is_file():
            raise ValueError(f"no such file: {v}")
        if v is not None and info.field_name == "key_file" and info.data.get("cert_file") is None:
            raise ValueError("key_file needs cert_file")
        return v


class MqttSettings(_Section):
    """Broker connection, subscriptions and the topics the daemon publishes to.

    There is deliberately no ``password`` key (it would end up in unit files, environments and
    command lines): the password is read from ``password_file``, else from the systemd credential
    ``$CREDENTIALS_DIRECTORY/mqtt_password``.
    """

    host: str = Field("localhost", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("lstm-stream", min_length=1, description="fixed: persistent session")
    protocol: Literal["5", "3.1.1"] = "5"
    topics: Annotated[list[str], NoDecode] = Field(
        ["sensors/#"], min_length=1, description="subscription filters"
    )
    qos: int = Field(1, ge=0, le=2)
    keepalive: int = Field(60, ge=0, le=65535, description="seconds; 0 disables")
    session_expiry_s: int = Field(
        3600, ge=0, le=0xFFFFFFFF, description="MQTT 5: broker keeps the session this long"
    )
    clean_start: bool = Field(False, description="False: resume the broker session on connect")
    username: str | None = None
    password_file: Path | None = Field(
        None,
        validate_default=True,
        description="file holding the password; default $CREDENTIALS_DIRECTORY/mqtt_password",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(60, ge=1)
    anomaly_topic: str = "lstm-stream/anomalies"
    forecast_topic: Annotated[str | None, TextOff] = Field(
        None, description="template with {stream}, e.g. lstm-stream/forecast/{stream}; false = off"
    )
    availability_topic: str = "lstm-stream/availability"

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("topics", mode="before")
    @classmethod
    def _topics_from_text(cls, v: Any) -> Any:
        """The environment gives text: a JSON list, or filters separated by commas."""
        if not isinstance(v, str):
            return v
        if v.lstrip().startswith("["):
            try:
                return json.loads(v)
            except ValueError:
                raise ValueError("not a JSON list of topic filters") from None
        return [part.strip() for part in v.split(",")]

    @field_validator("topics")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        return [_check_filter(f) for f in v]

    @field_validator("anomaly_topic", "availability_topic")
    @classmethod
    def _publish(cls, v: str) -> str:
        return _check_publish_topic(v)

    @field_validator("forecast_topic")
    @classmethod
    def _forecast_template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if _template_fields(v) != ["stream"]:
            raise ValueError(f"{v!r}: needs exactly one placeholder, {{stream}}")
        _check_publish_topic(v.replace("{stream}", "s"))
        return v

    @field_validator("password_file")
    @classmethod
    def _password_source(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if not creds or not (Path(creds) / CREDENTIAL_NAME).is_file():
                return None
            v = Path(creds) / CREDENTIAL_NAME
        if info.data.get("username") is not None:
            try:
                v.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                hint = ""
                if os.environ.get("CREDENTIALS_DIRECTORY"):
                    hint = " (under systemd leave it unset: the unit passes it as a credential)"
                raise ValueError(f"cannot read {v}: {why}{hint}") from None
        return v

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff_order(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("reconnect_min_s")
        if low is not None and v < low:
            raise ValueError(f"must be >= reconnect_min_s ({low})")
        return v

    def password(self) -> str | None:
        """Read the password now (see :func:`~daemon.plain.read_password`: a rotated credential is
        picked up at the next reconnect)."""
        return read_password(self.username, self.password_file)


class PayloadSettings(_Section):
    """How MQTT payloads become samples (see ``daemon.ingest.payload``)."""

    value_key: str = Field("value", description="dotted path of the value in a JSON object")
    timestamp_key: Annotated[str | None, TextOff] = Field(
        "ts", description="dotted path; false = always the arrival time"
    )
    max_bytes: int = Field(65536, ge=1)
    multi_field: bool = Field(True, description="objects without value_key: one stream per field")
    stream_name: str = Field(
        "{topic}", description="stream id template: {topic} or topic levels {0}, {1}, ..."
    )
    max_topic_bytes: int = Field(
        256, ge=1, le=65535, description="longer topics are rejected (topic_too_long): names stay small"
    )
    max_fields: int = Field(
        64, ge=1, description="a multi-field object with more numeric fields is rejected (too_many_fields)"
    )
    max_samples: int = Field(
        1000, ge=1, description="a JSON array with more elements is rejected (too_many_samples)"
    )
    max_future_s: Annotated[float | None, OffOnly] = Field(
        300.0, ge=0, description="timestamps further ahead of arrival are rejected (future); false = off"
    )

    @field_validator("value_key", "timestamp_key")
    @classmethod
    def _dotted(cls, v: str | None) -> str | None:
        if v is not None and (not v or "" in v.split(".")):
            raise ValueError(f"{v!r}: expected a dotted path like 'value' or 'sensor.temp'")
        return v

    @field_validator("stream_name")
    @classmethod
    def _stream_template(cls, v: str) -> str:
        fields = _template_fields(v)
        if not fields or any(f != "topic" and not f.isdigit() for f in fields):
            raise ValueError(f"{v!r}: use {{topic}} and/or topic levels {{0}}, {{1}}, ...")
        levels = ["level"] * (1 + max((int(f) for f in fields if f.isdigit()), default=0))
        try:
            v.format(*levels, topic="topic")
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from None
        return v


class HttpSettings(_Section):
    """The Prometheus endpoint."""

    bind: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9464, ge=0, le=65535, description="0 = any free port (tests)")
    per_stream: Literal["all", "anomalous", "none"] = "all"
    exposition: Literal["process", "thread"] = Field(
        "process",
        description="render per-stream series in a child process (own GIL) or in the daemon's HTTP thread",
    )
    horizons: list[Annotated[int, Field(ge=1)]] = Field(
        [12], description="steps of the forecast path exported per stream (3 series each); [] = none"
    )


def _default_state_directory() -> Path:
    """systemd's StateDirectory= (first entry of ``$STATE_DIRECTORY``), else ``./state``."""
    env = os.environ.get("STATE_DIRECTORY", "")
    return Path(env.split(":")[0]) if env else Path("state")


class StateSettings(_Section):
    """Checkpoints."""

    directory: Path = Field(default_factory=_default_state_directory)
    checkpoint_interval_s: float = Field(300.0, gt=0)
    keep: int = Field(3, ge=1, description="checkpoints kept on disk")
    wal: bool = Field(
        True,
        description="write-ahead log: acknowledge a QoS 1 message only once its samples are fsynced "
        "in the log (needs ingest.receiver = process)",
    )
    wal_sync_ms: float = Field(
        0.0, ge=0, le=10_000, description="group commit window of the log; 0 = ingest.batch_ms"
    )


class FinetuneSettings(_Section):
    """Background fine-tuning."""

    enabled: bool = True
    interval_s: float = Field(3600.0, gt=0)
    min_new_samples: int = Field(
        0,
        ge=0,
        description="new samples (all streams) needed since the last run; a run also waits until the new "
        "samples fill the held-out share (engine.train.val_fraction) of the buffered history",
    )
    mode: Literal["process", "thread"] = "process"
    nice: int = Field(10, ge=0, le=19, description="added niceness (raising needs no privilege)")


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery (off by default; see ``daemon.outputs.discovery``).

    Each stream gets a forecast ``sensor`` and an anomaly ``binary_sensor`` under one device, with
    retained configs on ``<prefix>/<component>/<node_id>/<object_id>/config`` and states on
    ``<state_prefix>/<object_id>/forecast`` and ``.../anomaly``.
    """

    enabled: bool = Field(False, description="announce streams to Home Assistant")
    prefix: str = Field(
        "homeassistant", description="discovery prefix; Home Assistant's birth topic is <prefix>/status"
    )
    node_id: str = Field(
        "lstm_stream", pattern=r"^[A-Za-z0-9_-]+$", description="the device id in discovery topics"
    )
    state_prefix: str = Field(
        "lstm-stream/stream", description="states on <state_prefix>/<object_id>/forecast and /anomaly"
    )
    max_streams: int = Field(200, ge=0, description="streams announced at most (two entities each)")
    state_interval_s: float = Field(
        10.0, ge=0, description="a stream's forecast state is published at most this often"
    )

    @field_validator("prefix", "state_prefix")
    @classmethod
    def _topic_base(cls, v: str) -> str:
        if v.endswith("/") or v.startswith("/"):
            raise ValueError(f"{v!r}: no leading or trailing '/'")
        return _check_publish_topic(v)


class LogSettings(_Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    rate_limit_s: float = Field(10.0, ge=0, description="a repeated condition is logged this often")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class Settings(BaseSettings):
    """All daemon settings; ``engine`` is the engine's own :class:`EngineConfig`."""

    model_config = SettingsConfigDict(env_prefix="LSTM_STREAM_", env_nested_delimiter="__", extra="forbid")

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    payload: PayloadSettings = Field(default_factory=PayloadSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    model_path: Path | None = Field(None, description="checkpoint to start from")

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.exists():
            raise ValueError(f"no such file or directory: {v}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """First wins: init kwargs (CLI flags), environment, the TOML file; then defaults.

        No dotenv and no secrets dir: secrets come from ``mqtt.password_file``. Built directly,
        ``Settings()`` reads no file; :func:`load_settings` names the file.
        """
        toml_file = _TOML_FILE.get()
        if toml_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file)


# --- loading and reporting -------------------------------------------------------------------


def load_settings(
    config_path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings, or raise :class:`ConfigError` with one line naming the key.

    ``config_path`` None means the default file, which may be missing; a named file must exist.
    ``overrides`` (CLI flags) win over everything; keys may be dotted (``"mqtt.host"``) or nested
    dicts, and None values are dropped (an argparse flag that was not given).
    """
    explicit = config_path is not None
    path = Path(config_path) if explicit else DEFAULT_CONFIG_PATH
    toml_file: Path | None = None
    if path.is_file():
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"config error: {path}: cannot read: {exc.strerror}") from exc
        toml_file = path
    elif explicit:
        what = "not a regular file" if path.exists() else "no such file"
        raise ConfigError(f"config error: {path}: {what}")

    kwargs = _nest(overrides or {})
    token = _TOML_FILE.set(toml_file)
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    except TOMLDecodeError as exc:
        raise ConfigError(_format_toml_error(path, exc)) from exc
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file first
        raise ConfigError(f"config error: {path}: not UTF-8 text (byte {exc.start})") from exc
    except SettingsError as exc:  # e.g. an environment variable that is not valid JSON
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"config error: {_one_line(f'{exc}{cause}')}") from exc
    finally:
        _TOML_FILE.reset(token)


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mqtt.host": "h", "engine": {"look_back": 8}}`` -> nested dicts, None values dropped."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config error: {key}: conflicts with another override")
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(_nest(value))
        elif isinstance(value, Mapping):
            node[leaf] = _nest(value)
        else:
            node[leaf] = value
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(value: Any, limit: int = 60) -> str:
    text = _one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(exc: ValidationError) -> str:
    """One line: ``config error: <dotted.key>: <problem> (got <input>)`` plus ``+N more``."""
    errors = exc.errors(include_url=False)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return f"config error: {_one_line(str(exc))}"
    first = errors[0]
    key = _dotted(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
        if first["loc"][-1] == "password":
            msg += " (no plain passwords: use mqtt.password_file or the mqtt_password credential)"
    line = f"config error: {key}: {_one_line(msg)}"
    given = first.get("input")
    quoted = kind == "value_error" and str(given) in msg  # the message shows it already
    structured = isinstance(given, (dict, list))  # a whole section: the message says enough
    if kind not in ("missing", "extra_forbidden") and not quoted and not structured:
        line += f" (got {_short(first['input'])})"
    if len(errors) > 1:
        others = ", ".join(_dotted(e["loc"]) for e in errors[1:4])
        more = "..." if len(errors) > 4 else ""
        line += f" (+{len(errors) - 1} more: {others}{more})"
    return line


def _format_toml_error(path: Path, exc: TOMLDecodeError) -> str:
    msg = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if match:
        line, col = match.groups()
        return f"config error: {path}:{line}: invalid TOML: {msg[: match.start()]} (column {col})"
    return f"config error: {path}: invalid TOML: {_one_line(msg)}"


_SECRET_NAME = re.compile(r"password|passwd|secret|token", re.IGNORECASE)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data for display, with secrets masked.

    Passwords live only in files, so the dump shows ``mqtt.password_file`` (the path actually
    used, which may be the systemd credential) and never its content; any other key that looks
    like a secret and is not a ``*_file`` path is replaced by ``"***"``.
    """
    data = settings.model_dump(mode="json")
    _mask(data)
    return data


def _mask(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if _SECRET_NAME.search(key) and not key.endswith("_file") and value is not None:
                node[key] = "***"
            else:
                _mask(value)
    elif isinstance(node, list):
        for item in node:
            _mask(item)
