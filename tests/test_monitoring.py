"""What ships in config/ works against the metrics the daemon really exports.

- the Grafana dashboard and its provisioning files: static checks (loads by import and by file
  provisioning, every query on ``${datasource}``, only metric names the daemon exports);
- the Prometheus alert rules: ``promtool check rules`` / ``promtool test rules``;
- end to end: the real daemon fed simulated streams through a real Mosquitto, a real Prometheus
  scraping it with the alert rules loaded, and every PromQL expression of the dashboard (panels,
  template variables, annotations) evaluated against it: each must return data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest

from daemon.outputs import metrics
from tests.daemon_proc import Daemon, Publisher

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA / "lstm-stream.json"
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMTOOL = shutil.which("promtool")

DS = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN_DS = ({"type": "grafana", "uid": "-- Grafana --"}, {"type": "datasource", "uid": "-- Mixed --"})
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


# --- the dashboard as data -----------------------------------------------------------------------
def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries(dash: dict) -> list[dict]:
    """Every PromQL expression: {where, expr, kind ('range' | 'instant' | 'label_values')}."""
    out = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            if t.get("expr"):
                kind = "instant" if t.get("instant") and not t.get("range") else "range"
                where = f"panel {p['title']!r} target {t['refId']}"
                out.append({"where": where, "expr": t["expr"], "kind": kind})
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append({"where": f"variable {v['name']!r}", "expr": q, "kind": "label_values"})
    for a in dash["annotations"]["list"]:
        expr = a.get("expr") or (a.get("target") or {}).get("expr")
        if expr:
            out.append({"where": f"annotation {a['name']!r}", "expr": expr, "kind": "range"})
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation for the forms the dashboard uses; unknown names raise."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return VARIABLE.sub(one, expr)


def metric_names(text: str) -> set[str]:
    """lstm_stream_* metric names used in PromQL text (histogram suffixes folded)."""
    names = set()
    for name in re.findall(r"\blstm_stream_[a-z_]+\b", text):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and base in EXPORTED:
                name = base
        names.add(name)
    return names


EXPORTED = {
    v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("lstm_stream_")
} - {metrics.PREFIX}
# exported by NATS workers only: their panels are checked against workers (tests/test_nats_static.py)
NATS_ONLY = {
    metrics.NATS_PARTITIONS_OWNED,
    metrics.NATS_PARTITIONS,
    metrics.WORKER_INFO,
    metrics.NATS_PARTITION_WAIT,
    metrics.NATS_STALE_RENEWALS,
}


def nats_only(q: dict) -> bool:
    return bool(metric_names(q["expr"]) & NATS_ONLY)


# --- static checks ---------------------------------------------------------------------------------
def test_dashboard_loads_by_import_and_by_provisioning() -> None:
    raw = DASHBOARD.read_text()
    dash = json.loads(raw)
    assert dash["uid"] == "lstm-stream"
    assert "__inputs" not in dash and "__requires" not in dash
    assert "DS_" not in raw, "an import-only ${DS_...} reference: provisioning cannot resolve it"
    assert dash.get("id") is None
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    stream = variables["stream"]
    assert stream["type"] == "query" and stream["multi"] and stream["includeAll"]
    assert stream["query"].startswith("label_values(lstm_stream_anomaly_score{")
    assert '$stream_regex"' in stream["query"]  # filterable by regex
    assert variables["stream_regex"]["type"] == "textbox" and variables["stream_regex"]["query"] == ".*"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS, v["name"]

    ids = set()
    for p in all_panels(dash):
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS, f"panel {p['title']!r}: datasource {p.get('datasource')}"
        assert p["targets"], f"panel {p['title']!r} has no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, f"panel {p['title']!r} target {t['refId']}"
    for a in dash["annotations"]["list"]:
        assert a["datasource"] == DS or a["datasource"] in BUILTIN_DS, a["name"]
    _no_overlaps(dash)


def _no_overlaps(dash: dict) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dash):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_issue_and_uses_only_exported_metrics() -> None:
    dash = load_dashboard()
    queries = dashboard_queries(dash)
    used = set().union(*(metric_names(q["expr"]) for q in queries))
    assert used <= EXPORTED, f"not exported by the daemon: {sorted(used - EXPORTED)}"
    wanted = {
        metrics.VALUE,
        metrics.FORECAST,
        metrics.FORECAST_AHEAD,
        metrics.FORECAST_LOWER,
        metrics.FORECAST_UPPER,
        metrics.ANOMALY,
        metrics.ANOMALIES_TOTAL,
        metrics.ANOMALY_SCORE,
        metrics.MESSAGES_RECEIVED,
        metrics.MESSAGES_REJECTED,
        metrics.SAMPLES_PROCESSED,
        metrics.SAMPLES_REJECTED,
        metrics.QUEUE_DEPTH,
        metrics.QUEUE_DROPPED,
        metrics.PROCESSING_LATENCY,
        metrics.STREAMS,
        metrics.STREAMS_EVICTED,
        metrics.FINETUNE_RUNS,
        metrics.FINETUNE_VALIDATION_LOSS,
        metrics.MODEL_VERSION,
        metrics.MQTT_CONNECTED,
        metrics.CHECKPOINT_LAST_SUCCESS,
    }
    assert wanted <= used, f"no panel for {sorted(wanted - used)}"
    exprs = " ".join(q["expr"] for q in queries)
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "time() - (lstm_stream_checkpoint_last_success_timestamp_seconds" in exprs
    assert "vector($threshold)" in exprs
    assert 'horizon="$horizon"} offset $ahead' in exprs  # the forecast made H steps ago, on the value
    annotations = [q for q in queries if q["where"].startswith("annotation")]
    assert {metrics.ANOMALY, metrics.ANOMALIES_TOTAL} <= set().union(
        *(metric_names(a["expr"]) for a in annotations)
    )


def test_grafana_provisioning_files_parse() -> None:
    yaml = pytest.importorskip("yaml")
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "lstm-stream.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "lstm-stream.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_alert_rules_use_only_exported_metrics() -> None:
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    for r in rules:
        assert r.get("for"), f"{r['alert']}: no for:"
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        used = metric_names(r["expr"])
        assert used <= EXPORTED, f"{r['alert']}: {sorted(used - EXPORTED)}"


# --- promtool ------------------------------------------------------------------------------------------
def promtool(*args: str) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_is_clean() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "WARNING" not in r.stdout + r.stderr


def test_promtool_check_config() -> None:
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests_pass_and_cover_every_alert() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = set(re.findall(r"^\s*- alert: (\w+)", ALERTS.read_text(), re.M))
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    for name in alerts:
        # each alert is evaluated at least twice: still silent, then firing
        assert len(re.findall(rf"alertname: {name}\s*$", tests, re.M)) >= 2, name


# --- end to end -------------------------------------------------------------------------------------
STREAMS = 4
STEP_S = 0.25


def value(stream: int, i: int) -> float:
    return 20.0 + 10.0 * math.sin(2 * math.pi * i / 50 + stream) + 0.1 * math.sin(7.3 * i)


def finite(result: list[dict]) -> bool:
    """True when some sample of an instant or range result is a finite number."""
    for series in result:
        points = series.get("values") or [series.get("value")]
        if any(p and math.isfinite(float(p[1])) for p in points):
            return True
    return False


@pytest.mark.integration
@pytest.mark.slow
def test_every_dashboard_query_returns_data(tmp_path, broker, prometheus) -> None:
    cfg = {
        "engine": {
            "scoring": {"warmup": 40, "suppress": 10},
            "history_len": 128,
            "train": {"epochs": 1, "seq_len": 16, "stride": 8, "patience": 1},
        },
        "ingest": {"batch_ms": 10},
        "finetune": {"enabled": True, "interval_s": 2, "min_new_samples": 200, "mode": "thread"},
        "state": {"checkpoint_interval_s": 2},
    }
    d = Daemon(tmp_path, broker, cfg, name="monitoring").start()
    pub = None
    try:
        target = f"127.0.0.1:{d.http_port}"
        prom = prometheus([target], rule_files=[str(ALERTS)])
        started = time.time()
        pub = Publisher(broker)
        names = [f"sensors/machine{s}/temp" for s in range(STREAMS)]

        # warm-up, fast, timestamps in the recent past (ingest latency is observed for them)
        t0 = time.time() - 60
        warm = [
            (names[s], {"value": value(s, i), "ts": t0 + i * 0.5}) for i in range(60) for s in range(STREAMS)
        ]
        warm += [("sensors/bad/json", b'{"value": 1'), ("sensors/bad/text", b"warm")]
        pub.publish_many(warm)
        # then in real time; a ramp on two streams keeps them anomalous across several scrapes
        for i in range(60, 60 + 64):
            ramp = 20.0 * (i - 79) if 80 <= i < 92 else 0.0
            items = []
            for s in range(STREAMS):
                bump = ramp if s in (0, 2) else 0.0
                items.append((names[s], {"value": value(s, i) + bump, "ts": time.time()}))
            pub.publish_many(items)
            time.sleep(STEP_S)
        d.wait_metric(metrics.FINETUNE_VALIDATION_LOSS, math.isfinite, timeout=30, model="live")

        # the alert rules loaded and evaluate without error
        expected_alerts = set(re.findall(r"^\s*- alert: (\w+)", ALERTS.read_text(), re.M))
        deadline = time.monotonic() + 20
        while True:
            rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
            health = {r["name"]: (r["health"], r.get("lastError", "")) for r in rules}
            if all(h == "ok" for h, _ in health.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert set(health) == expected_alerts, health
        assert all(h == "ok" for h, _ in health.values()), health

        values = {
            "datasource": "prometheus",
            "job": "lstm-stream",
            "instance": re.escape(target).replace("\\", "\\\\"),  # as Grafana escapes it in a PromQL string
            "stream": "|".join(names),
            "stream_regex": "sensors/.*",
            "threshold": "0.5",
            "horizon": "12",  # exported by default (http.horizons)
            "ahead": "3s",  # the forecasts made 12 samples (STEP_S apart) earlier
            "__interval": "15s",
            "__rate_interval": "3m",  # the flags happened up to a minute before the queries run
            "__range": "5m",
        }
        queries = [q for q in dashboard_queries(load_dashboard()) if not nats_only(q)]
        assert len(queries) >= 40
        failures: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while True:
            failures = {}
            for q in queries:
                why = _check(prom, q, values, started, names)
                if why:
                    failures[q["where"]] = why
            if not failures or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert not failures, "dashboard queries without data:\n" + "\n".join(
            f"  {k}: {v}" for k, v in failures.items()
        )
    finally:
        if pub is not None:
            pub.close()
        d.close()


def _check(prom, q: dict, values: dict, started: float, names: list[str]) -> str:
    """'' when the query returns data, else why not."""
    expr = substitute(q["expr"], values)
    try:
        if q["kind"] == "label_values":
            selector, label = LABEL_VALUES.match(expr).groups()
            series = prom.api("series", **{"match[]": selector, "start": started - 60, "end": time.time()})[
                "data"
            ]
            got = {s[label] for s in series if label in s}
            if not got:
                return f"no values of {label} for {selector}"
            if label == "stream" and got != set(names):
                return f"stream values {sorted(got)} != {names}"
            return ""
        if q["kind"] == "instant":
            result = prom.query(expr)
        else:
            data = prom.api("query_range", query=expr, start=started, end=time.time(), step=1)["data"]
            result = data["result"]
    except urllib.error.HTTPError as exc:
        return f"{expr}: HTTP {exc.code} {exc.read().decode()[:300]}"
    if not result:
        return f"{expr}: empty result"
    if not finite(result):
        return f"{expr}: only NaN/Inf"
    return ""
