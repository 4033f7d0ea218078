"""A real Prometheus server (Debian's package) scraping test targets every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.broker import free_port, wait_port

PROMETHEUS = shutil.which("prometheus")


class Prometheus:
    """One Prometheus process with its own config, storage and port."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[str] | None = None) -> None:
        self.dir = Path(workdir) / f"prometheus-{free_port()}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        rules = "".join(f"  - {json.dumps(str(r))}\n" for r in rule_files or [])
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n  - job_name: lstm-stream\n    static_configs:\n"
            + f"      - targets: {json.dumps(targets)}\n"
        )
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "prometheus.log", "w"),  # noqa: SIM115 - lives as long as the process
        )
        wait_port(self.port, timeout=30)

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; returns the decoded JSON (raises on an error status)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector."""
        return self.api("query", query=expr)["data"]["result"]

    def wait_query(self, expr: str, predicate, timeout: float = 60.0) -> list[dict]:
        """Poll ``expr`` until ``predicate(result)`` holds."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{expr!r} -> {result} after {timeout}s")

    def log(self) -> str:
        return (self.dir / "prometheus.log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def prometheus(tmp_path):
    """A factory: ``prometheus(targets, rule_files=None)`` starts one; all are stopped afterwards."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs it)")
    started: list[Prometheus] = []

    def start(targets: list[str], rule_files: list[str] | None = None) -> Prometheus:
        p = Prometheus(tmp_path, targets, rule_files)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
