"""`cli.py lint`: our Q/DQ models are clean; deliberately broken ones give the right finding on the right node."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtquant import cli
from trtquant.quant.artifacts.lint import lint_model
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model


@pytest.fixture(scope="module")
def qdq(mobilenet, mobilenet_ranges):
    model, _ = build_qdq_model(mobilenet.graph, mobilenet_ranges, resolve_plan("int8", mobilenet.graph))
    return model


def _copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def _set_init(model, name, array):
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)


def _first(model, op, weight=False):
    inits = {i.name for i in model.graph.initializer}
    return next(n for n in model.graph.node if n.op_type == op and ((n.input[0] in inits) == weight))


def test_our_model_is_clean(qdq, tmp_path, capsys):
    assert lint_model(qdq) == []
    p = tmp_path / "m.onnx"
    onnx.save(qdq, p)
    assert cli.main(["lint", str(p)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def _findings(model):
    return [(f.severity, f.node, f.message) for f in lint_model(model)]


def test_nonzero_zero_point_and_uint8(qdq):
    m = _copy(qdq)
    q = _first(m, "QuantizeLinear")
    _set_init(m, q.input[2], np.array(3, np.int8))
    assert ("error", q.name, "zero point must be 0 (symmetric), got [3]") in _findings(m)
    _set_init(m, q.input[2], np.array(128, np.uint8))
    f = _findings(m)
    assert any(s == "error" and n == q.name and "uint8, TensorRT supports int8 only" in msg for s, n, msg in f)


def test_bad_scales(qdq):
    m = _copy(qdq)
    q = _first(m, "QuantizeLinear")
    _set_init(m, q.input[1], np.array(-0.5, np.float32))
    assert any(n == q.name and "finite and positive" in msg for _, n, msg in _findings(m))
    _set_init(m, q.input[1], np.array(np.inf, np.float32))
    assert any(n == q.name and "finite and positive" in msg for _, n, msg in _findings(m))


def test_wrong_per_channel_axis(qdq):
    m = _copy(qdq)
    wq = _first(m, "QuantizeLinear", weight=True)
    for node in m.graph.node:
        if node.input[1:] == wq.input[1:] and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for a in node.attribute:
                if a.name == "axis":
                    a.i = 1
    f = _findings(m)
    assert any(s == "error" and n == wq.name and "do not match axis 1" in msg for s, n, msg in f)


def test_unpaired_quantize_and_unquantized_weights(qdq):
    m = _copy(qdq)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    w_dq = next(n for n in m.graph.node if n.output[0] == conv.input[1])
    w_q = next(n for n in m.graph.node if n.output[0] == w_dq.input[0])
    conv.input[1] = w_q.input[0]                     # bypass the weight DQ: Q now dangles
    m.graph.node.remove(w_dq)
    f = _findings(m)
    assert ("error", w_q.name, "QuantizeLinear output not consumed by a DequantizeLinear only") in f
    assert any(s == "error" and n == conv.name and "weights are not" in msg for s, n, msg in f)


def test_missing_residual_quantizer_and_qdq_before_activation(qdq):
    m = _copy(qdq)
    add = next(n for n in m.graph.node if n.op_type == "Add")
    dq_in = next(i for i in add.input if i.endswith("_dequantized"))
    dq = next(n for n in m.graph.node if n.output[0] == dq_in)
    q = next(n for n in m.graph.node if n.output[0] == dq.input[0])
    add.input[list(add.input).index(dq_in)] = q.input[0]      # the skip input now bypasses its Q/DQ
    assert any(s == "warning" and n == add.name and "skip input is not quantized" in msg for s, n, msg in _findings(m))
    # a Q/DQ pair put between a Conv and its Clip
    m2 = _copy(qdq)
    clip = next(n for n in m2.graph.node if n.op_type == "Clip")
    conv_out = clip.input[0]
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s_x")
    z = numpy_helper.from_array(np.array(0, np.int8), "z_x")
    m2.graph.initializer.extend([s, z])
    i = list(m2.graph.node).index(clip)
    m2.graph.node.insert(i, onnx.helper.make_node("DequantizeLinear", ["cq", "s_x", "z_x"], ["cdq"], name="dqx"))
    m2.graph.node.insert(i, onnx.helper.make_node("QuantizeLinear", [conv_out, "s_x", "z_x"], ["cq"], name="qx"))
    clip.input[0] = "cdq"
    assert ("warning", clip.name, "Q/DQ between a layer and its activation blocks their fusion") in _findings(m2)


def test_lint_cli_exit_codes(qdq, tmp_path, capsys):
    m = _copy(qdq)
    q = _first(m, "QuantizeLinear")
    _set_init(m, q.input[2], np.array(1, np.int8))
    p = tmp_path / "bad.onnx"
    onnx.save(m, p)
    assert cli.main(["lint", str(p)]) == 1
    out = capsys.readouterr().out
    assert f"error   {q.name}: zero point must be 0" in out and "Hint:" in out
    assert cli.main(["lint", str(tmp_path / "missing.onnx")]) == 2
