"""The offline commands: train, evaluate, export, replay, and every bad-CSV message.

Synthetic CSVs are written into tmp_path; real data comes from the NAB subset (skipped if absent).
Training is tiny (hidden 16, a few epochs) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.commands.offline import build_parser, main
from lstm_stream.checkpoint import load_model, save_model
from lstm_stream.config import EngineConfig, ModelConfig
from lstm_stream.csvdata import DataError, load_csv
from lstm_stream.models import build_model
from tests.conftest import NAB, nab_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--layers", "1", "--epochs", "12", "--batch-size", "16", "--lr", "5e-3", "--quiet"]
QUANT_TOLERANCE = 0.20  # stated: int8 may change the test MAE by less than 20% (relative)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run an offline command in-process: (exit status, stdout, stderr)."""
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def sine_csv(path: Path, n: int = 1200, period: int = 40, seed: int = 0) -> Path:
    """A clean sine (level 20, amplitude 5, small noise), one row a minute, ISO timestamps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 20 + 5 * np.sin(2 * np.pi * t / period) + rng.normal(0, 0.1, n)
    start = np.datetime64("2024-01-01T00:00:00")
    lines = ["timestamp,value"] + [
        f"{start + np.timedelta64(int(i), 'm')},{v:.5f}" for i, v in zip(t, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny stateful LSTM trained once on a sine CSV, with its summary."""
    d = tmp_path_factory.mktemp("trained")
    csv = sine_csv(d / "sine.csv")
    out = d / "model.safetensors"
    assert main(["train", "--csv", str(csv), "--out", str(out), *TINY]) == 0
    return {"csv": csv, "model": out, "summary": d / "model.json", "dir": d}


# ------------------------------------------------------------------ train
def test_train_beats_persistence_on_a_sine_and_reports_mase(trained: dict[str, Path]) -> None:
    summary = json.loads(trained["summary"].read_text())
    test = summary["test"]
    assert test["model"]["mase"] < 1.0  # beats persistence on the held-out part
    assert test["persistence"]["mase"] == pytest.approx(1.0)
    split = summary["split"]["series"][0]
    assert split["train"][1] <= split["validation"][0] < split["validation"][1] <= split["test"][0]
    assert split["test"][1] == 1200 and split["test"][1] - split["test"][0] == 240
    history = summary["fit"]["history"]
    assert history and all("train_loss" in h and "val_loss" in h for h in history)
    loaded = load_model(trained["model"])  # the daemon's model_path can start from it
    assert loaded.config.mode == "stateful" and loaded.config.model.hidden == 16
    assert loaded.info["split"]["test_fraction"] == 0.2


def test_train_never_sees_the_test_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = sine_csv(tmp_path / "a.csv", n=600)
    lines = a.read_text().splitlines()
    cut = 1 + 600 - 120  # header + rows before the test part
    changed = lines[:cut] + [
        f"{row.split(',')[0]},{float(row.split(',')[1]) * 3 + 50:.5f}" for row in lines[cut:]
    ]
    b = tmp_path / "b.csv"
    b.write_text("\n".join(changed) + "\n")
    fast = ["--hidden", "8", "--layers", "1", "--epochs", "2", "--quiet", "--json"]
    for src, out in ((a, "a.safetensors"), (b, "b.safetensors")):
        assert run(["train", "--csv", str(src), "--out", str(tmp_path / out), *fast], capsys)[0] == 0
    wa = load_model(tmp_path / "a.safetensors").model.state_dict()
    wb = load_model(tmp_path / "b.safetensors").model.state_dict()
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)  # the test part changed nothing


