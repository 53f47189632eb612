"""Accuracy recovery (quant/recover.py): bias correction against a hand computation, AdaRound on real MobileNetV2
layers and images, cross-layer equalization's exactness and equalised ranges, the written model's names and
weight grid, the verbs end to end on the tiny model, and bad input."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core.cache import read_ranges_json, read_trt_cache
from trtquant.core.numerics import fake_quant
from trtquant.core.types import RangeSet, TensorRange
from trtquant.datasets import open_source
from trtquant.quant.artifacts.lint import lint_model
from trtquant.quant.artifacts.placement import weight_scales
from trtquant.quant.graph.interpreter import OPS, TorchGraphExecutor
from trtquant.quant.graph.models import resolve_model
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.planner.simulate import QuantSim
from trtquant.quant.recover import RecoverySettings, describe, equalize, parse_recovery, recover, recover_layers
from trtquant.quant.settings import CalibrationConfig
from trtquant.quant.statistics import ranges_from_stats, statistics

CPU = torch.device("cpu")


def run_cli(args, capsys):
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _inits(graph: OnnxGraph) -> dict[str, np.ndarray]:
    return {i.name: np.array(numpy_helper.to_array(i)) for i in graph.model.graph.initializer}


def _chain(convs, acts, *, seed=0, size=8, in_ch=3) -> OnnxGraph:
    """input -> Conv -> act -> Conv -> ... (3x3, pad 1, seeded weights whose output channels have ranges spread
    over two decades); ``convs`` = [(out_channels, group)], ``acts`` = the op between consecutive convs
    (Relu | Relu6 | None)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, c = [], [], "input", in_ch
    for i, (co, group) in enumerate(convs):
        w = rng.standard_normal((co, c // group, 3, 3)).astype(np.float32)
        w *= np.logspace(-1, 1, co, dtype=np.float32)[rng.permutation(co)][:, None, None, None]
        b = (0.1 * rng.standard_normal(co)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"y{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                      group=group))
        prev, c = f"y{i}", co
        if i < len(convs) - 1 and acts[i]:
            if acts[i] == "Relu6":
                inits += [numpy_helper.from_array(np.array(0, np.float32), f"lo{i}"),
                          numpy_helper.from_array(np.array(6, np.float32), f"hi{i}")]
                nodes.append(helper.make_node("Clip", [prev, f"lo{i}", f"hi{i}"], [f"a{i}"], name=f"act{i}"))
            else:
                nodes.append(helper.make_node("Relu", [prev], [f"a{i}"], name=f"act{i}"))
            prev = f"a{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_ch, size, size])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", c, size, size])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return OnnxGraph(model)


def _run(graph: OnnxGraph, x: np.ndarray) -> np.ndarray:
    return TorchGraphExecutor(graph).run({"input": torch.from_numpy(x)})[graph.outputs[0]].numpy()


# --- bias correction against a hand computation ---------------------------------------------------------

def _np_conv(x, w, b):
    """3x3, stride 1, pad 1, group 1: the sum over kernel offsets, by hand."""
    n, _, hh, ww = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], hh, ww), np.float32)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + hh, j:j + ww], w[:, :, i, j]).astype(np.float32)
    return out + b[None, :, None, None]


def _np_fq(x, s):
    """Symmetric INT8 fake quantization, round half to even (ONNX QuantizeLinear)."""
    return (np.clip(np.round(x / s), -128, 127) * s).astype(np.float32)


def _np_fq_weight(w):
    s = (np.abs(w).reshape(len(w), -1).max(1) / np.float32(127)).astype(np.float32)[:, None, None, None]
    return _np_fq(w, s)


