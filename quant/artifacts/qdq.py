"""Explicit quantization: ranges + precision plan -> a Q/DQ ONNX model for TensorRT 10/11.

Where the quantizers go is decided by :func:`.placement.place_quantizers` (the one placement rule,
shared with the planner's simulator and lint); this module only writes them:

- each quantizer becomes QuantizeLinear -> DequantizeLinear (activations per-tensor with scale =
  amax / 127 from the ranges, weights per-channel with scale = max|W_c| / 127), zero-point 0 int8,
  read by exactly the consumers the placement names;
- FP16 nodes (:func:`.placement.fp16_nodes`) compute on FP16 tensors: weights and constants become
  FP16 initializers (no Cast on a constant: onnx-tensorrt would turn a Clip bound behind a Cast into
  an element-wise layer), a ``Cast`` to FLOAT16 only where a tensor enters the FP16 region, and a
  ``Cast`` back to FLOAT only where an FP16 tensor leaves it (an FP32/INT8 consumer or a graph
  output), under the original name. Between two FP16 nodes the tensor stays FP16 (``<name>_fp16``);
  FP32 nodes are untouched.

Only the marking (which tensor gets which quantizer) depends on the plan; the rewrite is one pass.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...core.errors import PlanError
from ...core.onnxutil import constant_values, toposort
from ...core.types import RangeSet
from ..graph.onnx_graph import OnnxGraph
from .placement import fp16_nodes, place_quantizers, weight_scales
from .plan import PrecisionPlan


@dataclass(frozen=True)
class QdqSummary:
    activation_quantizers: int
    weight_quantizers: int
    residual_quantizers: int
    int8_nodes: int
    fp16_nodes: int


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

    def qdq_weight(self, tensor: str, axis: int) -> str:
        key = f"w:{tensor}:{axis}"
        if key in self.done:
            return self.done[key]
        w = self._constant(tensor)
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

    def _constant(self, tensor: str) -> np.ndarray:
        if tensor in self.inits:
            return numpy_helper.to_array(self.inits[tensor])
        node = next(n for n in self.g.node if n.op_type == "Constant" and n.output[0] == tensor)
        return numpy_helper.to_array(node.attribute[0].t)

    def fp16_input(self, tensor: str, constant: np.ndarray | None = None) -> str:
        key = f"h:{tensor}"
        if key in self.done:
            return self.done[key]
        if constant is not None:
            name = self._uniq(f"{tensor}_fp16")
            self.new_inits.append(numpy_helper.from_array(constant.astype(np.float16), name))
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


def check_ranges(graph: OnnxGraph, ranges: RangeSet, needed: list[str], *, subject: str = "--ranges",
                 hint: str | None = None) -> None:
    missing = [t for t in needed if t not in ranges.ranges]
    if missing:
        known = list(ranges.ranges)
        hints = []
        for t in missing[:4]:
            close = difflib.get_close_matches(t, known, n=1)
            hints.append(f"{t!r}" + (f" (closest in ranges: {close[0]!r})" if close else ""))
        extra = [t for t in known if t not in set(graph.calibration_tensors)]
        raise PlanError("ranges do not match the model's tensor names", subject=subject,
                        got=f"{len(missing)} tensor(s) without a range: " + "; ".join(hints)
                            + (f"; {len(extra)} range(s) for tensors the model does not have" if extra else ""),
                        hint=hint or "calibrate this very ONNX graph (same export) or pass its ranges/cache")


def build_qdq_model(graph: OnnxGraph, ranges: RangeSet, plan: PrecisionPlan, *,
                    trt_version: str | None = None, ranges_subject: str = "--ranges",
                    ranges_hint: str | None = None) -> tuple[onnx.ModelProto, QdqSummary]:
    """Rewrite ``graph`` per ``plan``: Q/DQ where :func:`.placement.place_quantizers` puts them, Casts
    around FP16 layers. The quantizers are exactly the ones the planner simulates."""
    plan.check(graph)
    if graph.opset < 13 and plan.nodes("int8"):
        raise PlanError("per-channel Q/DQ needs opset >= 13", subject=str(graph.path or "model"),
                        got=f"opset {graph.opset}", hint="re-export the model with opset 13 or newer")
    placement = place_quantizers(graph, plan.nodes("int8"), trt_version=trt_version)
    rw = _Rewriter(graph)
    nodes = list(rw.g.node)
    by_name = {n.name: n for n in nodes}
    check_ranges(graph, ranges, placement.activation_tensors(), subject=ranges_subject, hint=ranges_hint)
    for q in placement.quantizers:
        dq = (rw.qdq_activation(q.tensor, ranges.ranges[q.tensor].scale) if q.kind == "activation"
              else rw.qdq_weight(q.tensor, q.axis))
        for node, idx in q.consumers:
            by_name[node].input[idx] = dq
    int8 = placement.int8_nodes
    residual = placement.fused_adds

    half_nodes = fp16_nodes(graph.model, plan)
    if half_nodes:
        floats = _float_tensors(graph.model)
        constants = constant_values(graph.model)
        graph_outputs = {o.name for o in rw.g.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes + rw.new_nodes:                # the quantizers read original tensors too
            for name in n.input:
                readers.setdefault(name, []).append(n)
        half_of = {name: rw._uniq(f"{name}_fp16")      # FP16 node output -> its FP16 tensor
                   for n in nodes if n.name in half_nodes for name in n.output if name in floats}
        for n in nodes:
            if n.name not in half_nodes:
                continue
            for i, name in enumerate(n.input):
                if not name or name not in floats:
                    continue
                n.input[i] = half_of.get(name) or rw.fp16_input(name, constants.get(name))
            for i, name in enumerate(n.output):
                if name in half_of:
                    n.output[i] = half_of[name]
                    leaves = name in graph_outputs or any(r.name not in half_nodes for r in readers.get(name, []))
                    if leaves:          # an FP32/INT8 reader or the graph output: back to FP32 under the old name
                        rw.new_nodes.append(helper.make_node("Cast", [half_of[name]], [name], to=TensorProto.FLOAT,
                                                             name=rw._uniq(f"{name}_CastToFp32")))
        # Constant nodes read only by FP16 nodes now feed nobody (their FP16 copies are initializers); a
        # weight quantizer may still read one
        used = {i for n in nodes + rw.new_nodes for i in n.input} | graph_outputs
        for n in [n for n in nodes if n.op_type == "Constant" and n.output[0] not in used]:
            rw.g.node.remove(n)
    # rebuild in topological order: new nodes go right before their first consumer
    rw.g.initializer.extend(rw.new_inits)
    ordered = toposort(list(rw.g.node) + rw.new_nodes)
    del rw.g.node[:]
    rw.g.node.extend(ordered)
    model = rw.model
    onnx.checker.check_model(model)
    summary = QdqSummary(activation_quantizers=len(placement.activations()),
                         weight_quantizers=len(placement.weights()),
                         residual_quantizers=len(residual), int8_nodes=len(int8), fp16_nodes=len(half_nodes))
    return model, summary