def test_train_several_series_and_window_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, t = 500, np.arange(500)
    rows = ["time,temp,hum"] + [
        f"{1_700_000_000 + 60 * i},{20 + np.sin(i / 7):.4f},{50 + 3 * np.cos(i / 11):.4f}" for i in t
    ]
    csv = tmp_path / "multi.csv"
    csv.write_text("\r\n".join(rows) + "\r\n")  # CRLF and epoch seconds
    out = tmp_path / "att.safetensors"
    args = ["train", "--csv", str(csv), "--out", str(out), "--arch", "attention", "--look-back", "16"]
    rc, stdout, _ = run([*args, "--hidden", "8", "--epochs", "2", "--quiet", "--json"], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    assert summary["test_mean_over"] == 2 and set(summary["test_per_series"]) == {"multi/temp", "multi/hum"}
    assert load_model(out).config.mode == "window"
    assert n == summary["data"][0]["rows"]


# ------------------------------------------------------------------ evaluate
def test_evaluate_json_has_every_metric_for_model_and_baselines(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(
        ["evaluate", "--model", str(trained["model"]), "--csv", str(trained["csv"]), "--json"], capsys
    )
    assert rc == 0
    res = json.loads(out)
    assert set(res) - {"meta"} == {"model", "persistence", "ewma", "seasonal_naive", "horizons"}
    for name in ("model", "persistence", "ewma", "seasonal_naive"):
        assert set(res[name]) == {"mae", "rmse", "r2", "mase", "da", "mda"}
        assert all(isinstance(v, float) for v in res[name].values())
    # per step of the path: the served path, persistence and seasonal naive at that step, coverage
    assert set(res["horizons"]) == {str(h) for h in range(1, res["meta"]["horizon"] + 1)}
    first = res["horizons"]["1"]
    assert set(first) == {"rows", "model", "persistence", "seasonal_naive", "coverage", "width"}
    assert first["model"]["mase"] == pytest.approx(res["model"]["mase"])  # step 1 is the served forecast
    assert 0.0 <= res["horizons"]["12"]["coverage"] <= 1.0
    assert res["persistence"]["mase"] == pytest.approx(1.0)
    assert res["model"]["mase"] < 1.0
    assert res["meta"]["points"] == 240 and res["meta"]["period"] == 40  # test part; period detected


def test_evaluate_table_and_plot(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image as mpimg

    png = trained["dir"] / "eval.png"
    argv = ["evaluate", "--model", str(trained["model"]), "--csv", str(trained["csv"]), "--plot", str(png)]
    rc, out, _ = run(argv, capsys)
    assert rc == 0
    for word in ("MAE", "RMSE", "R2", "MASE", "DA", "MDA", "model", "persistence", "ewma", "seasonal_naive"):
        assert word in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 2_000_000
    img = mpimg.imread(png)
    assert img.shape[:2] == (550, 1540)  # 14 x 5 in at 110 dpi
    assert img[..., :3].std() > 0.05  # not blank


def test_evaluate_real_nab_slice_with_windows(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = nab_file("realKnownCause/nyc_taxi.csv")
    lines = src.read_text().splitlines()
    keep = [ln for ln in lines[1:] if "2014-10-10" <= ln[:10] <= "2014-11-08"]
    folder = tmp_path / "realKnownCause"
    folder.mkdir()
    csv = folder / "nyc_taxi.csv"
    csv.write_text("\n".join([lines[0], *keep]) + "\n")
    png = tmp_path / "taxi.png"
    argv = ["evaluate", "--model", str(trained["model"]), "--csv", str(csv), "--whole", "--json"]
    rc, out, _ = run([*argv, "--labels", str(NAB / "combined_windows.json"), "--plot", str(png)], capsys)
    assert rc == 0
    res = json.loads(out)
    assert all(np.isfinite(res[k]["mae"]) for k in ("model", "persistence", "ewma", "seasonal_naive"))
    flags = res["flags"]
    assert flags["windows_in_part"] == 1  # 2014-10-30 .. 2014-11-03
    assert set(flags["pointwise"]) >= {"precision", "recall", "f1"}
    assert set(flags["events"]) >= {"precision", "recall", "f1"}
    assert png.read_bytes()[:4] == b"\x89PNG"

    stamps = tmp_path / "labels.txt"
    stamps.write_text(
        "# one timestamp per line\n2014-11-02 01:00:00\n2014-10-30 15:30:00,2014-10-31 00:00:00\n"
    )
    rc, out, _ = run([*argv, "--labels", str(stamps)], capsys)
    assert rc == 0 and json.loads(out)["flags"]["windows_in_part"] == 2


def test_evaluate_needs_a_split_or_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = EngineConfig(model=ModelConfig(hidden=8, layers=1), look_back=8)
    path = tmp_path / "bare.safetensors"
    save_model(path, build_model(cfg.model), cfg)  # no split recorded
    csv = sine_csv(tmp_path / "s.csv", n=200)
    rc, _, err = run(["evaluate", "--model", str(path), "--csv", str(csv)], capsys)
    assert rc == 2 and "--test-fraction or --whole" in err
    assert run(["evaluate", "--model", str(path), "--csv", str(csv), "--whole", "--json"], capsys)[0] == 0
    rc, _, err = run(["evaluate", "--model", str(tmp_path / "nope.safetensors"), "--csv", str(csv)], capsys)
    assert rc == 2 and "nope.safetensors" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ export
def test_export_onnx_window_and_step_match_torch(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort
    import torch

    onnx_path = trained["dir"] / "m.onnx"
    rc, out, _ = run(["export", "--model", str(trained["model"]), "--onnx", str(onnx_path), "--json"], capsys)
    assert rc == 0
    graphs = {g["kind"]: g for g in json.loads(out)["onnx"]}
    assert set(graphs) == {"window", "step"}
    assert all(g["max_abs_diff"] <= 1e-4 and g["ok"] for g in graphs.values())
    # an independent check on fresh random inputs
    model = load_model(trained["model"]).model
    sess = ort.InferenceSession(graphs["step"]["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(3) * 2
    h, c = (torch.randn(s.shape) * 0.5 for s in model.zero_state(3))
    with torch.no_grad():
        mean, spread, (h2, c2) = model.step(x, (h, c))
    got = sess.run(None, {"value": x.numpy(), "h": h.numpy(), "c": c.numpy()})
    for a, b in zip(got, (mean, spread, h2, c2), strict=True):
        assert np.max(np.abs(a - b.numpy())) <= 1e-4


@pytest.mark.parametrize("arch", ["bilstm", "attention"])
def test_export_window_only_archs(arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = EngineConfig(model=ModelConfig(arch=arch, hidden=16, layers=2), look_back=12, mode="window")
    path = tmp_path / f"{arch}.safetensors"
    save_model(path, build_model(cfg.model), cfg)
    rc, out, _ = run(["export", "--model", str(path), "--onnx", str(tmp_path / "w.onnx"), "--json"], capsys)
    assert rc == 0
    (graph,) = json.loads(out)["onnx"]
    assert graph["kind"] == "window" and graph["max_abs_diff"] <= 1e-4
    rc, _, err = run(["export", "--model", str(path), "--stateful-onnx", str(tmp_path / "s.onnx")], capsys)
    assert rc == 2 and "window-only" in err


def test_quantize_shrinks_and_keeps_test_mae(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The bound is the export's own check (--max-mae-increase): the command passes only if the int8
    graph's test MAE stays within it, on whatever CPU runs the test."""
    import onnx

    q_path = trained["dir"] / "q.onnx"
    argv = [
        "export",
        "--model",
        str(trained["model"]),
        "--quantize",
        str(q_path),
        "--csv",
        str(trained["csv"]),
    ]
    rc, out, err = run([*argv, "--json", "--quiet", "--max-mae-increase", str(QUANT_TOLERANCE)], capsys)
    q = json.loads(out)["quantize"]
    stored, torch_q = q["stored"], q["torch_dynamic"]
    assert rc == 0, (err, stored)
    assert stored["accepted"] and stored["max_mae_increase"] == QUANT_TOLERANCE
    assert q_path.stat().st_size == stored["bytes_after"] < stored["bytes_before"]
    assert torch_q["bytes_after"] < torch_q["bytes_before"]
    assert abs(stored["mae_rel_change"]) < QUANT_TOLERANCE
    assert abs(torch_q["mae_rel_change"]) < QUANT_TOLERANCE
    assert q["test_points"] == 240
    ops = {n.op_type for n in onnx.load(str(q_path)).graph.node}
    assert "DynamicQuantizeLSTM" in ops  # the LSTM weights really are int8
    rc, _, err = run(
        [*argv[:3], "--quantize", str(trained["dir"] / "q.pt"), "--csv", str(trained["csv"])], capsys
    )
    assert rc == 2 and "pickle" in err


def test_quantize_refuses_a_model_that_int8_breaks(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outlier weights in the spread row of the head leave the float forecast as it was, but the head
    is quantized per tensor, so int8 rounds the mean row to zero: the export must refuse it."""
    import torch

    loaded = load_model(trained["model"])
    with torch.no_grad():
        loaded.model.head.linear.weight[1] *= 500.0
    bad = tmp_path / "outliers.safetensors"
    save_model(bad, loaded.model, loaded.config, loaded.info)
    q_path = tmp_path / "q.onnx"
    argv = ["export", "--model", str(bad), "--quantize", str(q_path), "--csv", str(trained["csv"])]
    rc, out, err = run([*argv, "--json", "--quiet"], capsys)
    stored = json.loads(out)["quantize"]["stored"]
    assert rc == 1 and not stored["accepted"]
    assert stored["mae_rel_change"] > 1.0  # far beyond the default bound of 0.2
    assert "refused to write" in err and "--max-mae-increase" in err
    assert not q_path.exists()


# ------------------------------------------------------------------ replay
def _subscriber(broker, topic: str) -> tuple[object, list[tuple[str, bytes]]]:
    import paho.mqtt.client as mqtt

    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="replay-test-sub")
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert ready.wait(5)
    return sub, got


def _wait_for(got: list, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.integration
def test_replay_arrives_in_order_and_complete(
    broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.ingest.payload import parse_payload

    csv = sine_csv(tmp_path / "s.csv", n=300)
    data = load_csv(csv)
    sub, got = _subscriber(broker, "replay/#")
    try:
        argv = ["replay", "--csv", str(csv), "--topic", "replay/sine", "--host", broker.host]
        rc, out, _ = run([*argv, "--port", str(broker.port), "--qos", "1", "--json", "--quiet"], capsys)
        assert rc == 0
        summary = json.loads(out)
        assert summary["messages"] == summary["completed"] == 300
        _wait_for(got, 300)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert len(got) == 300
    samples = [parse_payload(t, p, time.time()) for t, p in got]  # arrival now: 2024 is not future
    assert [s[0][1] for s in samples] == pytest.approx(list(data.time))  # timestamps survive, in order
    assert [s[0][2] for s in samples] == pytest.approx(list(data.series(0)))
    assert {s[0][0] for s in samples} == {"replay/sine"}


@pytest.mark.integration
def test_replay_per_column_plain_and_paced(
    broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "two.csv"
    csv.write_text("ts;a;b\n" + "".join(f"{1_700_000_000_000 + 1000 * i};{i};{-i}\n" for i in range(50)))
    sub, got = _subscriber(broker, "plant/#")
    try:
        argv = ["replay", "--csv", str(csv), "--topic-per-column", "plant/", "--format", "plain"]
        argv += [
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--rate",
            "400",
            "--limit",
            "20",
            "--quiet",
        ]
        t0 = time.monotonic()
        rc, out, _ = run(argv, capsys)
        elapsed = time.monotonic() - t0
        assert rc == 0 and "40/40 acknowledged" in out
        _wait_for(got, 40)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert elapsed >= 39 / 400
    for col, sign in (("a", 1), ("b", -1)):
        values = [float(p) for t, p in got if t == f"plant/{col}"]
        assert values == [sign * i for i in range(20)]


def test_replay_unreachable_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.broker import free_port

    csv = sine_csv(tmp_path / "s.csv", n=20)
    rc, _, err = run(["replay", "--csv", str(csv), "--topic", "x", "--port", str(free_port())], capsys)
    assert rc == 2 and "cannot connect" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ bad input
GOOD_HEAD = "timestamp,value\n" + "".join(f"2024-01-01 00:{i:02d}:00,{i}.5\n" for i in range(50))

BAD_CSVS = {
    "missing value": (GOOD_HEAD + "2024-01-01 01:00:00,\n", 52, "missing value in column 'value'"),
    "unparsable row": (GOOD_HEAD + "2024-01-01 01:00:00,1,2\n", 52, "unparsable row"),
    "unparsable value": (GOOD_HEAD + "2024-01-01 01:00:00,1.2.3\n", 52, "unparsable value '1.2.3'"),
    "unparsable timestamp": (GOOD_HEAD + "yesterday,1\n", 52, "unparsable timestamp 'yesterday'"),
    "unsorted": (GOOD_HEAD + "2024-01-01 00:10:30,1\n", 52, "timestamps not sorted"),
    "duplicate": (GOOD_HEAD + "2024-01-01 00:49:00,1\n", 52, "duplicate timestamp '2024-01-01 00:49:00'"),
    "non-numeric column": (
        "timestamp,value\n2024-01-01 00:00:00,on\n2024-01-01 00:01:00,off\n",
        2,
        "column 'value' is not numeric",
    ),
    "too few rows": (
        "timestamp,value\n" + "".join(f"2024-01-01 00:{i:02d}:00,{i}\n" for i in range(10)),
        11,
        "too few rows",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
@pytest.mark.parametrize("command", ["train", "evaluate", "replay"])
def test_bad_csv_names_file_row_and_problem(
    case: str, command: str, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, line, problem = BAD_CSVS[case]
    if case == "too few rows" and command == "replay":
        pytest.skip("replay publishes any number of rows")
    csv = tmp_path / f"{case.replace(' ', '_')}.csv"
    csv.write_text(text)
    argv = {
        "train": ["train", "--csv", str(csv), "--out", str(tmp_path / "m.safetensors"), *TINY],
        "evaluate": ["evaluate", "--model", str(trained["model"]), "--csv", str(csv)],
        "replay": ["replay", "--csv", str(csv), "--topic", "t", "--port", "1"],
    }[command]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert f"{csv}:{line}:" in err and problem in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_values_can_be_dropped_or_interpolated(tmp_path: Path) -> None:
    csv = tmp_path / "gaps.csv"
    csv.write_text("time,x\n0,1\n60,\n120,3\n180,NaN\n240,5\n")
    with pytest.raises(DataError, match=r"gaps.csv:3: missing value"):
        load_csv(csv)
    dropped = load_csv(csv, missing="drop")
    assert list(dropped.series()) == [1, 3, 5] and list(dropped.lines) == [2, 4, 6]
    filled = load_csv(csv, missing="interpolate")
    assert list(filled.series()) == [1, 2, 3, 4, 5] and filled.notes


def test_csv_options_for_nab_quirks(tmp_path: Path) -> None:
    csv = tmp_path / "q.csv"
    csv.write_text(
        "timestamp,value\r\n2024-01-01 00:10:00,1\r\n2024-01-01 00:00:00,2\r\n2024-01-01 00:00:00,3\r\n"
    )
    with pytest.raises(DataError, match=r"q.csv:3: timestamps not sorted"):
        load_csv(csv)
    with pytest.raises(DataError, match=r"q.csv:4: duplicate timestamp"):
        load_csv(csv, unsorted="sort")
    assert list(load_csv(csv, unsorted="sort", duplicates="keep").series()) == [2, 3, 1]
    assert list(load_csv(csv, unsorted="keep", duplicates="keep").series()) == [1, 2, 3]


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    cases = [
        ["train", "--csv", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "m.safetensors")],
        ["train", "--csv", "x.csv", "--out", "m.safetensors", "--epochs", "zero"],
    ]
    stderr = []
    for argv in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.commands.offline", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        stderr.append(proc.stderr)
    assert "absent.csv: no such file" in stderr[0]


def test_every_command_documents_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "evaluate", "export", "replay"):
        p = sub.choices[name]
        assert p.description
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