def test_bias_correction_equals_the_hand_computed_sequential_correction():
    g = _chain([(6, 1), (4, 1)], ["Relu"], seed=1)
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    w = _inits(g)
    y0 = _np_conv(x, w["w0"], w["b0"])
    # coarse, clipping ranges: the INT8 layers are biased, so the corrections are large
    ranges = RangeSet({"input": TensorRange("input", 0.6 * float(np.abs(x).max())),
                       "a0": TensorRange("a0", 0.5 * float(np.maximum(y0, 0).max()))}, "hand")
    sx, sa = np.float32(ranges.ranges["input"].scale), np.float32(ranges.ranges["a0"].scale)

    out, report = recover_layers(g, ranges, x, RecoverySettings(steps=("bias",)), CPU, progress=False)

    # layer 0 feeds a Relu whose output layer 1 reads quantized (clipped at 127 * sa): c0 minimises the error
    # after both, sum (relu(y_fp32) - clip(y_int8 + c0, 0, 127 sa))^2 per channel; its stationary point:
    # c0 = mean of relu(y_fp32) - y_int8 over the positions where 0 < y_int8 + c0 < 127 sa
    q0 = _np_conv(_np_fq(x, sx), _np_fq_weight(w["w0"]), w["b0"])
    top = 127 * float(sa)

    def inside(c):
        y = q0 + c[None, :, None, None]
        return (y > 0) & (y < top)

    c0 = np.zeros(q0.shape[1], np.float64)
    for _ in range(50):
        live = inside(c0)
        c0 = np.where(live, np.maximum(y0, 0) - q0, 0).sum(axis=(0, 2, 3)) / live.sum(axis=(0, 2, 3))
    assert np.allclose(np.where(inside(c0), np.maximum(y0, 0) - q0 - c0[None, :, None, None], 0).sum(axis=(0, 2, 3)),
                       0, atol=1e-3)                                  # the fixed point, reached
    plain = (y0 - q0).mean(axis=(0, 2, 3))                            # E[y_fp32 - y_int8]: the error before the Relu

    def after_error(c):
        return float(((np.maximum(y0, 0) - np.clip(q0 + c[None, :, None, None], 0, top)) ** 2).sum())
    # less error after the activation than the plain mean's (which here adds error) or none
    assert after_error(c0) < min(after_error(plain), after_error(np.zeros_like(c0)))
    assert after_error(plain) > after_error(np.zeros_like(c0))       # the case the plain mean gets wrong
    # layer 1 (no activation: the plain mean) sees the corrected layer 0: its INT8 input is relu(q0 + c0)
    y1 = _np_conv(np.maximum(y0, 0), w["w1"], w["b1"])

    def c1_from(a_q):
        return (y1 - _np_conv(_np_fq(a_q, sa), _np_fq_weight(w["w1"]), w["b1"])).mean(axis=(0, 2, 3))

    c1, c1_naive = c1_from(np.maximum(q0 + c0[None, :, None, None], 0)), c1_from(np.maximum(q0, 0))
    got = _inits(out)
    assert np.abs(c0).max() > 1e-2 and np.abs(c1).max() > 1e-2          # the test measures something
    np.testing.assert_allclose(got["b0"] - w["b0"], c0, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["b1"] - w["b1"], c1, rtol=1e-3, atol=1e-6)
    assert not np.allclose(got["b1"] - w["b1"], c1_naive, rtol=1e-2)    # sequential: not from the uncorrected input
    assert [r.bias_shift for r in report.layers] == pytest.approx([np.abs(c0).max(), np.abs(c1).max()], rel=1e-3)
    np.testing.assert_array_equal(got["w0"], w["w0"])                 # bias correction alone keeps the weights
    # the corrected INT8 model is unbiased on these images: its output's error has zero mean per channel
    sim = QuantSim(out, ranges, CPU)
    err = sim.logits(x, set(sim.layers)) - _run(g, x)
    assert np.abs(err.mean(axis=(0, 2, 3))).max() < 1e-4


# --- AdaRound on real layers and images -------------------------------------------------------------------

CUT = "/features/features.2/conv/conv.2/Conv_output_0"      # MobileNetV2's first 6 INT8 layers (conv, dw, 1x1)


@pytest.fixture(scope="module")
def adarounded(mobilenet, sample_images, tmp_path_factory):
    """MobileNetV2 up to features.2, AdaRound on 12 of the bundled images; the other 8 are held out."""
    src = mobilenet.graph.model
    nodes = []
    for n in src.graph.node:                                  # topologically sorted: every node up to the cut
        nodes.append(n)
        if CUT in n.output:
            break
    used = {i for n in nodes for i in n.input}
    g = OnnxGraph(helper.make_model(
        helper.make_graph(nodes, "head", list(src.graph.input[:1]),
                          [helper.make_tensor_value_info(CUT, TensorProto.FLOAT, None)],
                          [i for i in src.graph.initializer if i.name in used]), opset_imports=src.opset_import))
    x = sample_images[0]
    path = tmp_path_factory.mktemp("ada") / "train.npy"
    np.save(path, x[:12])
    cfg = CalibrationConfig(method="mse", device="cpu")
    ranges = ranges_from_stats(statistics(g, open_source(str(path), preprocess=mobilenet.preprocess()), cfg, CPU,
                                          progress=False), cfg)
    out, report = recover_layers(g, ranges, x[:12], RecoverySettings(steps=("adaround",), adaround_iters=150), CPU,
                                 progress=False)
    return g, out, ranges, report, x[12:]


