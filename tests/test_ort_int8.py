"""The ONNX Runtime INT8 engine computes what the shipped Q/DQ model means, on any x86 CPU.

Every rewrite of :mod:`trtquant.quant.engines.ort_int8` is checked here with ONNX Runtime's own kernels
against the shipped graph run as written (graph optimisations off: Q/DQ as plain float ops). An
emulated AVX2-only CPU (``qemu-x86_64 -cpu Haswell``, where installed) shows the u8 x s8 saturation
and that the engine avoids it.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant.quant.engines.registry import build
from trtquant.quant.engines.onnxruntime import build_ort_engine
from trtquant.core.metrics import sqnr_db
from trtquant.quant.engines.ort_int8 import lower_for_onnxruntime, u8s8_is_exact
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.planner.simulate import QuantSim

REPO = Path(__file__).resolve().parents[1]


def _qdq(name, scale, axis=None):
    s, z = f"{name}_s", f"{name}_z"
    kw = {} if axis is None else {"axis": axis}
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), s),
             numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), z)]
    nodes = [helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_q"], **kw),
             helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [f"{name}_dq"], **kw)]
    return nodes, inits


def conv_model(w, b, x_scale, y_scale, act="clip", group=1, pad=1):
    """TensorRT-shaped: Q/DQ(x) -> Conv(Q/DQ(W) per channel, bias) -> [Clip(0,6) | Relu] -> Q/DQ(y)."""
    c_out = w.shape[0]
    w_scale = np.abs(w).reshape(c_out, -1).max(1) / 127
    nx, ix = _qdq("x", x_scale)
    nw, iw = _qdq("w", w_scale, axis=0)
    nodes = nx + nw + [helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["c"], pads=[pad] * 4, group=group)]
    inits = ix + iw + [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    last = "c"
    if act == "clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["a"]))
        last = "a"
    elif act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["a"]))
        last = "a"
    ny, iy = _qdq(last, y_scale)
    nodes += ny
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * 4)],
                              [helper.make_tensor_value_info(f"{last}_dq", TensorProto.FLOAT, [None] * 4)], inits + iy)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model, x, optimise=False):
    """ONNX Runtime as the shipped graph says (optimisations off), or optimised as the engine runs it."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("act", ["clip", "relu", "none"])
@pytest.mark.parametrize("weights", ["u8", "auto"])
def test_lowering_is_value_preserving_with_onnxruntimes_own_kernels(act, weights):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.3, size=(16, 32, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.5, size=16).astype(np.float32)
    x = rng.normal(0, 1, size=(4, 32, 12, 12)).astype(np.float32)
    x_scale, y_scale = 3.0 / 127, 6.0 / 127
    model = conv_model(w, b, x_scale, y_scale, act)
    low = lower_for_onnxruntime(model, None if weights == "auto" else weights)
    assert low.integer_convs == 1 and not low.float_layers
    ops = [n.op_type for n in low.model.graph.node]
    assert "QLinearConv" in ops and "Conv" not in ops and ("Clip" in ops) == (act != "none")
    ref, got = run(model, x), run(low.model, x, optimise=True)
    steps = np.rint((got - ref) / y_scale)
    # identical but for the int32 bias rounding (<= s_x s_w / 2, far below an output step): a value moves
    # one step only when it sat that close to a rounding boundary
    assert np.abs(steps).max() <= 1
    assert (steps != 0).mean() < 0.005
    if act != "none":
        assert got.min() >= 0 and got.max() <= 6.0 + 1e-6


def saturating_model():
    """Every product 127 x 127 (u8 255 x s8 127): vpmaddubsw saturates the pairs to int16."""
    w = np.full((8, 64, 1, 1), 1.0, np.float32)
    return (conv_model(w, np.zeros(8, np.float32), 1.0 / 127, 64.0 / 127, act="none", pad=0),
            np.full((1, 64, 2, 2), 1.0, np.float32))


def test_u8_weights_are_exact_on_any_cpu_and_s8_exactly_when_the_probe_says_so():
    model, x = saturating_model()
    exact = run(model, x)                               # the shipped graph in float: 64 products of 1.0 x 1.0
    assert np.all(exact == 64.0)
    u8 = run(lower_for_onnxruntime(model, "u8").model, x, optimise=True)
    s8 = run(lower_for_onnxruntime(model, "s8").model, x, optimise=True)
    np.testing.assert_array_equal(u8, exact)
    assert np.array_equal(s8, exact) == u8s8_is_exact()
    assert lower_for_onnxruntime(model).weights == ("s8" if u8s8_is_exact() else "u8")


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 (Debian qemu-user) not installed: cannot emulate an AVX2-only CPU here")
def test_on_an_emulated_avx2_only_cpu_s8_saturates_and_the_engine_stays_exact(tmp_path):
    model, x = saturating_model()
    onnx.save(model, tmp_path / "shipped.onnx")
    for kind in ("u8", "s8"):
        onnx.save(lower_for_onnxruntime(model, kind).model, tmp_path / f"{kind}.onnx")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        from trtquant.quant.engines.ort_int8 import u8s8_is_exact
        x = np.load({str(tmp_path / 'x.npy')!r})
        def run(name):
            so = ort.SessionOptions()
            if name == "shipped":      # as written: Q/DQ as float ops (ORT would fuse it into an s8 QLinearConv)
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession({str(tmp_path)!r} + "/" + name + ".onnx", so,
                                        providers=["CPUExecutionProvider"]).run(None, {{"x": x}})[0]
        ref = run("shipped")
        print("probe", u8s8_is_exact(), "u8", bool(np.array_equal(run("u8"), ref)), "s8", bool(np.array_equal(run("s8"), ref)))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO.parent)}
    proc = subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # AVX2 without VNNI: the u8 x s8 GEMM saturates, the probe sees it, u8 x u8 stays exact
    assert proc.stdout.split() == ["probe", "False", "u8", "True", "s8", "False"], proc.stdout


