"""The code's layout: modules stay short and imports point one way (README, "Layout").

commands -> service -> ingest | outputs -> shared leaves (daemon/*.py) -> lstm_stream. ingest and
outputs never import each other; lstm_stream never imports daemon. Every import counts, including
the lazy ones inside functions and those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "lstm_stream")
MAX_LINES = 600
# layer of each part; a module may import its own part and the parts of a lower layer only
LAYERS = {
    "lstm_stream": 0,
    "daemon": 1,  # the shared leaves at daemon/ top level: settings, heap, ratelog, ...
    "daemon.ingest": 2,
    "daemon.outputs": 2,
    "daemon.service": 3,
    "daemon.commands": 4,
    "daemon.__main__": 5,  # python -m daemon: runs the command line
}


def _modules() -> dict[str, Path]:
    """Every module under the packages, by dotted name."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    """The layer-bearing part of a module: lstm_stream, a daemon sub-package, or the leaves."""
    parts = module.split(".")
    if parts[0] == "lstm_stream":
        return "lstm_stream"
    if len(parts) > 1 and f"daemon.{parts[1]}" in LAYERS:
        return f"daemon.{parts[1]}"
    return "daemon"


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the packages in ``path``, at any depth."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # ``from pkg import module`` imports the module
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return [(line, name) for line, name in out if name.split(".")[0] in PACKAGES]


def _wrong_way(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None if it may."""
    a, b = _part(importer), _part(imported)
    if a == b:
        return None
    if a == "lstm_stream":
        return "lstm_stream never imports daemon"
    if LAYERS[b] >= LAYERS[a]:
        return f"{a} (layer {LAYERS[a]}) may not import {b} (layer {LAYERS[b]})"
    return None


def test_the_walk_finds_every_part() -> None:
    assert {_part(m) for m in MODULES} == set(LAYERS)
    assert _imports("daemon.service.service", MODULES["daemon.service.service"])  # the walk sees imports


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_the_limit(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, path in MODULES.items():
        for line, imported in _imports(module, path):
            why = _wrong_way(module, imported)
            if why:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports {imported}: {why}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("daemon.commands.cli", "daemon.service.service", True),
        ("daemon.service.batches", "daemon.outputs.events", True),
        ("daemon.ingest.link", "daemon.ratelog", True),
        ("daemon.settings", "lstm_stream.config", True),
        ("daemon.ingest.link", "daemon.outputs.events", False),
        ("daemon.outputs.metrics", "daemon.ingest.payload", False),
        ("daemon.outputs.server", "daemon.service.service", False),
        ("daemon.service.service", "daemon.commands.cli", False),
        ("daemon.ratelog", "daemon.ingest.queue", False),
        ("lstm_stream.engine", "daemon.settings", False),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    assert (_wrong_way(importer, imported) is None) is allowed


def test_importing_the_engine_loads_no_mqtt_http_or_daemon_code() -> None:
    code = (
        "import lstm_stream, sys; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('paho', 'prometheus_client', 'daemon') or m == 'http.server'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout
