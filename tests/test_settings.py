"""Settings: precedence, nested environment, one-line errors, passwords from files only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from daemon import settings as settings_mod
from daemon.settings import ConfigError, Settings, load_settings, masked_dump
from lstm_stream.config import ScoringConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LSTM_STREAM_* / systemd variables from the outside, no real /etc file."""
    for name in list(os.environ):
        if name.upper().startswith("LSTM_STREAM_"):
            monkeypatch.delenv(name)
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_mod, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "config.toml")
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message.startswith("config error: ")
    return message


# --- defaults and precedence -------------------------------------------------------------------


def test_defaults_without_any_file() -> None:
    s = load_settings(None, {})
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.protocol, s.mqtt.qos) == ("localhost", 1883, "5", 1)
    assert s.mqtt.topics == ["sensors/#"] and s.mqtt.clean_start is False
    assert s.mqtt.client_id == "lstm-stream" and s.mqtt.password() is None
    assert s.mqtt.anomaly_topic == "lstm-stream/anomalies" and s.mqtt.forecast_topic is None
    assert (s.payload.value_key, s.payload.timestamp_key, s.payload.max_bytes) == (
        "value",
        "ts",
        65536,
    )
    assert (s.ingest.queue_size, s.ingest.batch_max, s.ingest.batch_ms) == (100_000, 4096, 10)
    assert (s.http.bind, s.http.port, s.http.per_stream) == ("127.0.0.1", 9464, "all")
    assert s.state.directory == Path("state") and s.state.keep == 3
    assert s.finetune.mode == "process" and s.log.level == "INFO"
    assert s.engine.scoring.threshold == 0.5 and s.model_path is None


def test_precedence_default_toml_env_init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = write(
        tmp_path / "config.toml",
        """
        [mqtt]
        host = "from-toml"
        port = 1001
        [http]
        port = 1002
        bind = "0.0.0.0"
        [engine]
        look_back = 40
        [engine.scoring]
        threshold = 0.6
        """,
    )
    monkeypatch.setenv("LSTM_STREAM_MQTT__PORT", "2001")
    monkeypatch.setenv("LSTM_STREAM_HTTP__PORT", "2002")
    s = load_settings(toml, {"http.port": 3002})
    assert s.mqtt.host == "from-toml"  # toml over default
    assert s.mqtt.port == 2001  # env over toml
    assert s.http.port == 3002  # init kwargs (CLI) over env
    assert s.http.bind == "0.0.0.0" and s.http.per_stream == "all"  # sections merge, not replace
    assert s.engine.look_back == 40 and s.engine.scoring.threshold == 0.6
    assert s.engine.scoring.warmup == ScoringConfig().warmup and s.mqtt.qos == 1  # untouched defaults survive


def test_nested_env_reaches_engine_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", "[engine.scoring]\nthreshold = 0.6\nwarmup = 7\n")
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING__THRESHOLD", "0.7")
    monkeypatch.setenv("LSTM_STREAM_ENGINE__MODEL__HIDDEN", "32")
    s = load_settings(toml, {})
    assert s.engine.scoring.threshold == 0.7 and s.engine.scoring.warmup == 7
    assert s.engine.model.hidden == 32


def test_overrides_dotted_or_nested_and_none_dropped() -> None:
    s = load_settings(
        None,
        {
            "mqtt.host": "cli",
            "mqtt": {"port": 1884},
            "engine.scoring.threshold": 0.9,
            "http.port": None,
        },
    )
    assert (s.mqtt.host, s.mqtt.port, s.engine.scoring.threshold, s.http.port) == (
        "cli",
        1884,
        0.9,
        9464,
    )


def test_env_topics_as_json_or_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_STREAM_MQTT__TOPICS", '["a/#", "b/+/c"]')
    assert load_settings(None, {}).mqtt.topics == ["a/#", "b/+/c"]
    monkeypatch.setenv("LSTM_STREAM_MQTT__TOPICS", "plant/#, zigbee2mqtt/+")
    assert load_settings(None, {}).mqtt.topics == ["plant/#", "zigbee2mqtt/+"]


