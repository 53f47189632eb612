"""Evaluator and reports: metrics on hand-computed cases, a report from a recorded results JSON,
and `evaluate` end to end on the embedded default with two backends (interrupt + resume included)."""

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from trtquant import cli
from trtquant.quant import evaluate as ev
from trtquant.core import metrics
from trtquant.core.errors import ConfigError
from trtquant.reports.render import html_report, load_results, markdown

RECORDED = Path(__file__).parent / "data" / "results_mobilenet_ort.json"


# --- metrics ----------------------------------------------------------------------------------

def test_topk_and_agreement_hand_computed():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, -1])
    assert metrics.topk_correct(logits, labels, 1).tolist() == [True, False, False]
    assert metrics.topk_correct(logits, labels, 2).tolist() == [True, True, False]   # unknown label never counts
    ref = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 0]], float)
    assert metrics.agreement(logits, ref).tolist() == [True, True, False]
    assert metrics.sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 3.0])) == pytest.approx(10 * np.log10(25 / 1))
    assert metrics.mean_cosine(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])) == 0.0


def test_paired_bootstrap_interval_width():
    # FP32 right on all 400 images, candidate wrong on 40: drop 10 pp. The paired differences are
    # Bernoulli(0.1), so the 95% interval is about 10 +- 1.96 * sqrt(0.1 * 0.9 / 400) * 100 = 10 +- 2.94 pp.
    ref = np.ones(400, bool)
    cand = np.ones(400, bool)
    cand[::10] = False
    d = metrics.paired_bootstrap_drop(ref, cand, samples=4000, seed=1)
    assert d.points == pytest.approx(10.0)
    assert d.hi - d.lo == pytest.approx(2 * 2.94, abs=0.8)
    assert not d.within_noise
    same = metrics.paired_bootstrap_drop(ref, ref)
    assert (same.points, same.lo, same.hi) == (0.0, 0.0, 0.0) and same.within_noise
    # a single flip on 20 images is noise
    c = np.ones(20, bool)
    c[3] = False
    assert metrics.paired_bootstrap_drop(np.ones(20, bool), c).within_noise


def test_pareto_front_hand_computed():
    lat = [1.0, 2.0, 1.5, 3.0, 0.5]
    acc = [0.70, 0.80, 0.69, 0.85, 0.60]
    # 0.5->0.60, 1.0->0.70, 2.0->0.80, 3.0->0.85 are on the front; (1.5, 0.69) is beaten by (1.0, 0.70)
    assert metrics.pareto_front(lat, acc) == [4, 0, 1, 3]


def test_config_parsing():
    specs = ev.parse_configs("fp32,fp16,int8:minmax,int8")
    assert [s.name for s in specs] == ["fp32", "fp16", "int8:minmax", "int8:entropy"]
    with pytest.raises(ConfigError, match="unknown configuration.*int8:kl.*expected one of fp32, tf32, fp16, bf16, int8:entropy"):
        ev.parse_configs("fp32,int8:kl")
    with pytest.raises(ConfigError, match="plan file not found"):
        ev.parse_configs("missing_plan.json")


# --- reports from a recorded results JSON ------------------------------------------------------

class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_from_recorded_json():
    doc = load_results(RECORDED)
    md = markdown(doc)
    assert "| fp32 | onnxruntime | cpu | 90.00 | 100.00 | 100.0 |" in md
    assert "| fp16 | onnxruntime | failed: ONNX Runtime's CPU provider has no FP16 convolution kernels" in md
    assert "(within noise)" in md and "QLinearConv" in md and "trtexec --onnx=" in md
    assert "Ship **fp32**" in md
    page = html_report(doc)
    p = _Collect()
    p.feed(page)
    circles = [a for t, a in p.tags if t == "circle"]
    assert len(circles) == 3                                     # one per successful engine
    assert sum("front" in a.get("class", "") for a in circles) == 1   # only fp32: fastest and most accurate
    assert any(t == "svg" for t, _ in p.tags) and any(t == "polyline" for t, _ in p.tags) is False  # one front point
    # self-contained: nothing loaded from elsewhere
    assert not any("src" in a or "href" in a for _, a in p.tags) and "<script" not in page


