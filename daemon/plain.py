"""Settings as plain values, for the receiver child: it reads these instead of the pydantic models,
whose import (pydantic and pydantic-settings) held 18 MB of its 46 at 10k streams.

The parent validates; the child only reads attributes, so a snapshot of the values (``model_dump``,
nested sections as nested :class:`Plain`) is all it needs. Nothing here imports pydantic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class _Model(Protocol):
    def model_dump(self) -> dict[str, Any]: ...


def read_password(username: str | None, password_file: Path | None) -> str | None:
    """The broker password, read now (None without a username, a password file or content).

    Read on each call, so a rotated credential is picked up at the next reconnect; one trailing
    line break is not part of the password.
    """
    if username is None or password_file is None:
        return None
    text = Path(password_file).read_text(encoding="utf-8")
    return text.removesuffix("\n").removesuffix("\r") or None


class Plain:
    """Read-only attributes from a dict of values (nested dicts as nested :class:`Plain`)."""

    def __init__(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, Plain(value) if isinstance(value, dict) else value)

    @classmethod
    def of(cls, model: _Model) -> Plain:
        """The values of a validated settings model."""
        return cls(model.model_dump())

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self)!r})"


class PlainMqtt(Plain):
    """:class:`~daemon.settings.MqttSettings`' values, and its ``password()``."""

    def password(self) -> str | None:
        return read_password(self.username, self.password_file)