def _layer_inputs(graph, x, ranges=None):
    """Every Conv's input on ``x``: FP32 (no ranges) or in the all-INT8 model, fake-quantized as the layer reads it."""
    convs = [n for n in graph.model.graph.node if n.op_type == "Conv"]
    seen = {}
    if ranges is None:
        ex, edges = TorchGraphExecutor(graph), None
    else:
        sim = QuantSim(graph, ranges, CPU)
        ex, edges = sim.ex, sim.edges(sim.layers)
    ex.run({"input": torch.from_numpy(x)}, observe=lambda n, v: seen.__setitem__(n, v.clone()),
           watch={n.input[0] for n in convs}, edges=edges)
    if ranges is not None:
        seen = {n: fake_quant(v, ranges.ranges[n].scale) for n, v in seen.items()}
    return convs, seen


def test_adaround_reduces_every_layers_output_error_on_held_out_images(adarounded):
    g, out, ranges, report, held = adarounded
    convs, x_fp = _layer_inputs(g, held)
    _, x_q = _layer_inputs(out, held, ranges)          # the recovered INT8 model: upstream layers recovered too
    ex = TorchGraphExecutor(g)
    attrs = {n.name: a for n, a, _ in ex.nodes}
    w0, w1 = _inits(g), _inits(out)
    assert len(convs) == 6 and len(report.layers) == 6
    for node in convs:
        wname, bname = node.input[1], node.input[2]
        w, b = torch.from_numpy(w0[wname]), torch.from_numpy(w0[bname])
        s = torch.from_numpy(weight_scales(w0[wname], 0)).reshape(-1, 1, 1, 1)
        def error(ww, b=b, w=w, a=attrs[node.name], x=node.input[0]):
            """Output error (summed over channels, mean over positions) of the INT8 layer with weights ``ww``."""
            return float((OPS["Conv"](x_q[x], ww, b, **a) - OPS["Conv"](x_fp[x], w, b, **a)).pow(2).sum(1).mean())

        e_near, e_ada = error(fake_quant(w, s)), error(torch.from_numpy(w1[wname]))
        assert e_ada < e_near, f"{node.name}: held-out error {e_ada:.5g} with AdaRound vs {e_near:.5g} nearest"
        # its integers: the floor or the ceiling of W / s, so within 1 of nearest, and some not nearest
        q_near = torch.round(w / s).clamp(-127, 127)
        q_ada = torch.round(torch.from_numpy(w1[wname]) / s)
        assert (q_ada - q_near).abs().max() <= 1 and (q_ada != q_near).any()
    for r in report.layers:                               # its own objective, on the images it learned from
        assert r.rounding_error[1] < r.rounding_error[0] and 0 < r.flipped < 0.5, r


def test_written_model_has_the_same_names_and_weights_on_the_grid_bit_exactly(adarounded):
    g, out, ranges, _, _ = adarounded
    assert [list(n.output) for n in out.model.graph.node] == [list(n.output) for n in g.model.graph.node]
    assert out.calibration_tensors == g.calibration_tensors and out.outputs == g.outputs
    assert [i.name for i in out.inputs] == [i.name for i in g.inputs]
    before, after = _inits(g), _inits(out)
    sim = QuantSim(out, ranges, CPU)                       # what the shipped placement does with the written weights
    for q in sim.placement(sim.layers).weights():
        w = after[q.tensor]
        s = weight_scales(w, q.axis)
        np.testing.assert_array_equal(s, weight_scales(before[q.tensor], q.axis))      # max|W_c| kept: same scale
        shape = [1] * w.ndim
        shape[q.axis] = -1
        q_int = np.round(w / s.reshape(shape))
        assert np.abs(q_int).max() <= 127
        np.testing.assert_array_equal((s.reshape(shape) * q_int).astype(np.float32), w)    # W' = s * q exactly
        wt = torch.from_numpy(w)                                       # so fake quantization is the identity
        assert torch.equal(fake_quant(wt, torch.from_numpy(s).reshape(shape)), wt)