def test_report_cli_rerenders(tmp_path, capsys):
    assert cli.main(["report", str(RECORDED), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "report.md").read_text() == markdown(load_results(RECORDED))
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert cli.main(["report", str(bad)]) == 2
    assert "evaluation results file" in capsys.readouterr().err


# --- end to end ----------------------------------------------------------------------------------

SMALL = dict(latency_iters=5, batch_size=8, bootstrap=500)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_evaluate_end_to_end_on_the_embedded_default(tmp_path, backend):
    settings = ev.EvalSettings(configs="fp32,fp16,int8:entropy,int8:minmax", backend=backend, device="cpu", **SMALL)
    res = ev.evaluate(settings, tmp_path / "out", progress=False)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["config"]: r for r in doc["results"]}
    assert list(rows) == ["fp32", "fp16", "int8:entropy", "int8:minmax"]
    assert doc["data"]["images"] == 20 and doc["data"]["labelled"] and doc["metric"] == "top-1"
    assert rows["fp32"]["top1"] == pytest.approx(0.9) and rows["fp32"]["drop_pp"]["points"] == 0
    if backend == "onnxruntime":
        assert rows["fp16"]["status"] == "failed" and "FP16" in rows["fp16"]["reason"]
        assert not rows["int8:entropy"]["engine"]["simulated"]
    else:
        assert rows["fp16"]["status"] == "ok" and rows["int8:entropy"]["engine"]["simulated"]
    for name in ("int8:entropy", "int8:minmax"):
        r = rows[name]
        assert r["status"] == "ok" and 0.5 <= r["agreement"] <= 1 and r["sqnr_db"] > 5
        assert r["drop_pp"]["ci95"][0] <= r["drop_pp"]["points"] <= r["drop_pp"]["ci95"][1]
        assert r["latency_ms"]["p50"] > 0 and r["throughput"]["images_per_s"] > 0
    assert doc["recommendation"]["target_drop_pp"] == 0.5
    # an INT8 configuration's size is its real INT8 artifact (int8 weights), well below FP32's float weights
    assert rows["int8:entropy"]["engine_bytes"] < rows["fp32"]["engine_bytes"] / 3
    # every trtexec line names files this run wrote, under OUT/<config>/
    for r in rows.values():
        if r["status"] != "ok":
            continue
        for line in r["trtexec"]:
            onnx_arg = next(a for a in line.split() if a.startswith("--onnx="))[len("--onnx="):]
            assert Path(onnx_arg).is_file(), line
    assert (tmp_path / "out" / "int8_entropy" / "calib.bin").read_text(errors="replace").startswith("TRT-")
    if backend == "torch":
        # simulated engines are labelled in the report, kept off the Pareto front, never win the speed ranking
        md = (tmp_path / "out" / "report.md").read_text()
        row = next(line for line in md.splitlines() if line.startswith("| int8:entropy (simulated)"))
        assert "simulated |" in row and not row.rstrip().endswith("* |")
        assert doc["recommendation"]["config"] in (None, "fp32", "fp16")
        assert "int8" not in (doc["recommendation"]["config"] or "")
    assert set(res.files) == {"report.md", "report.html", "results.json"}
    assert doc["environment"]["onnxruntime"] and doc["model"]["fingerprint"] and doc["data"]["fingerprint"]


def test_interrupted_evaluation_keeps_finished_rows_and_resumes(tmp_path, monkeypatch):
    settings = ev.EvalSettings(configs="fp32,int8:entropy,int8:percentile", device="cpu", **SMALL)
    from trtquant.quant.engines import registry as backends

    real_build = backends.build
    calls = []

    def flaky(backend, graph, plan, ranges=None, **kw):
        calls.append(plan.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_build(backend, graph, plan, ranges, **kw)

    monkeypatch.setattr(backends, "build", flaky)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(settings, tmp_path / "o", progress=False)
    doc = json.loads((tmp_path / "o" / "results.partial.json").read_text())
    assert [r["config"] for r in doc["results"]] == ["fp32"]            # what finished is kept
    assert not (tmp_path / "o" / "results.json").exists()              # no incomplete set in its place
    calls.clear()
    monkeypatch.setattr(backends, "build", real_build)
    res = ev.evaluate(settings, tmp_path / "o", resume=True, progress=False)
    assert [r.config for r in res.doc.results] == ["fp32", "int8:entropy", "int8:percentile"]


def test_evaluate_cli_bad_config(tmp_path, capsys):
    rc = cli.main(["evaluate", "--configs", "fp32,int4", "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown configuration | --configs: got 'int4'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