def test_mobilenet_int8_engine_agrees_with_the_simulation(mobilenet, mobilenet_ranges, sample_images):
    x, y = sample_images
    g, plan = mobilenet.graph, resolve_plan("int8", mobilenet.graph)
    engine = build("onnxruntime", g, plan, mobilenet_ranges)
    assert not engine.info.simulated and "the shipped TensorRT Q/DQ model" in engine.info.description
    low = engine.lowering
    # every convolution followed by a quantizer runs as QLinearConv; the 10 that feed a residual Add and
    # the classifier compute in float on dequantized values, as the Q/DQ graph defines
    assert low.integer_convs == 42 and len(low.float_layers) == 11
    assert engine.info.integer_kernels.get("QLinearConv", 0) + engine.info.integer_kernels.get("NhwcQLinearConv", 0) >= 42
    sim = QuantSim(g, mobilenet_ranges, torch.device("cpu"))
    s = sim.logits(x, set(sim.layers), batch=20)
    a = engine.run(x)
    assert (a.argmax(1) == s.argmax(1)).mean() >= 0.95
    assert abs(int((a.argmax(1) == y).sum()) - int((s.argmax(1) == y).sum())) <= 1
    # float32 rounding flips compound over 52 layers: ONNX Runtime disagrees with *itself* across optimisation
    # levels by ~20 dB on these logits; the engine is as close to the simulation as that floor
    shipped, _ = build_qdq_model(g, mobilenet_ranges, plan)
    plain = run(shipped, x)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    basic = ort.InferenceSession(shipped.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    floor = sqnr_db(torch.from_numpy(plain), torch.from_numpy(basic))
    assert sqnr_db(torch.from_numpy(s), torch.from_numpy(a)) >= floor - 3
    forced = build_ort_engine(g, plan, mobilenet_ranges, precision="int8", weights="u8").run(x)
    assert (forced.argmax(1) == s.argmax(1)).mean() >= 0.95


def test_a_bias_that_does_not_fit_int32_keeps_the_layer_float():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.01, size=(4, 8, 3, 3)).astype(np.float32)
    b = np.full(4, 5e4, np.float32)                     # 5e4 / (1e-6 * ~3e-4) steps: far beyond int32
    x = rng.normal(0, 1e-4, size=(1, 8, 6, 6)).astype(np.float32)
    model = conv_model(w, b, 1e-6, 6.0 / 127, "clip")
    low = lower_for_onnxruntime(model, "u8")
    assert low.integer_convs == 0 and len(low.float_layers) == 1
    np.testing.assert_array_equal(run(low.model, x, optimise=True), run(model, x))


def test_weights_read_through_identity_nodes_are_weights():
    """The TorchScript exporter shares equal parameters (e.g. zero biases) through Identity nodes: they are
    made initializers of the same name, so quantization, the lowering and the executor treat them as weights."""
    from trtquant.quant.graph.onnx_graph import OnnxGraph
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.core.types import RangeSet, TensorRange

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("Identity", ["w"], ["w_copy"]), helper.make_node("Identity", ["b"], ["b_copy"]),
             helper.make_node("Conv", ["x", "w_copy", "b_copy"], ["c"], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2", "b_copy"], ["y"], name="conv2")]
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w2")
    g = helper.make_graph(nodes, "ident", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w, b, w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph = OnnxGraph(model)
    inits = {i.name for i in graph.model.graph.initializer}
    assert {"w_copy", "b_copy"} <= inits and not any(n.op_type == "Identity" for n in graph.model.graph.node)
    assert "w_copy" not in graph.calibration_tensors and "b_copy" not in graph.calibration_tensors
    out = TorchGraphExecutor(graph, torch.device("cpu")).run({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    ranges = RangeSet({t: TensorRange(t, amax=4.0) for t in ("x", "r", "c", "y")}, method="minmax")
    qdq, _ = build_qdq_model(graph, ranges, resolve_plan("int8", graph))
    weights_quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert "w_copy" in weights_quantized
    assert lower_for_onnxruntime(qdq).integer_convs == 1
