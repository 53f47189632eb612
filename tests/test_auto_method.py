"""``--method auto``: the per-tensor choice by the output error of the INT8 layers a tensor feeds.

Every error is checked against an independent NumPy computation (1x1 convolutions and a Gemm written
as matrix products, fake quantization written out), never against the code's own numbers.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.calibrators.auto import Auto, histogram_errors
from trtquant.core.cache import read_ranges_json, read_trt_cache, scale_to_hex, write_ranges_json
from trtquant.core.errors import CacheFormatError, ConfigError
from trtquant.core.types import CalibrationStats, TensorHistogram
from trtquant.datasets import PRESETS, open_source
from trtquant.quant.auto_method import AutoPass, measure_errors
from trtquant.quant.calibrate import calibrate
from trtquant.quant.evaluate import evaluate, parse_configs
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.settings import CalibrationConfig, EvalSettings
from trtquant.quant.statistics import ranges_from_stats
from trtquant.quant.tools import show

from badinput_models import tiny_model

SINGLE = ("entropy", "minmax", "mse", "percentile")
N, HW = 64, 16


def _save(model: onnx.ModelProto, path):
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _weights():
    """1x1 conv weights (4 outputs, 2 inputs). A: channel 1 (rare outliers) weighs 100x channel 0 (the
    bulk); B: channel 1 (heavy tail) weighs 1/1000 of channel 0 (the bulk)."""
    sign = np.array([1, -1, 0.5, 2], np.float32)
    wa = np.stack([0.01 * sign, 1.0 * sign[::-1]], axis=1)[:, :, None, None].astype(np.float32)
    wb = np.stack([1.0 * sign, 0.001 * sign[::-1]], axis=1)[:, :, None, None].astype(np.float32)
    return wa, wb


def two_conv_model(path):
    """x (N, 4, 16, 16) -> Split -> a = x[:, :2] -> conv_a,  b = x[:, 2:] -> conv_b -> Concat."""
    wa, wb = _weights()
    inits = [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "split")]
    nodes = [helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1, name="split"),
             helper.make_node("Conv", ["a", "wa"], ["ya"], name="conv_a"),
             helper.make_node("Conv", ["b", "wb"], ["yb"], name="conv_b"),
             helper.make_node("Concat", ["ya", "yb"], ["y"], axis=1, name="concat")]
    g = helper.make_graph(nodes, "two_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, HW, HW])], initializer=inits)
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def two_tensor_data(path):
    """a: N(0, 1) bulk + 16 outliers of exactly +-40 (0.05 % of a); b: N(0, 1) bulk + 16 values of a
    Student-t(1.5) x 10 (a heavy tail reaching ~45)."""
    rng = np.random.default_rng(0)
    x = np.zeros((N, 4, HW, HW), np.float32)
    x[:, 0] = rng.normal(0, 1, (N, HW, HW))
    x[:, 2] = rng.normal(0, 1, (N, HW, HW))
    for ch, values in ((1, lambda k: 40 * rng.choice([-1, 1], k)), (3, lambda k: 10 * rng.standard_t(1.5, k))):
        flat = np.zeros(N * HW * HW, np.float32)
        idx = rng.choice(flat.size, 16, replace=False)
        flat[idx] = values(16)
        x[:, ch] = flat.reshape(N, HW, HW)
    np.save(path, x)
    return x


def fq(x: np.ndarray, scale) -> np.ndarray:
    """ONNX QuantizeLinear -> DequantizeLinear in float32 (round half to even, saturate to [-128, 127])."""
    scale = np.asarray(scale, np.float32)
    return (np.clip(np.round(x.astype(np.float32) / scale), -128, 127) * scale).astype(np.float32)


def per_channel(w: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    s = (np.abs(w).max(axis=reduce, keepdims=True) / np.float32(127)).astype(np.float32)
    return fq(w, s)


def conv1x1_error(x: np.ndarray, w: np.ndarray, amax: float) -> float:
    """||conv(Q_a(x), Q_w(W)) - conv(x, W)||^2 / ||conv(x, W)||^2 for a bias-free 1x1 convolution (float64)."""
    s = np.float32(amax) / np.float32(127)
    w2, wq = w[:, :, 0, 0].astype(np.float64), per_channel(w, 0)[:, :, 0, 0].astype(np.float64)
    y = np.einsum("oc,nchw->nohw", w2, x.astype(np.float64))
    yq = np.einsum("oc,nchw->nohw", wq, fq(x, s).astype(np.float64))
    return float(((yq - y) ** 2).sum() / (y ** 2).sum())


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("auto")
    x = two_tensor_data(d / "x.npy")
    two_conv_model(d / "two.onnx")
    cfg = CalibrationConfig(onnx=str(d / "two.onnx"), data=str(d / "x.npy"), method="auto", device="cpu",
                            trt_version="8.6.1")
    res = calibrate(cfg, cache_path=d / "auto.bin", stats_path=d / "s.npz", progress=False)
    return d, x, res


def test_auto_picks_per_tensor_and_beats_every_single_method_on_each_layer(two):
    d, x, res = two
    wa, wb = _weights()
    inputs = {"a": (x[:, :2], wa), "b": (x[:, 2:], wb)}
    chosen = {t: res.ranges.methods[t] for t in inputs}
    assert all(c.objective == "layer output" for c in chosen.values())
    assert chosen["a"].consumers == ("conv_a",) and chosen["b"].consumers == ("conv_b",)
    # the recorded objective is the layer's output error (checked by NumPy for every candidate)
    for t, (xt, w) in inputs.items():
        for cand in chosen[t].candidates:
            assert cand.error == pytest.approx(conv1x1_error(xt, w, cand.amax), rel=1e-4), (t, cand.label)
    # never worse than the best single method on either layer
    for t, (xt, w) in inputs.items():
        auto_err = conv1x1_error(xt, w, res.ranges.ranges[t].amax)
        single = {m: conv1x1_error(xt, w, ranges_from_stats(res.stats, CalibrationConfig(method=m)).ranges[t].amax)
                  for m in SINGLE}
        assert auto_err <= min(single.values()) * (1 + 1e-9), (t, auto_err, single)
    # and it picks differently: keep a's outliers (they drive conv_a), clip b's tail (conv_b ignores it)
    assert chosen["a"].method.label != chosen["b"].method.label
    assert res.ranges.ranges["a"].amax == pytest.approx(40.0, rel=1e-6)          # the outliers kept
    assert res.ranges.ranges["b"].amax < 5.0                                       # clipped into the bulk
    # each single method loses on one of the two layers by a wide margin
    err = {m: {t: conv1x1_error(xt, w, ranges_from_stats(res.stats, CalibrationConfig(method=m)).ranges[t].amax)
               for t, (xt, w) in inputs.items()} for m in SINGLE}
    for m in SINGLE:
        worst = max(err[m][t] / conv1x1_error(xt, w, res.ranges.ranges[t].amax) for t, (xt, w) in inputs.items())
        assert worst > 5, (m, err[m])


def test_candidates_are_the_registered_algorithms(two):
    """Each candidate's amax is exactly what that single method calibrates (one truth: the histogram algorithms)."""
    d, x, res = two
    for t, choice in res.ranges.methods.items():
        by_label = {c.label: c.amax for c in choice.candidates}
        assert list(by_label) == ["entropy", "minmax", "mse", "percentile 99.9", "percentile 99.99",
                                  "percentile 99.999"]
        for m in ("entropy", "minmax", "mse"):
            assert by_label[m] == ranges_from_stats(res.stats, CalibrationConfig(method=m)).ranges[t].amax
        for p in (99.9, 99.99, 99.999):
            ref = ranges_from_stats(res.stats, CalibrationConfig(method="percentile", percentile=p)).ranges[t].amax
            assert by_label[f"percentile {p:g}"] == ref


