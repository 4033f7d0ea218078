"""``config/lstm-stream.toml``: the annotated example loads, documents every setting, and shows defaults.

"Documents" means: each dotted key of the settings models (walked recursively from
``Settings.model_fields``) appears in the file, either as an active ``key = value`` line or, for keys
that are unset by default (TOML has no null), as a commented-out ``# key = value`` line in its table.
Adding a setting without documenting it here fails ``test_every_setting_is_in_the_example``.
"""

from __future__ import annotations

import os
import re
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from daemon.settings import Settings, load_settings, masked_dump

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "lstm-stream.toml"
# keys whose default depends on the environment: the example leaves them commented out
ENVIRONMENT_DEPENDENT = {"state.directory", "mqtt.password_file"}
COMMENTED_KEY = re.compile(r"^#\s?([A-Za-z_][A-Za-z0-9_]*\s*=.*)$")


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation is or contains (``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def setting_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every leaf setting as a dotted key, e.g. ``engine.scoring.threshold``."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        nested = _models_in(field.annotation)
        if nested:
            for sub in nested:
                keys |= setting_keys(sub, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def dotted_keys(table: dict, prefix: str = "") -> set[str]:
    """The leaf keys of parsed TOML as dotted keys."""
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def uncommented(text: str) -> str:
    """The example with every commented-out ``# key = value`` line made active."""
    return "\n".join(
        COMMENTED_KEY.sub(r"\1", line) if COMMENTED_KEY.match(line) else line for line in text.splitlines()
    )


@pytest.fixture(scope="module")
def text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_example_loads(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("LSTM_STREAM_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(EXAMPLE)
    assert isinstance(settings, Settings)


def test_every_setting_is_in_the_example(text):
    active = dotted_keys(tomllib.loads(text))
    documented = dotted_keys(tomllib.loads(uncommented(text)))  # a duplicate key would not parse
    known = setting_keys()
    assert known, "walking the settings models found no keys"
    missing = sorted(known - documented)
    assert not missing, f"settings not documented in {EXAMPLE.name}: {missing}"
    unknown = sorted(documented - known)
    assert not unknown, f"{EXAMPLE.name} documents keys that are not settings: {unknown}"
    # commented out only where TOML cannot say the default: unset (None) or set by the environment
    defaults = Settings().model_dump()
    for key in sorted(documented - active):
        value = defaults
        for part in key.split("."):
            value = value[part]
        assert value is None or key in ENVIRONMENT_DEPENDENT, f"{key}: default {value!r}, yet commented out"


def test_example_values_are_the_defaults(tmp_path, monkeypatch):
    """The header says so: the file used as it is changes nothing."""
    for var in [v for v in os.environ if v.startswith("LSTM_STREAM_")]:
        monkeypatch.delenv(var)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert masked_dump(load_settings(EXAMPLE)) == masked_dump(load_settings(empty))


def test_example_has_no_password(text):
    data = tomllib.loads(uncommented(text))
    assert "password" not in data["mqtt"]
    assert "password_file" in data["mqtt"]
    assert not re.search(r"^\s*#?\s*password\s*=", text, re.MULTILINE)


def test_every_key_has_a_comment(text):
    """Each key (active or commented out) has a describing comment line right above it; consecutive
    active keys may share one (``reconnect_min_s``/``reconnect_max_s``)."""
    lines = text.splitlines()
    active = re.compile(r"^[A-Za-z_]\w*\s*=")
    for i, line in enumerate(lines):
        if not (active.match(line) or COMMENTED_KEY.match(line)):
            continue
        j = i - 1
        while j >= 0 and active.match(line) and active.match(lines[j]):
            j -= 1
        above = lines[j] if j >= 0 else ""
        assert above.startswith("#") and not COMMENTED_KEY.match(above), (
            f"{EXAMPLE.name}:{i + 1}: {line!r} has no describing comment above it"
        )
