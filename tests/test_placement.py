"""The one placement rule, and simulated = shipped: the planner's simulator and the Q/DQ model we ship
quantize the same edges with the same scales."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.quant.artifacts.lint import lint_model
from trtquant.core.metrics import sqnr_db
from trtquant.quant.artifacts.placement import place_quantizers, weight_axis
from trtquant.quant.artifacts.plan import LayerPrecision, PrecisionPlan, quantizable_nodes
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.planner.simulate import QuantSim


def _conv(name, x, out, c=4):
    w = numpy_helper.from_array(np.random.default_rng(len(name)).normal(size=(c, c, 1, 1)).astype(np.float32), f"{name}_w")
    return helper.make_node("Conv", [x, f"{name}_w"], [out], name=name), w


def tiny_residual(skip_consumers=1):
    """x -> A -> a;  a -> B -> b;  b -> C -> c;  Add(a, c) [-> D reading a too when skip_consumers == 2]."""
    nodes, inits = [], []
    for name, src, dst in (("A", "x", "a"), ("B", "a", "b"), ("C", "b", "c")):
        n, w = _conv(name, src, dst)
        nodes.append(n)
        inits.append(w)
    nodes.append(helper.make_node("Add", ["a", "c"], ["s"], name="Add"))
    nodes.append(helper.make_node("GlobalAveragePool", ["s"], ["p"], name="GAP"))
    outs = ["p"]
    if skip_consumers == 2:
        nodes.append(helper.make_node("Relu", ["a"], ["r"], name="Relu"))
        outs.append("r")
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_residual_add_fuses_into_the_single_consumer_conv_and_quantizes_the_skip():
    m = tiny_residual()
    p = place_quantizers(m, {"A", "B", "C"})
    edges = p.edges()
    # C's output feeds only the Add: TensorRT fuses the Add into C; the skip input a (index 0) is quantized
    assert p.fused_adds == (("Add", "C"),)
    assert ("Add", 0) in edges and ("Add", 1) not in edges
    # a is read by B (INT8) and the Add: one quantizer, two consumers
    assert sorted(edges[("Add", 0)].consumers) == [("Add", 0), ("B", 0)]
    # the pool reads an Add, not an INT8 layer: no quantizer
    assert ("GAP", 0) not in edges
    # only C INT8: still fused, skip quantized; A and B FP32 read a as float
    only_c = place_quantizers(m, {"C"}).edges()
    assert ("Add", 0) in only_c and ("B", 0) not in only_c
    # C FP32: nothing to fuse into, the Add stays float
    assert ("Add", 0) not in place_quantizers(m, {"A", "B"}).edges()


def test_both_add_inputs_fusable_picks_the_longer_branch():
    m = tiny_residual()
    # make A's output feed only the Add too: reroute B to read x
    for n in m.graph.node:
        if n.name == "B":
            n.input[0] = "x"
    p = place_quantizers(m, {"A", "B", "C"})
    assert p.fused_adds == (("Add", "C"),)        # c is 2 nodes deep, a is 1: the skip is a
    assert ("Add", 0) in p.edges()


def test_a_tensor_read_by_an_fp32_layer_stays_float_for_it():
    m = tiny_residual(skip_consumers=2)
    edges = place_quantizers(m, {"B"}).edges()
    assert ("B", 0) in edges and ("Relu", 0) not in edges
    assert place_quantizers(m, {"B"}).activation_tensors() == ["a"]


def test_convtranspose_weight_axis_by_tensorrt_version():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    w = np.zeros((4, 8, 3, 3), np.float32)
    assert weight_axis(node, w.ndim, "8.6.1") == 0 and weight_axis(node, w.ndim, None) == 0
    assert weight_axis(node, w.ndim, "10.13.0") == 1


def _plans(graph):
    layers = quantizable_nodes(graph)
    int8 = {n: LayerPrecision(n, "int8") for n in layers}
    mixed = {n: LayerPrecision(n, "int8" if i % 3 else "fp32") for i, n in enumerate(layers)}
    fp16 = {n: LayerPrecision(n, "fp16" if i in (0, 5, 20) else "int8") for i, n in enumerate(layers)}
    return {"int8": PrecisionPlan("int8", int8), "mixed": PrecisionPlan("mixed", mixed),
            "fp16-layers": PrecisionPlan("fp16-layers", fp16)}


@pytest.mark.parametrize("which", ["int8", "mixed", "fp16-layers"])
def test_simulated_equals_shipped(mobilenet, mobilenet_ranges, sample_images, which):
    x, y = sample_images
    g = mobilenet.graph
    plan = _plans(g)[which]
    shipped, _ = build_qdq_model(g, mobilenet_ranges, plan)
    assert not [f for f in lint_model(shipped) if f.severity == "error"]
    sim = QuantSim(g, mobilenet_ranges, torch.device("cpu"))
    s = sim.logits(x, set(plan.nodes("int8")), batch=20)
    # 1. the shipped file, executed op by op as written (its own Q/DQ nodes), equals the simulation; and so
    # does the engines' executor, which runs each activation Q/DQ pair as one fused fake quantization
    reread = OnnxGraph(onnx.load_from_string(shipped.SerializeToString()))
    as_written = TorchGraphExecutor(reread, fuse_qdq=False)
    fused = TorchGraphExecutor(reread)
    n_q = sum(n.op_type == "QuantizeLinear" for n, _, _ in as_written.nodes)
    assert sum(n.op_type == "QuantizeLinear" for n, _, _ in fused.nodes) < n_q
    ran = as_written.run({"input": torch.from_numpy(x)})["logits"].numpy()
    np.testing.assert_array_equal(fused.run({"input": torch.from_numpy(x)})["logits"].numpy(), ran)
    if which == "fp16-layers":     # the simulation runs FP16 layers in FP32 (FP16's error is far below INT8's)
        assert sqnr_db(torch.from_numpy(s), torch.from_numpy(ran)) >= 15   # FP16 flips compound like float32's
        # a placement disagreement would flip confident images; FP16 rounding flips only near-ties (on this
        # set 1-2 of 20 images whose top-2 logits differ by < 0.25, against a median margin of ~4 logits;
        # the count varies with the CPU's FP16 kernels)
        top2 = np.sort(s, 1)[:, -2:]
        flipped = ran.argmax(1) != s.argmax(1)
        assert flipped.mean() <= 0.15 and np.all(top2[flipped, 1] - top2[flipped, 0] < 0.25)
        return
    np.testing.assert_array_equal(ran, s)
    # 2. an independent runtime on the shipped file (ONNX Runtime, optimisations off: Q/DQ as float ops):
    # same predictions; its SQNR to the simulation is at the float32 noise floor of 52 compounding
    # quantizers (ONNX Runtime against itself at another optimisation level), not below it
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o = ort.InferenceSession(shipped.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    o2 = ort.InferenceSession(shipped.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert (o.argmax(1) == s.argmax(1)).mean() >= 0.95
    assert abs(int((o.argmax(1) == y).sum()) - int((s.argmax(1) == y).sum())) <= 1
    floor = sqnr_db(torch.from_numpy(o), torch.from_numpy(o2))
    assert sqnr_db(torch.from_numpy(s), torch.from_numpy(o)) >= min(floor, 40.0) - 3


def test_lint_warns_on_a_residual_quantized_on_the_fused_branch(mobilenet, mobilenet_ranges):
    """Review finding 4: Q/DQ on the conv branch of a residual Add leaves the skip float."""
    g = mobilenet.graph
    model, _ = build_qdq_model(g, mobilenet_ranges, _plans(g)["int8"])
    assert not [f for f in lint_model(model) if "residual" in f.message]
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    add = nodes["/features/features.3/Add"]
    skip_idx = next(i for i, t in enumerate(add.input) if producer[t].op_type == "DequantizeLinear")
    dq = producer[add.input[skip_idx]]
    conv_out = add.input[1 - skip_idx]
    # swap: the skip reads float, the conv branch reads a Q/DQ of its own output
    add.input[skip_idx] = producer[dq.input[0]].input[0]
    q = helper.make_node("QuantizeLinear", [conv_out, dq.input[1], dq.input[2]], ["branch_q"], name="bq")
    d = helper.make_node("DequantizeLinear", ["branch_q", dq.input[1], dq.input[2]], ["branch_dq"], name="bdq")
    add.input[1 - skip_idx] = "branch_dq"
    idx = list(model.graph.node).index(add)
    model.graph.node.insert(idx, d)
    model.graph.node.insert(idx, q)
    found = [f for f in lint_model(model) if f.node == add.name]
    assert found and "residual" in found[0].message and found[0].severity == "warning"