def test_toml_protocol_number_and_level_case(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", '[mqtt]\nprotocol = 5\n[log]\nlevel = "debug"\n')
    s = load_settings(toml, {})
    assert s.mqtt.protocol == "5" and s.log.level == "DEBUG"
    assert load_settings(None, {"mqtt.protocol": "3.1.1"}).mqtt.protocol == "3.1.1"


def test_state_directory_read_at_run_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/one:{tmp_path}/two")
    assert load_settings(None, {}).state.directory == tmp_path / "one"
    monkeypatch.setenv("LSTM_STREAM_STATE__DIRECTORY", str(tmp_path / "env"))
    assert load_settings(None, {}).state.directory == tmp_path / "env"


def test_settings_built_directly_read_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_mod, "DEFAULT_CONFIG_PATH", write(tmp_path / "d.toml", "x = 1\n"))
    assert Settings().mqtt.port == 1883  # only load_settings reads the (default) file
    assert "config error: x: unknown key" == config_error(None, {})


# --- errors ------------------------------------------------------------------------------------


def test_bad_value_in_toml_names_the_dotted_key(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", "[engine.scoring]\nthreshold = 3\n")
    assert config_error(toml, {}) == (
        "config error: engine.scoring.threshold: Input should be less than or equal to 1 (got 3)"
    )


def test_bad_value_in_env_names_the_dotted_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING__THRESHOLD", "3")
    assert config_error(None, {}).startswith(
        "config error: engine.scoring.threshold: Input should be less than or equal to 1"
    )
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING__THRESHOLD", "high")
    assert "engine.scoring.threshold: Input should be a valid number" in config_error(None, {})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"mqtt.qos": 3},
            "config error: mqtt.qos: Input should be less than or equal to 2 (got 3)",
        ),
        ({"mqtt.protocol": "4"}, "config error: mqtt.protocol: Input should be '5' or '3.1.1'"),
        ({"mqtt.topics": ["a/#/b"]}, "config error: mqtt.topics: 'a/#/b': '#' must be the whole"),
        ({"mqtt.topics": []}, "config error: mqtt.topics: List should have at least 1 item"),
        ({"mqtt.anomaly_topic": "x/#"}, "config error: mqtt.anomaly_topic: 'x/#': a publish"),
        ({"mqtt.forecast_topic": "f/x"}, "config error: mqtt.forecast_topic: 'f/x': needs exactly"),
        (
            {"mqtt.reconnect_min_s": 9, "mqtt.reconnect_max_s": 5},
            "config error: mqtt.reconnect_max_s",
        ),
        ({"http.per_stream": "some"}, "config error: http.per_stream: Input should be 'all',"),
        ({"payload.stream_name": "fixed"}, "config error: payload.stream_name: 'fixed': use"),
        ({"payload.value_key": "a..b"}, "config error: payload.value_key: 'a..b': expected"),
        ({"finetune.mode": "gpu"}, "config error: finetune.mode: Input should be 'process'"),
        ({"model_path": "/nonexistent/ckpt"}, "config error: model_path: no such file"),
        ({"engine.model.arch": "bilstm"}, "config error: engine: model.arch='bilstm' runs over"),
        (
            {"mqtt.tls.enabled": True, "mqtt.tls.ca_file": "/nonexistent.pem"},
            "config error: mqtt.tls.ca_file: no such file: /nonexistent.pem",
        ),
    ],
)
def test_invalid_values_are_one_line_naming_the_key(overrides: dict, expected: str) -> None:
    assert config_error(None, overrides).startswith(expected)


def test_unknown_keys_are_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config_error(write(tmp_path / "a.toml", "[mqtt]\nhots = 'x'\n"), {}) == (
        "config error: mqtt.hots: unknown key"
    )
    assert config_error(write(tmp_path / "b.toml", "[mqttt]\nhost = 'x'\n"), {}) == (
        "config error: mqttt: unknown key"
    )
    assert config_error(None, {"engine.scoring.treshold": 0.5}) == (
        "config error: engine.scoring.treshold: unknown key"
    )
    monkeypatch.setenv("LSTM_STREAM_PAYLOAD__VALUEKEY", "v")
    assert config_error(None, {}) == "config error: payload.valuekey: unknown key"