# --- cross-layer equalization -------------------------------------------------------------------------------

def _ranges_out(w):
    return np.abs(w).reshape(len(w), -1).max(1)


def _ranges_in(w, depthwise=False):
    return _ranges_out(w) if depthwise else np.abs(w).transpose(1, 0, 2, 3).reshape(w.shape[1], -1).max(1)


def test_cle_is_exact_in_fp32_and_equalises_the_hand_computed_scales():
    g = _chain([(8, 1), (5, 1)], ["Relu"], seed=3)
    x = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(np.float32)
    eq, report = equalize(g)
    w, v = _inits(g), _inits(eq)
    r1, r2 = _ranges_out(w["w0"]), _ranges_in(w["w1"])
    s = np.sqrt(r1 * r2) / r2                                               # DFQ: s_i = sqrt(r1_i r2_i) / r2_i
    assert s.max() / s.min() > 5                                            # the channels were far from equal
    np.testing.assert_allclose(v["w0"], w["w0"] / s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(v["b0"], w["b0"] / s, rtol=1e-6)
    np.testing.assert_allclose(v["w1"], w["w1"] * s[None, :, None, None], rtol=1e-6)
    np.testing.assert_allclose(_ranges_out(v["w0"]), _ranges_in(v["w1"]), rtol=1e-6)   # equalised
    np.testing.assert_allclose(_ranges_out(v["w0"]), np.sqrt(r1 * r2), rtol=1e-6)
    ref, got = _run(g, x), _run(eq, x)
    assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)
    assert report.cle_pairs == 1 and [n.output for n in eq.model.graph.node] == [n.output for n in g.model.graph.node]


def test_cle_through_a_depthwise_chain_converges_and_stays_exact():
    g = _chain([(8, 1), (8, 8), (4, 1)], ["Relu", "Relu"], seed=5)
    x = np.random.default_rng(6).standard_normal((4, 3, 8, 8)).astype(np.float32)
    eq, report = equalize(g)
    v = _inits(eq)
    assert report.cle_pairs == 2
    np.testing.assert_allclose(_ranges_out(v["w0"]), _ranges_in(v["w1"], depthwise=True), rtol=1e-4)
    np.testing.assert_allclose(_ranges_out(v["w1"]), _ranges_in(v["w2"]), rtol=1e-4)
    ref, got = _run(g, x), _run(eq, x)
    assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)


def test_cle_skips_relu6_unless_allowed_to_replace_it():
    g = _chain([(8, 1), (5, 1)], ["Relu6"], seed=3)
    eq, report = equalize(g)
    assert report.cle_pairs == 0 and "ReLU6 is not scale-equivariant" in report.cle_skipped[0]
    for name, value in _inits(g).items():
        np.testing.assert_array_equal(_inits(eq)[name], value)
    eq, report = equalize(g, replace_relu6=True)
    act = next(n for n in eq.model.graph.node if n.name == "act0")
    assert report.cle_pairs == 1 and report.relu6_replaced == ("act0",) and act.op_type == "Relu"
    assert list(act.output) == ["a0"]
    x = 3 * np.random.default_rng(7).standard_normal((4, 3, 8, 8)).astype(np.float32)
    relu = _run(_chain([(8, 1), (5, 1)], ["Relu"], seed=3), x)                 # same weights, ReLU instead of ReLU6
    relu6 = _run(g, x)
    got = _run(eq, x)
    assert np.linalg.norm(got - relu) <= 1e-5 * np.linalg.norm(relu) < np.linalg.norm(relu6 - relu)


# --- the verbs, end to end on the tiny model -----------------------------------------------------------------

def test_calibrate_recover_writes_the_recovered_model_its_cache_ranges_and_qdq(tmp_path, capsys):
    rc, out, err = run_cli(["calibrate", "--model", "tiny_cnn", "--device", "cpu", "--no-progress", "--method", "mse",
                            "--recover", "bias+adaround+cle", "--cle-replace-relu6", "--adaround-iters", "30",
                            "--cache", tmp_path / "c.bin", "--onnx-out", tmp_path / "m.onnx",
                            "--qdq-out", tmp_path / "q.onnx"], capsys)
    assert rc == 0, err
    assert "recover cle" in out and "adaround" in out and "bias" in out
    original = resolve_model("tiny_cnn").graph
    model = OnnxGraph.load(tmp_path / "m.onnx")
    ranges = read_ranges_json(tmp_path / "c.bin.ranges.json")
    meta = ranges.meta["recovery"]
    assert meta["steps"] == ["cle", "adaround", "bias"] and meta["order"] == "cle -> adaround -> bias -> ranges"
    assert meta["relu6_replaced"] and len(meta["layers"]) == len(QuantSim(model, ranges, CPU).layers)
    assert ranges.model_fingerprint == model.fingerprint() != original.fingerprint()
    # same tensor names: the cache matches the recovered model as it matched the original
    assert model.calibration_tensors == original.calibration_tensors
    assert list(read_trt_cache(tmp_path / "c.bin").scales) == model.calibration_tensors
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    assert not [f for f in lint_model(qdq) if f.severity == "error"]
    assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.ranges.json", "m.onnx", "q.onnx"]


