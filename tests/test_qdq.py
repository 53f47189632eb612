"""Precision plans, the Q/DQ writer, and the engines that run it (ONNX Runtime real INT8, torch simulated)."""

import collections
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant.quant.backends import build, to_uint8_activations
from trtquant.quant.calibrate import CalibrationConfig, calibrate
from trtquant.quant.errors import BackendUnavailable, PlanError
from trtquant.quant.graph import OnnxGraph, TorchGraphExecutor
from trtquant.quant.numerics import sqnr_db
from trtquant.quant.plan import LayerPrecision, PrecisionPlan, quantizable_nodes, resolve_plan
from trtquant.quant.qdq import build_qdq_model, weight_scales
from trtquant.quant.types import RangeSet


@pytest.fixture(scope="module")
def ranges(tmp_path_factory):
    d = tmp_path_factory.mktemp("r")
    return calibrate(CalibrationConfig(device="cpu"), cache_path=d / "c.bin", progress=False).ranges


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def test_int8_qdq_structure_on_mobilenet(mobilenet, ranges):
    model, s = build_qdq_model(mobilenet.graph, ranges, resolve_plan("int8", mobilenet.graph))
    ops = _ops(model)
    # 52 Conv + 1 Gemm are INT8: one weight quantizer each, one activation quantizer per distinct input,
    # plus the 10 residual Adds' skip inputs (which are also the next block's conv input: shared)
    assert s.int8_nodes == 53 and s.weight_quantizers == 53 and s.residual_quantizers == 10
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == s.activation_quantizers + s.weight_quantizers
    assert ops["Conv"] == 52 and ops["Gemm"] == 1
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm"):
            x_dq, w_dq = producers[n.input[0]], producers[n.input[1]]
            assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
            assert producers[x_dq.input[0]].op_type == "QuantizeLinear"
            # activation: per-tensor, scale from the ranges, zero point int8 0
            assert inits[x_dq.input[1]].shape == () and inits[x_dq.input[2]].dtype == np.int8
            assert float(inits[x_dq.input[1]]) == ranges.ranges[producers[x_dq.input[0]].input[0]].scale
            # weight: per-channel along output channels, exact max|W_c|/127
            w = inits[producers[w_dq.input[0]].input[0]]
            axis = next(a.i for a in w_dq.attribute if a.name == "axis")
            assert axis == 0 and inits[w_dq.input[1]].shape == (w.shape[0],)
            np.testing.assert_array_equal(inits[w_dq.input[1]], weight_scales(w, 0))
            assert not inits[w_dq.input[2]].any()
        if n.op_type == "Add":
            # every residual Add reads one input through a DequantizeLinear (the skip branch)
            assert sum(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input) >= 1
    # quantizers sit only on inputs: of INT8 layers, or of residual Adds (never an extra one on a layer output)
    orig = mobilenet.graph.model.graph.node
    layer_inputs = {n.input[0] for n in orig if n.op_type in ("Conv", "Gemm")} | {i for n in orig if n.op_type == "Add"
                                                                                  for i in n.input}
    act_q = [q.input[0] for q in g.node if q.op_type == "QuantizeLinear" and q.input[0] not in inits]
    assert len(act_q) == s.activation_quantizers and set(act_q) <= layer_inputs


def test_weight_scales_hand_computed():
    w = np.array([[[[1.0, -2.0]]], [[[0.0, 0.0]]], [[[-12.7, 3.0]]]], dtype=np.float32)   # (3,1,1,2)
    np.testing.assert_allclose(weight_scales(w, 0), [2 / 127, 1.0, 12.7 / 127], rtol=1e-7)


def test_fp16_plan_casts_and_keeps_names(mobilenet):
    g = mobilenet.graph
    first_conv = next(n.name for n in g.model.graph.node if n.op_type == "Conv")
    plan = PrecisionPlan("one-fp16", {first_conv: LayerPrecision(first_conv, "fp16", "test")})
    model, s = build_qdq_model(g, RangeSet({}, "none"), plan)
    assert s.fp16_nodes == 1 and _ops(model)["Cast"] == 2           # input -> fp16, output -> fp32
    conv = next(n for n in model.graph.node if n.name == first_conv)
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[conv.input[1]].data_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ref = TorchGraphExecutor(g).run({"input": torch.from_numpy(x)})["logits"]
    half = TorchGraphExecutor(OnnxGraph(model)).run({"input": torch.from_numpy(x)})["logits"]
    assert sqnr_db(ref, half) > 40                                     # one FP16 layer: tiny error