def test_gemm_error_against_a_hand_computation(tmp_path):
    """One Gemm layer (with bias, transB=1), three batches: E(a) summed over batches, by hand."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.5, (3, 6)).astype(np.float32)
    b = np.array([0.3, -1.0, 2.0], np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "fc.onnx")
    x = rng.standard_t(3, (40, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    source = open_source(str(tmp_path / "x.npy"), preprocess=PRESETS["imagenet"])
    amaxes = [0.5, 1.5, float(np.abs(x).max())]
    run = AutoPass(OnnxGraph.load(path), source, torch.device("cpu"), batch_size=16, progress=False)
    errors, layers, used = measure_errors(run, {"x": amaxes}, 40)
    assert used == 40 and layers == {"x": ("fc",)}
    wq = per_channel(w, 0).astype(np.float64)                   # transB=1: output channels on axis 0
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    for a, e in zip(amaxes, errors["x"]):
        yq = fq(x, np.float32(a) / np.float32(127)).astype(np.float64) @ wq.T + b
        assert e == pytest.approx(((yq - ref) ** 2).sum() / (ref ** 2).sum(), rel=1e-5)


def test_each_tensor_gets_its_objective(tmp_path):
    """Conv -> Relu -> GlobalAveragePool -> Gemm: layer inputs by their layer, the pooling input (quantized,
    no INT8 layer) by its own error on the batches, tensors no quantizer reads by their histogram."""
    path = tiny_model(tmp_path / "tiny.onnx", size=32)
    x = np.random.default_rng(2).normal(0, 1, (24, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = calibrate(CalibrationConfig(onnx=str(path), data=str(tmp_path / "x.npy"), method="auto", device="cpu",
                                      trt_version="8.6.1", auto_images=16), cache_path=tmp_path / "c.bin",
                    progress=False)
    m = res.ranges.methods
    assert (m["input"].objective, m["input"].consumers) == ("layer output", ("conv",))
    assert (m["flat"].objective, m["flat"].consumers) == ("layer output", ("fc",))
    assert m["relu_out"].objective == "tensor" and m["conv_out"].objective == "tensor (histogram)"
    relu = {}
    TorchGraphExecutor(OnnxGraph.load(path)).run({"input": torch.from_numpy(x[:16])},
                                                  observe=lambda n, v: relu.setdefault(n, v.numpy().copy()),
                                                  watch={"relu_out"})
    r = relu["relu_out"].astype(np.float64)
    for c in m["relu_out"].candidates:              # own error on the first 16 images (--auto-images)
        rq = fq(relu["relu_out"], np.float32(c.amax) / np.float32(127)).astype(np.float64)
        assert c.error == pytest.approx(((rq - r) ** 2).sum() / (r ** 2).sum(), rel=1e-4)
    h = res.stats.histograms["conv_out"]
    cands = m["conv_out"].candidates
    assert [c.error for c in cands] == list(histogram_errors(h, [c.amax for c in cands]))


def test_histogram_error_against_numeric_integration():
    """Values uniform within each bin: E[(Q_a(x) - x)^2] / E[x^2] by a dense midpoint rule."""
    h = TensorHistogram("t", amax=3.7, bin_width=1.0, counts=np.array([5.0, 2.0, 0.0, 1.0]), numel=8)
    amaxes = [0.9, 2.0, 3.7]
    got = histogram_errors(h, amaxes)
    k = 400_000
    for a, e in zip(amaxes, got):
        num = den = 0.0
        for j, (lo, hi) in enumerate([(0, 1), (1, 2), (2, 3), (3, 3.7)]):
            u = lo + (np.arange(k) + 0.5) * (hi - lo) / k
            q = np.clip(np.round(u / (a / 127)), -127, 127) * (a / 127)
            density = h.counts[j] / (hi - lo)            # the bin's count spread over its extent
            num += density * ((q - u) ** 2).mean() * (hi - lo)
            den += density * (u ** 2).mean() * (hi - lo)
        assert e == pytest.approx(num / den, rel=1e-4)
    assert int(np.argmin(got)) == 2                     # a heavy last bin: clipping at 0.9 or 2 costs more


def test_ranges_json_records_the_method_and_round_trips(two, tmp_path, capsys):
    d, x, res = two
    path = d / "auto.bin.ranges.json"
    back = read_ranges_json(path)
    assert back.method == "auto" and back.settings["candidates"][0] == "entropy"
    assert set(back.methods) == set(res.ranges.methods) and back.methods == res.ranges.methods
    doc = json.loads(path.read_text())
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["a"]["method"] == res.ranges.methods["a"].method.label == "minmax"
    assert by_name["b"]["method"] == "entropy"
    write_ranges_json(tmp_path / "again.json", back)                   # written again: the same bytes
    assert (tmp_path / "again.json").read_text() == path.read_text()
    for t in doc["tensors"]:                                           # without the choice: an older file
        t.pop("choice"), t.pop("method")
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = read_ranges_json(tmp_path / "old.json")
    assert old.methods == {} and old.amax() == back.amax()
    by_name["a"]["choice"] = {"objective": "layer output", "chosen": 9,
                              "candidates": [{"method": "minmax", "amax": 40}]}
    doc["tensors"] = list(by_name.values())
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CacheFormatError, match="bad tensor entry in ranges file"):
        read_ranges_json(tmp_path / "bad.json")
    # cache show lists every tensor's method
    rc = cli.main(["cache", "show", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "method (auto)" in out and "auto chose" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[3:]}
    assert lines["a"].split()[3] == "minmax" and "layer output" in lines["a"]
    assert lines["b"].split()[3] == "entropy"
    assert show(path) == out.rstrip("\n")


def test_cache_bits_are_the_chosen_candidate(two):
    d, x, res = two
    cache = read_trt_cache(d / "auto.bin")
    assert cache.header() == "TRT-8601-EntropyCalibration2"
    for t, choice in res.ranges.methods.items():
        expected = np.float32(np.float32(choice.method.amax) / np.float32(127))
        assert format(np.float32(cache.scales[t]).view(np.uint32), "x") == scale_to_hex(expected)
        assert np.float32(cache.scales[t]) == expected


def test_cli_auto_from_stats_and_its_errors(two, tmp_path, capsys):
    d, x, res = two
    common = ["--onnx", str(d / "two.onnx"), "--data", str(d / "x.npy"), "--trt-version", "8.6.1", "--no-progress"]
    rc = cli.main(["calibrate", "--from-stats", str(d / "s.npz"), "--method", "auto", *common,
                   "--cache", str(tmp_path / "fs.bin"), "--cache-algorithm", "MinMaxCalibration"])
    out = capsys.readouterr().out
    assert rc == 0 and "method auto" in out and "auto   chose" in out
    assert read_trt_cache(tmp_path / "fs.bin").header() == "TRT-8601-MinMaxCalibration"     # the override
    assert read_ranges_json(tmp_path / "fs.bin.ranges.json").methods == res.ranges.methods  # same stats, same data
    other = tiny_model(tmp_path / "tiny.onnx", size=16)
    rc = cli.main(["calibrate", "--from-stats", str(d / "s.npz"), "--method", "auto", "--onnx", str(other),
                   "--data", str(d / "x.npy"), "--cache", str(tmp_path / "x.bin"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "statistics are from another model" in err and not (tmp_path / "x.bin").exists()
    rc = cli.main(["calibrate", "--method", "kl", "--cache", str(tmp_path / "k.bin")])
    assert rc == 2 and "expected one of entropy, minmax, mse, percentile, auto" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs the model and calibration images"):
        ranges_from_stats(CalibrationStats.load(d / "s.npz"), CalibrationConfig(method="auto"))


def test_evaluate_int8_auto(two, tmp_path):
    """``int8:auto`` in evaluate's grammar, simulated end to end: closer to FP32 than entropy on this model."""
    d, x, res = two
    assert [s.method for s in parse_configs("fp32,int8:auto,int8:entropy")] == [None, "auto", "entropy"]
    doc = evaluate(EvalSettings(onnx=str(d / "two.onnx"), data=str(d / "x.npy"), configs="fp32,int8:entropy,int8:auto",
                                backend="torch", device="cpu", latency_iters=2, bootstrap=50),
                   tmp_path / "eval", progress=False).doc
    rows = {r.config: r for r in doc.results}
    assert rows["int8:auto"].ok and rows["int8:entropy"].ok
    assert rows["int8:auto"].sqnr_db > rows["int8:entropy"].sqnr_db + 10
    assert read_trt_cache(tmp_path / "eval" / "int8_auto" / "calib.bin").algorithm == "EntropyCalibration2"


def test_auto_settings_are_checked():
    with pytest.raises(ConfigError, match="--auto-images"):
        CalibrationConfig(method="auto", auto_images=0)
    with pytest.raises(ConfigError, match="percentile"):
        Auto(percentiles=(99.9, 101.0))
    assert CalibrationConfig(method="auto").algorithm().trt_algorithm == "EntropyCalibration2"


def test_choose_takes_the_first_minimiser_and_never_a_non_finite_error():
    from trtquant.calibrators.auto import choose
    from trtquant.core.types import RangeCandidate

    cands = [RangeCandidate("entropy", {}, 1.0), RangeCandidate("minmax", {}, 2.0),
             RangeCandidate("percentile", {"percentile": 99.9}, 2.0)]
    c = choose(cands, [float("nan"), 0.5, 0.5], objective="tensor")
    assert c.chosen == 1 and c.method.label == "minmax" and [x.error for x in c.candidates][1:] == [0.5, 0.5]
    assert choose(cands, [float("inf"), 3.0, 0.1], objective="tensor").method.label == "percentile 99.9"
    with pytest.raises(ConfigError, match="one error per candidate"):
        choose(cands, [1.0], objective="tensor")