def test_calibrate_with_learned_ranges_alone_needs_no_new_model(tmp_path, capsys):
    """Learned ranges leave the weights as they are: no --onnx-out needed, the cache is for the model itself."""
    rc, out, err = run_cli(["calibrate", "--model", "tiny_cnn", "--device", "cpu", "--no-progress", "--recover",
                            "ranges", "--range-steps", "5", "--cache", tmp_path / "c.bin"], capsys)
    assert rc == 0, err
    ranges = read_ranges_json(tmp_path / "c.bin.ranges.json")
    assert ranges.meta["recovery"]["steps"] == ["ranges"]
    assert ranges.model_fingerprint == resolve_model("tiny_cnn").graph.fingerprint()
    assert "the weights are unchanged" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.ranges.json"]


def test_evaluate_and_sweep_start_from_the_recovered_model(tmp_path, capsys):
    rc, _, err = run_cli(["evaluate", "--model", "tiny_cnn", "--backend", "torch", "--device", "cpu",
                            "--configs", "fp32,int8:mse,int8:mse+bias", "--calib-images", "10", "--latency-iters", "2",
                            "--no-progress", "--out", tmp_path / "e"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "e" / "results.json").read_text())
    rows = {r["config"]: r for r in doc["results"]}
    assert rows["int8:mse+bias"]["status"] == "ok" and rows["int8:mse"]["sqnr_db"] != rows["int8:mse+bias"]["sqnr_db"]
    arts = rows["int8:mse+bias"]["artifacts"]
    assert read_ranges_json(arts["ranges"]).meta["recovery"]["steps"] == ["bias"]
    original = resolve_model("tiny_cnn").graph
    recovered = OnnxGraph.load(arts["onnx"])
    assert recovered.calibration_tensors == original.calibration_tensors
    # the Q/DQ model TensorRT builds is the recovered one's: its biases are the corrected ones
    qdq = _inits(OnnxGraph(onnx.load(arts["qdq"])))
    conv = next(n for n in original.model.graph.node if n.op_type == "Conv")
    np.testing.assert_array_equal(qdq[conv.input[2]], _inits(recovered)[conv.input[2]])
    assert not np.array_equal(qdq[conv.input[2]], _inits(original)[conv.input[2]])
    assert any(arts["qdq"] in line for line in rows["int8:mse+bias"]["trtexec"])
    rc, _, err = run_cli(["sweep", "--model", "tiny_cnn", "--device", "cpu", "--target-drop", "agree:50%",
                            "--recover", "bias", "--calib-images", "10", "--proxy-images", "8", "--no-progress",
                            "--out", tmp_path / "s"], capsys)
    assert rc == 0, err
    sw = json.loads((tmp_path / "s" / "sweep.json").read_text())
    model = OnnxGraph.load(tmp_path / "s" / "model.onnx")
    assert sw["model"]["fingerprint"] == model.fingerprint() and "recovered by bias" in sw["calibration"]
    assert any(str(tmp_path / "s" / "model.onnx") in line for line in sw["trtexec"])


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["calibrate", "--recover", "bias"], "--onnx-out is required"),
    (["calibrate", "--recover", "bias+round", "--onnx-out", "m.onnx"], "unknown recovery step | --recover: got 'bias+round'"),
    (["calibrate", "--recover", "bias+bias", "--onnx-out", "m.onnx"], "recovery step listed twice"),
    (["calibrate", "--recover", "", "--onnx-out", "m.onnx"], "unknown recovery step"),
    (["calibrate", "--adaround-iters", "10"], "recovery settings without a recovery step | --adaround-iters"),
    (["calibrate", "--recover", "bias", "--cle-replace-relu6", "--onnx-out", "m.onnx"], "--cle-replace-relu6 has no effect"),
    (["calibrate", "--recover", "bias", "--range-steps", "5", "--onnx-out", "m.onnx"], "--range-steps has no effect"),
    (["calibrate", "--range-steps", "5"], "recovery settings without a recovery step | --range-steps"),
    (["calibrate", "--recover", "bias", "--onnx-out", "m.onnx", "--from-stats", "s.npz"], "--recover with --from-stats"),
    (["evaluate", "--configs", "fp32,int8:mse+bogus", "--out", "e"], "unknown recovery step | --configs int8:mse+bogus"),
    (["evaluate", "--configs", "fp32,int8:mse+bias", "--cle-replace-relu6", "--out", "e"], "--cle-replace-relu6"),
    (["sweep", "--recover", "bias", "--ranges", "r.json", "--out", "s"], "--recover with --ranges"),
])
def test_bad_recovery_input_is_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "s.npz").write_bytes(b"")
    if args[0] == "calibrate":
        args = args + ["--cache", "c.bin", "--no-progress"]
    rc, _, err = run_cli(args, capsys)
    assert rc == 2 and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "s.npz"]


