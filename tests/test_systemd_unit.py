"""The unit file: required settings present, `systemd-analyze verify` silent, exposure <= 2.0.

`systemd-analyze verify` fails when ExecStart's binary does not exist. If
/usr/local/bin/lstm-stream is installed, the unit is checked as shipped; otherwise a copy whose
ExecStart binary (only that path) points at a stub executable in tmp_path is checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "lstm-stream.service"
BINARY = "/usr/local/bin/lstm-stream"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The unit as shipped if its binary exists, else a copy pointing at a stub binary."""
    if os.access(BINARY, os.X_OK):
        return UNIT
    stub = tmp_path / "bin" / "lstm-stream"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={BINARY} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={BINARY} ", f"ExecStart={stub} "))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120, check=False)


def test_required_directives() -> None:
    d = directives()
    expected = {
        "Type": "notify",
        "ExecStart": f"{BINARY} run --config /etc/lstm-stream/config.toml",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "78",
        "StateDirectory": "lstm-stream",
        "ConfigurationDirectory": "lstm-stream",
        "LoadCredential": "mqtt_password:/etc/lstm-stream/mqtt_password",
        "Environment": "PYTHONUNBUFFERED=1",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "no",  # torch's oneDNN JIT
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert not any("@resources" in f for f in d["SystemCallFilter"])  # OpenMP thread pinning
    assert not any("password" in v.lower() for v in d.get("Environment", []))


@needs_analyze
def test_systemd_analyze_verify_is_silent(checkable_unit: Path) -> None:
    result = analyze("verify", str(checkable_unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_analyze
def test_security_exposure_at_most_2(checkable_unit: Path) -> None:
    result = analyze("security", "--offline=true", str(checkable_unit))
    assert result.stderr == ""
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) <= 2.0, result.stdout
