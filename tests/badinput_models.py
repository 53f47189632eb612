"""Tiny ONNX models for the bad-input tests (built with onnx.helper: no export, no MobileNet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_model(path: Path, *, batch="N", input_type=TensorProto.FLOAT, size=224, conv_out="conv_out",
               two_inputs=False, nhwc=False) -> Path:
    """Conv 3->8 stride 4, Relu, GlobalAveragePool, Flatten, Gemm 8->10 (optionally a uint8 input + Cast)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    fw = numpy_helper.from_array(rng.normal(0, 0.5, (10, 8)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(np.zeros(10, np.float32), "fb")
    shape = [batch, size, size, 3] if nhwc else [batch, 3, size, size]
    inputs = [helper.make_tensor_value_info("input", input_type, shape)]
    nodes = []
    x = "input"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["input_f"], to=TensorProto.FLOAT, name="cast"))
        x = "input_f"
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, [batch, 10]))
    nodes += [helper.make_node("Conv", [x, "w", "b"], [conv_out], strides=[4, 4], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", [conv_out], ["relu_out"], name="relu"),
              helper.make_node("GlobalAveragePool", ["relu_out"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
              helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits" if not two_inputs else "fc"], transB=1,
                               name="fc")]
    if two_inputs:
        nodes.append(helper.make_node("Add", ["fc", "aux"], ["logits"], name="add"))
    graph = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                    [batch, 10])],
                              initializer=[w, b, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