def test_recovery_steps_parse_in_application_order_and_the_help_states_the_defaults():
    assert parse_recovery("bias+cle+adaround") == ("cle", "adaround", "bias") and parse_recovery(None) == ()
    assert parse_recovery("ranges+bias") == ("bias", "ranges")
    text = cli.build_parser()._subparsers._group_actions[0].choices["calibrate"].format_help()
    d = RecoverySettings()
    assert f"(default: {d.layer_images} for adaround and bias, {d.range_images} for ranges)" in " ".join(text.split())
    assert RecoverySettings(steps=("bias", "ranges")).images_needed == d.range_images
    assert f"learned ranges (default: {d.range_steps})" in " ".join(text.split())
    assert RecoverySettings(steps=("cle", "adaround"), images=40).images_for("ranges") == 40
    assert f"steps per layer, on every device (default: {d.adaround_iters})" in " ".join(text.split())


def test_shipped_ranges_are_those_the_layerwise_steps_learned_against(adarounded, sample_images):
    """After adaround/bias the model ships with the ranges its rounding compensated (recalibrating moves them);
    after CLE alone it is calibrated again. Either way the ranges carry the recovered model's fingerprint."""
    g, _, ranges, _, _ = adarounded
    x = sample_images[0][:12]
    calls = []

    def calibrate(graph):
        calls.append(graph.fingerprint())
        return replace(ranges, ranges={n: TensorRange(n, r.amax * 2) for n, r in ranges.ranges.items()})

    rec = recover(g, RecoverySettings(steps=("adaround",), adaround_iters=20), ranges_of=lambda _: ranges,
                  images=lambda: x, device=CPU, progress=False)
    shipped = rec.shipped_ranges(calibrate)
    assert calls == [] and rec.ranges is ranges
    assert {n: r.amax for n, r in shipped.ranges.items()} == {n: r.amax for n, r in ranges.ranges.items()}
    assert shipped.model_fingerprint == rec.graph.fingerprint() != g.fingerprint()
    assert list(shipped.meta["recovery"]["steps"]) == ["adaround"] and "started from" in shipped.meta["ranges_of"]
    cle = recover(g, RecoverySettings(steps=("cle",)), ranges_of=lambda _: ranges, images=lambda: x, device=CPU,
                  progress=False)
    again = cle.shipped_ranges(calibrate)
    assert cle.ranges is None and calls == [cle.graph.fingerprint()]
    assert all(again.ranges[n].amax == ranges.ranges[n].amax * 2 for n in ranges.ranges)


# --- learned ranges (quant/range_learning.py) --------------------------------------------------------------

def test_the_scale_gradient_is_lsq_straight_through_by_hand():
    """d/ds [clamp(round(x / s), -128, 127) s] = round(x / s) - x / s inside the range, the bound outside."""
    from trtquant.quant.range_learning import _ste_fake_quant

    s = torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([0.3, -1.26, 10.0, 70.0, -80.0])
    _ste_fake_quant(x, s).sum().backward()
    v = x.numpy() / 0.5
    hand = [np.round(v[0]) - v[0], np.round(v[1]) - v[1], np.round(v[2]) - v[2], 127.0, -128.0]
    assert np.allclose(s.grad.numpy(), sum(hand), atol=1e-5)
    y = _ste_fake_quant(x, torch.tensor(0.5))
    assert torch.equal(y, fake_quant(x, 0.5))                          # the forward is the shipped fake quant