def test_plain_password_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(None, {"mqtt.password": "hunter2"})
    assert message.startswith("config error: mqtt.password: unknown key (no plain passwords")
    assert "hunter2" not in message
    monkeypatch.setenv("LSTM_STREAM_MQTT__PASSWORD", "hunter2")
    assert "hunter2" not in config_error(None, {})


def test_several_errors_mention_how_many_more(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", "[mqtt]\nport = 0\nqos = 9\n[http]\nport = -1\n")
    assert config_error(toml, {}) == (
        "config error: mqtt.port: Input should be greater than or equal to 1 (got 0)"
        " (+2 more: mqtt.qos, http.port)"
    )


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    toml = write(tmp_path / "c.toml", '[mqtt]\nhost = "ok"\nport = \n')
    message = config_error(toml, {})
    assert message.startswith(f"config error: {toml}:3: invalid TOML: ")
    latin1 = tmp_path / "l.toml"
    latin1.write_bytes(b'[mqtt]\nhost = "caf\xe9"\n')
    assert config_error(latin1, {}) == f"config error: {latin1}: not UTF-8 text (byte 18)"


def test_missing_explicit_file_is_an_error_missing_default_is_not(tmp_path: Path) -> None:
    assert config_error(tmp_path / "nope.toml", {}) == (
        f"config error: {tmp_path / 'nope.toml'}: no such file"
    )
    assert config_error(tmp_path, {}) == f"config error: {tmp_path}: not a regular file"
    assert load_settings(None, {}).mqtt.port == 1883


def test_bad_json_in_env_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING", "{not json")
    assert 'field "engine"' in config_error(None, {})


# --- passwords ---------------------------------------------------------------------------------


def test_password_from_file_and_masked_dump_hides_it(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", "s3cret-Pa55\n")
    s = load_settings(None, {"mqtt.username": "daemon", "mqtt.password_file": str(pw)})
    assert s.mqtt.password() == "s3cret-Pa55"
    dump = masked_dump(s)
    assert dump["mqtt"]["password_file"] == str(pw) and dump["mqtt"]["username"] == "daemon"
    text = json.dumps(dump)
    assert "s3cret" not in text and "s3cret" not in repr(s) and "s3cret" not in str(s)
    assert Settings(**dump) == s  # the dump is plain data that loads back


def test_password_from_credentials_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "mqtt_password", "from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(None, {"mqtt.username": "daemon"})
    assert s.mqtt.password_file == creds / "mqtt_password"
    assert s.mqtt.password() == "from-systemd"
    assert "from-systemd" not in json.dumps(masked_dump(s))
    explicit = write(tmp_path / "pw", "explicit")
    s = load_settings(None, {"mqtt.username": "daemon", "mqtt.password_file": str(explicit)})
    assert s.mqtt.password() == "explicit"  # an explicit file wins over the credential


def test_empty_credential_means_no_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "mqtt_password", "\n")  # the unit's SetCredential= fallback
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings(None, {"mqtt.username": "u"}).mqtt.password() is None


def test_unreadable_password_file_is_a_config_error_with_username(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    message = config_error(None, {"mqtt.username": "u", "mqtt.password_file": str(missing)})
    assert message.startswith(f"config error: mqtt.password_file: cannot read {missing}")
    message = config_error(None, {"mqtt.username": "u", "mqtt.password_file": str(tmp_path)})
    assert message.startswith(f"config error: mqtt.password_file: cannot read {tmp_path}")
    s = load_settings(None, {"mqtt.password_file": str(missing)})  # no username: not used
    assert s.mqtt.password() is None


# --- switching features off from TOML ----------------------------------------------------------

# Settings whose None means something other than "this feature is off": a path or name that is not
# given (the shipped model, no login, the system CA store) or an automatic choice.
NONE_IS_NOT_OFF = {
    "model_path",
    "mqtt.username",
    "mqtt.password_file",
    "mqtt.tls.ca_file",
    "mqtt.tls.cert_file",
    "mqtt.tls.key_file",
    "engine.model.residual",
}


def _optional_keys(model: type = Settings, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf setting whose type admits None."""
    from tests.test_config_example import _models_in

    keys = []
    for name, field in model.model_fields.items():
        nested = _models_in(field.annotation)
        if nested:
            for sub in nested:
                keys += _optional_keys(sub, f"{prefix}{name}.")
        elif not field.is_required() and type(None) in _union_args(field.annotation):
            keys.append(prefix + name)
    return keys


def _union_args(annotation: object) -> tuple:
    import typing

    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation)


def _get(settings: Settings, dotted: str) -> object:
    value: object = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _toml_setting(dotted: str, literal: str) -> str:
    *tables, leaf = dotted.split(".")
    return (f"[{'.'.join(tables)}]\n" if tables else "") + f"{leaf} = {literal}\n"


def test_every_optional_feature_switches_off_with_false_in_toml(tmp_path: Path) -> None:
    keys = sorted(set(_optional_keys()) - NONE_IS_NOT_OFF)
    assert {"payload.timestamp_key", "engine.idle_expiry_s", "engine.scoring.range_margin"} <= set(keys)
    assert {"engine.scoring.flatline_ratio", "engine.scoring.long_winsor", "mqtt.forecast_topic"} <= set(keys)
    for key in keys:
        s = load_settings(write(tmp_path / "off.toml", _toml_setting(key, "false")))
        assert _get(s, key) is None, key


@pytest.mark.parametrize(
    "key",
    [
        "engine.idle_expiry_s",
        "engine.scoring.long_winsor",
        "engine.scoring.flatline_ratio",
        "engine.scoring.mid_window",
        "engine.scoring.seasonal_window",
        "engine.scoring.regime_after",
        "engine.scoring.range_steps",
    ],
)
def test_zero_switches_off_where_it_means_nothing_else(key: str, tmp_path: Path) -> None:
    assert _get(load_settings(write(tmp_path / "z.toml", _toml_setting(key, "0"))), key) is None


def test_range_margin_zero_is_a_margin_and_false_is_off(tmp_path: Path, monkeypatch) -> None:
    key = "engine.scoring.range_margin"
    assert _get(load_settings(write(tmp_path / "z.toml", _toml_setting(key, "0"))), key) == 0.0
    assert _get(load_settings(write(tmp_path / "f.toml", _toml_setting(key, "false"))), key) is None
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING__RANGE_MARGIN", "off")
    assert _get(load_settings(None, {}), key) is None


def test_off_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_STREAM_ENGINE__IDLE_EXPIRY_S", "false")
    monkeypatch.setenv("LSTM_STREAM_ENGINE__SCORING__LONG_WINSOR", "0")
    monkeypatch.setenv("LSTM_STREAM_PAYLOAD__TIMESTAMP_KEY", "")
    s = load_settings(None, {})
    assert s.engine.idle_expiry_s is None and s.engine.scoring.long_winsor is None
    assert s.payload.timestamp_key is None


def test_true_is_not_a_number_or_a_name(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path / "t.toml", "[engine]\nidle_expiry_s = true\n"))
    assert msg.startswith("config error: engine.idle_expiry_s: true is not a value here")
    msg = config_error(write(tmp_path / "t.toml", "[payload]\ntimestamp_key = true\n"))
    assert msg.startswith("config error: payload.timestamp_key: true is not a value here")


def test_plain_copies_are_the_settings_values_for_the_receiver_child(tmp_path: Path) -> None:
    """The receiver child reads ``daemon.plain`` copies (no pydantic there): every field, nested
    sections too, the same values; the password is read from the file at each call, as by the model."""
    import pickle

    from daemon.plain import Plain, PlainMqtt

    pw = write(tmp_path / "pw", "first\n")
    s = load_settings(
        None, {"mqtt.username": "daemon", "mqtt.password_file": str(pw), "mqtt.topics": ["a/#"]}
    )
    for model, plain in ((s.mqtt, PlainMqtt.of(s.mqtt)), (s.payload, Plain.of(s.payload))):
        assert {k: getattr(plain, k) for k in type(model).model_fields} == {
            k: v if not hasattr(v, "model_dump") else Plain.of(v) for k, v in dict(model).items()
        }
        assert pickle.loads(pickle.dumps(plain)) == plain
    plain = PlainMqtt.of(s.mqtt)
    assert plain.tls.enabled is False and plain.topics == ["a/#"] and plain.password() == "first"
    write(pw, "rotated")
    assert plain.password() == s.mqtt.password() == "rotated"
    with pytest.raises(AttributeError):
        plain.host = "elsewhere"
