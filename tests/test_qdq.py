"""Precision plans, the Q/DQ writer, and the engines that run it (ONNX Runtime real INT8, torch simulated)."""

import collections
import json
import re

import numpy as np
import pytest
import torch
from onnx import TensorProto, numpy_helper

from trtquant.quant.engines.registry import build
from trtquant.core.errors import BackendUnavailable, PlanError
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.core.metrics import sqnr_db
from trtquant.quant.artifacts.plan import LayerPrecision, PrecisionPlan, quantizable_nodes, resolve_plan
from trtquant.quant.artifacts.placement import weight_scales
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.core.types import RangeSet


@pytest.fixture(scope="module")
def ranges(mobilenet_ranges):
    return mobilenet_ranges


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
            # TensorRT fuses the Add into the conv whose output feeds only the Add (review finding 4):
            # that input stays float, the skip input is quantized
            conv_in = [i for i in n.input if producers[i].op_type == "Conv"]
            skip = [i for i in n.input if i not in conv_in]
            assert len(conv_in) == 1 and len(skip) == 1 and producers[skip[0]].op_type == "DequantizeLinear"
        if n.op_type == "GlobalAveragePool":
            # the pooling input is quantized, so the last conv + pool run INT8 (review finding 9)
            assert producers[n.input[0]].op_type == "DequantizeLinear"
    # quantizers sit only on inputs: of INT8 layers, residual Adds and pools (never on a layer output)
    orig = mobilenet.graph.model.graph.node
    layer_inputs = {n.input[0] for n in orig if n.op_type in ("Conv", "Gemm", "GlobalAveragePool")} | {
        i for n in orig if n.op_type == "Add" for i in n.input}
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


def test_torch_fp32_engine_equals_ort_fp32(mobilenet, sample_images):
    x = sample_images[0][:4]
    plan = resolve_plan("fp32", mobilenet.graph)
    a = build("torch", mobilenet.graph, plan, device="cpu").run(x)
    b = build("onnxruntime", mobilenet.graph, plan).run(x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_ort_has_no_fp16_engine(mobilenet):
    with pytest.raises(BackendUnavailable, match="no FP16 convolution kernels"):
        build("onnxruntime", mobilenet.graph, resolve_plan("fp16", mobilenet.graph))


def test_fp16_regions_cast_only_at_their_boundaries_with_fp16_constants(mobilenet):
    """Review finding 10: an all-FP16 plan keeps tensors FP16 between FP16 layers (no FP16 -> FP32 -> FP16
    pairs), stores Clip bounds and weights as FP16 initializers (no Cast of a constant), and lint agrees."""
    from trtquant.quant.artifacts.lint import lint_model

    g = mobilenet.graph
    plan = resolve_plan("fp16", g)
    model, s = build_qdq_model(g, RangeSet({}, "none"), plan)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    producers = {o: n for n in model.graph.node for o in n.output}
    consts = {i.name for i in model.graph.initializer}
    # the only Casts: the image into FP16, the logits back to FP32
    assert [(c.input[0], c.output[0]) for c in casts if c.input[0] in ("input",)] == [("input", "input_to_fp16")]
    assert len(casts) == 2 and producers[casts[1].input[0]].op_type == "Gemm" and casts[1].output[0] == "logits"
    assert not any(c.input[0] in consts for c in casts)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(i in consts for c in clips for i in c.input[1:] if i)
    inits = {i.name: i for i in model.graph.initializer}
    assert all(inits[i].data_type == TensorProto.FLOAT16 for c in clips for i in c.input[1:] if i)
    assert not [f for f in lint_model(model) if "Cast" in f.message]
    # same numbers as before the change: FP16 everywhere, within FP16 rounding of FP32
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    ref = TorchGraphExecutor(g).run({"input": torch.from_numpy(x)})["logits"]
    half = TorchGraphExecutor(OnnxGraph(model)).run({"input": torch.from_numpy(x)})["logits"]
    assert sqnr_db(ref, half) > 30


def test_an_fp16_activation_after_an_int8_layer_takes_the_layers_precision(mobilenet, mobilenet_ranges):
    """Review finding 10: in a mixed plan (INT8 convolutions, the rest FP16) the ReLU6 after an INT8
    convolution is not cast to FP16, so TensorRT keeps Conv + bias + Clip + Q fused; lint flags the old form."""
    from onnx import helper

    from trtquant.quant.artifacts.lint import lint_model

    g = mobilenet.graph
    layers = {n: LayerPrecision(n, "int8", "test") for n in quantizable_nodes(g)[:10]}
    plan = PrecisionPlan("mixed", layers, default="fp16")
    model, _ = build_qdq_model(g, mobilenet_ranges, plan)
    readers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            readers[i].append(n)
    orig_readers = collections.defaultdict(list)
    for n in g.model.graph.node:
        for i in n.input:
            orig_readers[i].append(n.op_type)
    int8_convs = [n for n in model.graph.node if n.name in layers and orig_readers[n.output[0]] == ["Clip"]]
    assert len(int8_convs) >= 5
    after = [r for c in int8_convs for r in readers[c.output[0]]]
    assert [r.op_type for r in after] == ["Clip"] * len(int8_convs)      # Conv -> Clip directly (no Cast), FP32
    clips = after
    assert not [f for f in lint_model(model) if "FP16 activation" in f.message]
    # the old writing (Cast to FP16 around the activation) is what lint warns about
    c = clips[0]
    model.graph.node.extend([helper.make_node("Cast", [c.input[0]], ["tofp16"], to=TensorProto.FLOAT16, name="c16"),
                             helper.make_node("Clip", ["tofp16"], ["clip16"], name="clip16")])
    assert [f.node for f in lint_model(model) if "FP16 activation" in f.message] == ["clip16"]


def test_fp16_region_keeps_the_constant_node_an_int8_weight_quantizer_reads():
    """A weight held in a Constant node (not an initializer), quantized for an INT8 convolution, while
    an FP16 node sits downstream: the Constant must survive the FP16 rewrite's clean-up of Constants."""
    from onnx import helper

    from trtquant.core.types import TensorRange

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "wv")
    nodes = [helper.make_node("Constant", [], ["w"], value=w, name="wconst"),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Add", ["r", "r"], ["y"], name="add1")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])])
    graph = OnnxGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    plan = PrecisionPlan("p", {"conv1": LayerPrecision("conv1", "int8", "t")}, default="fp16")
    ranges = RangeSet({t: TensorRange(t, 4.0) for t in ("x", "c", "r", "y")}, method="minmax")
    model, s = build_qdq_model(graph, ranges, plan)            # checked by onnx.checker inside
    assert s.fp16_nodes == 1 and "w" in {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    got = TorchGraphExecutor(OnnxGraph(model)).run({"x": torch.from_numpy(x)})["y"]
    ref = TorchGraphExecutor(graph).run({"x": torch.from_numpy(x)})["y"]
    assert sqnr_db(ref, got) > 25                                # INT8 conv + FP16 add: close to FP32