def test_plan_errors(mobilenet, tmp_path, ranges):
    g = mobilenet.graph
    conv = quantizable_nodes(g)[0]
    bad = PrecisionPlan("typo", {conv + "x": LayerPrecision(conv + "x", "int8")})
    with pytest.raises(PlanError, match=r"not in the model.*did you mean '" + re.escape(conv) + "'"):
        bad.check(g)
    clip = next(n.name for n in g.model.graph.node if n.op_type == "Clip")
    with pytest.raises(PlanError, match="cannot be quantized"):
        PrecisionPlan("p", {clip: LayerPrecision(clip, "int8")}).check(g)
    with pytest.raises(PlanError, match="unknown precision"):
        LayerPrecision(conv, "int4")
    with pytest.raises(PlanError, match="plan file not found.*fp32, fp16, int8"):
        resolve_plan(str(tmp_path / "nope.json"), g)
    p = tmp_path / "plan.json"
    plan = PrecisionPlan("mine", {conv: LayerPrecision(conv, "int8", "sensitive? no", 0.01)})
    plan.save(p)
    back = resolve_plan(str(p), g)
    assert back.layers[conv] == plan.layers[conv] and json.loads(p.read_text())["format"] == "trtquant-plan/1"
    partial = RangeSet({k: v for k, v in list(ranges.ranges.items())[5:]}, "entropy")
    with pytest.raises(PlanError, match="ranges do not match the model's tensor names.*without a range"):
        build_qdq_model(g, partial, resolve_plan("int8", g))


def _qdq_roundtrip_model(zero_point: np.ndarray):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(zero_point, "z")]
    return helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_int8_zero_point_0_equals_uint8_zero_point_128():
    """The identity the ORT engine relies on, checked with ONNX Runtime's own Q/DQ kernels."""
    x = np.concatenate([np.linspace(-8, 8, 20001, dtype=np.float32),
                        np.array([0.025, -0.025, 0.075, 6.35, -6.4, -6.45, 100, -100], np.float32)])
    s8 = _qdq_roundtrip_model(np.array(0, np.int8))
    u8 = to_uint8_activations(s8)
    assert numpy_helper.to_array(next(i for i in u8.graph.initializer if i.name == "z_u8")).tolist() == 128
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    a, b = run(s8), run(u8)
    assert np.array_equal(a, b)                                   # bit-identical, ties and saturation included
    assert a.min() == pytest.approx(-128 * 0.05) and a.max() == pytest.approx(127 * 0.05)


def test_ort_int8_engine_uses_integer_kernels_and_agrees_with_simulation(mobilenet, ranges, sample_images):
    x, y = sample_images
    plan = resolve_plan("int8", mobilenet.graph)
    real = build("onnxruntime", mobilenet.graph, plan, ranges)
    assert not real.info.simulated
    assert real.info.integer_kernels.get("QLinearConv", 0) == 52
    assert "QLinearConv" in real.info.description
    sim = build("torch", mobilenet.graph, plan, ranges, device="cpu", quantize_outputs=True)
    assert sim.info.simulated and "SIMULATED" in sim.info.description
    fp32 = build("onnxruntime", mobilenet.graph, resolve_plan("fp32", mobilenet.graph)).run(x)
    a, b = real.run(x), sim.run(x)
    agree = (a.argmax(1) == b.argmax(1)).mean()
    # stated bound (measured 19/20 and 16.1 dB): real integer kernels and float fake-quant differ only where a
    # value lies on a rounding boundary, but such flips compound over 52 quantized layers
    assert agree >= 0.9
    assert sqnr_db(torch.from_numpy(b), torch.from_numpy(a)) > 13
    # and both are quantized models: each is closer to the other than to FP32
    assert sqnr_db(torch.from_numpy(fp32), torch.from_numpy(a)) < sqnr_db(torch.from_numpy(b), torch.from_numpy(a))
    assert (a.argmax(1) == y).mean() >= 0.75


def test_torch_fp32_engine_equals_ort_fp32(mobilenet, sample_images):
    x = sample_images[0][:4]
    plan = resolve_plan("fp32", mobilenet.graph)
    a = build("torch", mobilenet.graph, plan, device="cpu").run(x)
    b = build("onnxruntime", mobilenet.graph, plan).run(x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_ort_has_no_fp16_engine(mobilenet):
    with pytest.raises(BackendUnavailable, match="no FP16 convolution kernels"):
        build("onnxruntime", mobilenet.graph, resolve_plan("fp16", mobilenet.graph))
