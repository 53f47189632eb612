"""Explicit quantization: ranges + precision plan -> a Q/DQ ONNX model for TensorRT 10/11.

Placement follows TensorRT's Q/DQ rules (quantize the *inputs* of the layers that run in INT8):

- every INT8 Conv/ConvTranspose/Gemm/MatMul gets QuantizeLinear -> DequantizeLinear on its
  activation input (per-tensor, scale = amax / 127 from the ranges, zero-point 0) and on its weight
  (per-channel along the output-channel axis, scale = max|W_c| / 127 computed from the weights);
- a residual ``Add`` fed by an INT8 convolution gets Q/DQ on its *other* input, so TensorRT can fuse
  the addition into the convolution instead of running it in float;
- outputs are never quantized (TensorRT fuses the DQ -> op -> Q chains it finds);
- FP16 nodes get ``Cast`` to FLOAT16 on their float inputs (FP16 copies for weights) and a ``Cast``
  back to FLOAT on each output, which keeps every original tensor name holding FP32 values
  (TensorRT removes back-to-back Casts); FP32 nodes are untouched.

Only the marking (which tensor gets which quantizer) depends on the plan; the rewrite is one pass.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import PlanError
from .graph import OnnxGraph
from .plan import PrecisionPlan
from .types import RangeSet

FP16_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid",
            "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "GlobalAveragePool", "AveragePool", "MaxPool",
            "Softmax", "Concat", "BatchNormalization", "Flatten", "Reshape", "Transpose", "Pad", "ReduceMean",
            "Pow", "Sqrt", "Erf", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"}


@dataclass(frozen=True)
class QdqSummary:
    activation_quantizers: int
    weight_quantizers: int
    residual_quantizers: int
    int8_nodes: int
    fp16_nodes: int


def weight_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    """Output-channel axis of a weight, as TensorRT expects per-channel weight scales."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1:
            raise PlanError("per-channel INT8 for grouped ConvTranspose is not supported",
                            subject=f"node {node.name!r}", hint="keep this node FP16/FP32 in the plan")
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1   # MatMul: (..., K, N)


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel scales ``max|W_c| / 127`` (1.0 for an all-zero channel: any scale is exact)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w.astype(np.float32)).max(axis=reduce) if reduce else np.abs(w.astype(np.float32))
    scale = (amax / np.float32(127.0)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


class _Rewriter:
    def __init__(self, graph: OnnxGraph):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(graph.model)
        self.g = self.model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.done: dict[str, str] = {}        # (kind, tensor) -> replacement tensor name
        self.names = {n.name for n in self.g.node}

    def _uniq(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def qdq_activation(self, tensor: str, scale: float) -> str:
        key = f"act:{tensor}"
        if key in self.done:
            return self.done[key]
        s = self._uniq(f"{tensor}_scale")
        z = self._uniq(f"{tensor}_zero_point")
        self.new_inits += [numpy_helper.from_array(np.array(scale, dtype=np.float32), s),
                           numpy_helper.from_array(np.array(0, dtype=np.int8), z)]
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        self.new_nodes += [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=self._uniq(f"{tensor}_QuantizeLinear")),
                           helper.make_node("DequantizeLinear", [q, s, z], [dq], name=self._uniq(f"{tensor}_DequantizeLinear"))]
        self.done[key] = dq
        return dq

    def qdq_weight(self, node: onnx.NodeProto, tensor: str) -> str:
        key = f"w:{tensor}"
        if key in self.done:
            return self.done[key]
        w = numpy_helper.to_array(self.inits[tensor])
        axis = weight_axis(node, w)
        scales = weight_scales(w, axis)
        s = self._uniq(f"{tensor}_scale")
        z = self._uniq(f"{tensor}_zero_point")
        self.new_inits += [numpy_helper.from_array(scales, s),
                           numpy_helper.from_array(np.zeros(scales.shape, dtype=np.int8), z)]
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        self.new_nodes += [helper.make_node("QuantizeLinear", [tensor, s, z], [q], axis=axis,
                                            name=self._uniq(f"{tensor}_QuantizeLinear")),
                           helper.make_node("DequantizeLinear", [q, s, z], [dq], axis=axis,
                                            name=self._uniq(f"{tensor}_DequantizeLinear"))]
        self.done[key] = dq
        return dq

    def fp16_input(self, tensor: str) -> str:
        key = f"h:{tensor}"
        if key in self.done:
            return self.done[key]
        if tensor in self.inits:
            arr = numpy_helper.to_array(self.inits[tensor])
            name = self._uniq(f"{tensor}_fp16")
            self.new_inits.append(numpy_helper.from_array(arr.astype(np.float16), name))
        else:
            name = f"{tensor}_to_fp16"
            self.new_nodes.append(helper.make_node("Cast", [tensor], [name], to=TensorProto.FLOAT16,
                                                   name=self._uniq(f"{tensor}_CastToFp16")))
        self.done[key] = name
        return name


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = set()
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            out.add(vi.name)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            out.add(init.name)
    return out


def check_ranges(graph: OnnxGraph, ranges: RangeSet, needed: list[str]) -> None:
    missing = [t for t in needed if t not in ranges.ranges]
    if missing:
        known = list(ranges.ranges)
        hints = []
        for t in missing[:4]:
            close = difflib.get_close_matches(t, known, n=1)
            hints.append(f"{t!r}" + (f" (closest in ranges: {close[0]!r})" if close else ""))
        extra = [t for t in known if t not in set(graph.calibration_tensors)]
        raise PlanError("ranges do not match the model's tensor names", subject="--ranges",
                        got=f"{len(missing)} tensor(s) without a range: " + "; ".join(hints)
                            + (f"; {len(extra)} range(s) for tensors the model does not have" if extra else ""),
                        hint="calibrate this very ONNX graph (same export) or pass its ranges/cache")


def build_qdq_model(graph: OnnxGraph, ranges: RangeSet, plan: PrecisionPlan, *,
                    quantize_outputs: bool = False) -> tuple[onnx.ModelProto, QdqSummary]:
    """Rewrite ``graph`` per ``plan``: Q/DQ around INT8 layers, Casts around FP16 layers.

    ``quantize_outputs=True`` also puts Q/DQ on the outputs of INT8 layers (not on graph outputs):
    the "QDQ format" ONNX Runtime needs to select its integer kernels (DQ -> Conv -> Q becomes
    QLinearConv). TensorRT does not want them (it fuses Conv+activation and quantizes after).
    """
    plan.check(graph)
    if graph.opset < 13 and plan.nodes("int8"):
        raise PlanError("per-channel Q/DQ needs opset >= 13", subject=str(graph.path or "model"),
                        got=f"opset {graph.opset}", hint="re-export the model with opset 13 or newer")
    rw = _Rewriter(graph)
    nodes = list(rw.g.node)
    producer = {o: n for n in nodes for o in n.output}
    int8 = {n.name for n in nodes if plan.precision(n.name) == "int8"}
    needed = [n.input[0] for n in nodes if n.name in int8]
    residual = []
    for n in nodes:
        if n.op_type == "Add" and len(n.input) == 2 and plan.precision(n.name) != "fp16":
            from_int8 = [producer.get(i) is not None and producer[i].name in int8 for i in n.input]
            if any(from_int8):
                other = n.input[1] if from_int8[0] else n.input[0]
                if other not in rw.inits and (producer.get(other) is None or producer[other].op_type != "Constant"):
                    residual.append((n, other))
    graph_outputs = {o.name for o in rw.g.output}
    out_q = [n.output[0] for n in nodes if quantize_outputs and n.name in int8 and n.output[0] not in graph_outputs]
    check_ranges(graph, ranges, needed + [o for _, o in residual] + out_q)

    for n in nodes:
        if n.name in int8:
            n.input[0] = rw.qdq_activation(n.input[0], ranges.ranges[n.input[0]].scale)
            n.input[1] = rw.qdq_weight(n, n.input[1])
    for add, other in residual:
        idx = list(add.input).index(other)
        add.input[idx] = rw.qdq_activation(other, ranges.ranges[other].scale)
    for tensor in out_q:
        dq = rw.qdq_activation(tensor, ranges.ranges[tensor].scale)
        for n in nodes:
            for i, name in enumerate(n.input):
                if name == tensor:
                    n.input[i] = dq

    fp16_nodes = 0
    if any(plan.precision(n.name) == "fp16" for n in nodes):
        floats = _float_tensors(graph.model)
        for n in nodes:
            if plan.precision(n.name) != "fp16" or n.op_type not in FP16_OPS:
                continue
            fp16_nodes += 1
            for i, name in enumerate(n.input):
                if name and name in floats:
                    n.input[i] = rw.fp16_input(name)
            for i, name in enumerate(n.output):
                if name and name in floats:
                    half = f"{name}_fp16"
                    n.output[i] = half
                    rw.new_nodes.append(helper.make_node("Cast", [half], [name], to=TensorProto.FLOAT,
                                                         name=rw._uniq(f"{name}_CastToFp32")))
    # rebuild in topological order: new nodes go right before their first consumer
    rw.g.initializer.extend(rw.new_inits)
    ordered = _toposort(list(rw.g.node) + rw.new_nodes)
    del rw.g.node[:]
    rw.g.node.extend(ordered)
    model = rw.model
    onnx.checker.check_model(model)
    summary = QdqSummary(activation_quantizers=sum(k.startswith("act:") for k in rw.done),
                         weight_quantizers=sum(k.startswith("w:") for k in rw.done),
                         residual_quantizers=len(residual), int8_nodes=len(int8), fp16_nodes=fp16_nodes)
    return model, summary


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Depth-first topological order that keeps the original order wherever it is already valid."""
    produced_by = {o: idx for idx, n in enumerate(nodes) for o in n.output}
    order, state = [], [0] * len(nodes)   # 0 new, 1 on the stack, 2 placed
    for i in range(len(nodes)):
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if state[j] == 2 or (state[j] == 1 and not expanded):
                continue
            if expanded:
                state[j] = 2
                order.append(nodes[j])
                continue
            state[j] = 1
            stack.append((j, True))
            for name in reversed(nodes[j].input):
                k = produced_by.get(name)
                if k is not None and state[k] == 0:
                    stack.append((k, False))
    return order