def test_the_objective_is_kl_for_a_classifier_and_relative_squared_error_otherwise_by_hand():
    from trtquant.quant.range_learning import _loss

    ref, out = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[1.0, 1.0, -1.0]])
    p, q = np.exp([2.0, 0.0, -1.0]), np.exp([1.0, 1.0, -1.0])
    p, q = p / p.sum(), q / q.sum()
    assert abs(float(_loss(out, ref)) - float((p * np.log(p / q)).sum())) < 1e-12
    ref4, out4 = torch.ones(2, 3, 2, 2), torch.ones(2, 3, 2, 2) * 1.5
    assert abs(float(_loss(out4, ref4)) - 0.25) < 1e-12                 # mean (0.5^2) / mean (1^2)


def _learning_case(tmp_path):
    g = _chain([(8, 1), (8, 1), (6, 1)], ["Relu", "Relu"], seed=3)
    x = np.random.default_rng(0).standard_normal((60, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cfg = CalibrationConfig(method="minmax", device="cpu")
    src = open_source(str(tmp_path / "x.npy"), preprocess=resolve_model("tiny_cnn").preprocess())
    ranges = ranges_from_stats(statistics(g, src, cfg, CPU, progress=False), cfg)
    return g, x, ranges


def test_learned_ranges_mend_a_bad_range_and_improve_held_out_images(tmp_path):
    """One activation's amax 30x too large (its quantization noise dominates): learning the ranges end to end
    shrinks it, raises the SQNR of images it never trained on, and ships through the ordinary ranges/cache."""
    from trtquant.quant.range_learning import learn_ranges

    g, x, ranges = _learning_case(tmp_path)
    bad = "a0"
    start = replace(ranges, ranges={**ranges.ranges, bad: TensorRange(bad, ranges.ranges[bad].amax * 30)})
    learned, rep = learn_ranges(g, start, x, CPU, steps=150, lr=2e-2, batch=16, progress=False)
    assert rep.kept == "learned" and rep.train_images == 48 and rep.held_out_images == 12
    before, after = rep.held_out_sqnr_db
    assert after > before + 6, rep
    assert learned.ranges[bad].amax < start.ranges[bad].amax / 3
    assert set(learned.ranges) == set(start.ranges) and learned.method == "minmax+learned"
    held = x[4::5]                                   # the held-out fifth, through the shipped simulation

    def sqnr(r):
        ref = _run(g, held)
        out = QuantSim(g, r, CPU).logits(held, set(QuantSim(g, r, CPU).layers))
        return 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum())
    assert sqnr(learned) > sqnr(start) + 6
    assert abs(sqnr(learned) - after) < 0.01        # what it measured is what ships


def test_learned_ranges_are_dropped_when_held_out_images_do_not_improve(tmp_path):
    from trtquant.quant.range_learning import learn_ranges

    g, x, ranges = _learning_case(tmp_path)
    same, rep = learn_ranges(g, ranges, x, CPU, steps=0, progress=False)       # nothing learned: not better
    assert rep.kept == "starting" and same.ranges == ranges.ranges and same.method == "minmax"


def test_recover_ranges_ships_the_learned_ranges_with_their_report(tmp_path):
    g, x, ranges = _learning_case(tmp_path)
    rec = recover(g, RecoverySettings(steps=("ranges",), range_steps=20), ranges_of=lambda _: ranges,
                  images=lambda: x, device=CPU, progress=False)
    shipped = rec.shipped_ranges(lambda _: pytest.fail("the learned ranges ship, no calibration again"))
    meta = shipped.meta["recovery"]
    assert list(meta["steps"]) == ["ranges"] and meta["ranges"]["steps"] == 20 and meta["images"] == 60
    kept = meta["ranges"]["kept"]
    assert shipped.meta["ranges_of"] == ("the recovered model, learned end to end" if kept == "learned"
                                         else "the recovered model")
    assert {n: r.amax for n, r in shipped.ranges.items()} == {n: r.amax for n, r in rec.ranges.ranges.items()}
    assert f"ranges {meta['ranges']['tensors']} tensor(s), 20 steps, held-out SQNR" in describe(rec.report)
