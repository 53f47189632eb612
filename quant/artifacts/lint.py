"""Lint a Q/DQ ONNX model against TensorRT's explicit-quantization rules.

Errors (TensorRT rejects the model or silently runs the layer in float): non-zero zero-points,
non-INT8 quantizers, non-finite or non-positive scales, per-channel scales on the wrong axis or of
the wrong length, QuantizeLinear not followed by a DequantizeLinear with the same scale/zero-point,
a quantized layer input whose weights are not quantized. Warnings (the model builds, but slower):
a residual Add quantized on the wrong input or not at all, an unquantized pooling input after an INT8
layer (both checked against the one placement rule of :mod:`.placement`), Q/DQ between a layer and
its activation, and FP16 regions TensorRT builds slower: Casts of constants, back-to-back FP16 ->
FP32 -> FP16 Casts, an FP16 activation after an INT8 layer.
"""

from __future__ import annotations
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...core.errors import QuantError
from .placement import LAYER_OPS, place_quantizers, weight_axis

LAYERS = LAYER_OPS
ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "HardSwish", "LeakyRelu", "Tanh")


@dataclass(frozen=True)
class Finding:
    severity: str       # error | warning
    node: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.severity:<7} {self.node}: {self.message}. Hint: {self.hint}"


def count_qdq(model: onnx.ModelProto) -> tuple[int, int]:
    """(QuantizeLinear nodes, DequantizeLinear nodes): zero of both means lint had nothing to check."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def lint_model(model: onnx.ModelProto) -> list[Finding]:
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    values = {**inits, **consts}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: list[Finding] = []

    def add(sev, node, msg, hint):
        out.append(Finding(sev, node.name or node.op_type, msg, hint))

    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = values.get(n.input[1]) if len(n.input) > 1 else None
        zp = values.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            add("error", n, "scale is not a constant", "TensorRT needs constant (initializer) scales")
        elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            add("error", n, f"scale must be finite and positive, got min {float(np.min(scale))!r}",
                "recompute the ranges; an all-zero tensor still needs a positive scale")
        if zp is None:
            add("error", n, "zero point missing: ONNX then defaults to uint8", "add an int8 zero point of 0")
        else:
            if zp.dtype != np.int8:
                add("error", n, f"zero point is {zp.dtype}, TensorRT supports int8 only", "use int8 with zero point 0 (symmetric)")
            if np.any(zp != 0):
                add("error", n, f"zero point must be 0 (symmetric), got {zp.reshape(-1)[:4].tolist()}",
                    "TensorRT quantization is symmetric: fold the offset into the range")
        if scale is not None and np.size(scale) > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            data = values.get(n.input[0])
            if data is None and n.op_type == "DequantizeLinear" and n.input[0] in producer:
                q = producer[n.input[0]]
                data = values.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
            if data is not None:
                if not -data.ndim <= axis < data.ndim or data.shape[axis] != np.size(scale):
                    add("error", n, f"per-channel scales ({np.size(scale)}) do not match axis {axis} of shape {data.shape}",
                        "scales along the output-channel axis: one per channel")
                else:
                    for c in consumers.get(n.output[0], []):
                        if c.op_type in LAYERS and c.input[1] == n.output[0]:
                            want = weight_axis(c, data.ndim)
                            # ConvTranspose: axis 0 for TensorRT <= 9, 1 from 10 (review finding 2): both valid
                            ok = {0, 1} if c.op_type == "ConvTranspose" else {want}
                            if axis % data.ndim not in ok:
                                add("error", n, f"per-channel axis {axis} is not the output-channel axis {want} of "
                                                f"{c.op_type} {c.name!r}", f"quantize weights along axis {want}")
            elif n.input[0] not in values:
                add("error", n, "per-channel scales on an activation", "activations take one per-tensor scale")
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            users = consumers.get(n.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                add("error", n, "QuantizeLinear output not consumed by a DequantizeLinear only",
                    "pair every Q with a DQ: TensorRT fuses Q/DQ pairs into the quantized layer")
            for u in users:
                if u.op_type == "DequantizeLinear" and (u.input[1:] != n.input[1:]):
                    sq, sd = values.get(n.input[1]), values.get(u.input[1])
                    same = sq is not None and sd is not None and np.array_equal(sq, sd)
                    if not same:
                        add("error", u, "DequantizeLinear scale differs from its QuantizeLinear",
                            "a Q/DQ pair must use the same scale and zero point")
        if n.op_type == "DequantizeLinear" and n.input[0] in producer and producer[n.input[0]].op_type != "QuantizeLinear":
            add("error", n, f"DequantizeLinear input comes from {producer[n.input[0]].op_type}, not a QuantizeLinear",
                "pair every DQ with a Q (or an int8 weight initializer)")
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    for n in g.node:
        if n.op_type in LAYERS and len(n.input) > 1:
            x_q, w_q = n.input[0] in dq_out, n.input[1] in dq_out
            if x_q and not w_q and n.input[1] in values:
                add("error", n, "input is quantized but the weights are not: the layer runs in float",
                    "add a per-channel Q/DQ on the weights")
            if w_q and not x_q:
                add("warning", n, "weights are quantized but the input is not: the layer runs in float",
                    "add a Q/DQ on the layer's input (per-tensor, from the calibrated range)")
        if n.op_type in ACTIVATIONS and n.input[0] in dq_out:
            q = producer[producer[n.input[0]].input[0]] if producer[n.input[0]].input[0] in producer else None
            if q is not None and q.input[0] in producer and producer[q.input[0]].op_type in LAYERS:
                add("warning", n, "Q/DQ between a layer and its activation blocks their fusion",
                    "quantize after the activation (the next layer's input) instead")
    out.extend(_placement_findings(g, producer, values))
    out.extend(_cast_findings(g, producer, consumers, values, dq_out))
    return out


def _cast_to(n: onnx.NodeProto) -> int | None:
    return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None


def _cast_findings(g, producer, consumers, values, dq_out) -> list[Finding]:
    """FP16 regions written so that TensorRT builds them slower (review finding 10)."""
    found = []
    half, full = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    graph_outputs = {o.name for o in g.output}
    for n in g.node:
        to = _cast_to(n)
        if to is None:
            continue
        if n.input[0] in values:
            found.append(Finding("warning", n.name or n.op_type, "Cast of a constant: onnx-tensorrt makes it a "
                                 "Cast layer, so e.g. a Clip bound becomes a tensor and Clip an element-wise layer",
                                 "store the constant in the target type (an FP16 initializer); `cli.py build` does"))
        p = producer.get(n.input[0])
        if to == half and p is not None and _cast_to(p) == full and producer.get(p.input[0]) is not None:
            src = producer[p.input[0]]
            if _cast_to(src) is None and all(_cast_to(c) == half for c in consumers.get(p.output[0], [])) \
                    and p.output[0] not in graph_outputs:
                found.append(Finding("warning", p.name or p.op_type, "back-to-back Casts FP16 -> FP32 -> FP16 "
                                     "between two FP16 layers", "keep the tensor FP16 between FP16 layers: Cast "
                                                                "only where it leaves the FP16 region"))
        # Conv(INT8) -> Cast(fp16) -> activation -> Cast(fp32) -> Q: the FP16 activation splits Conv+act+Q
        if to == half and p is not None and p.op_type in LAYERS and len(p.input) > 1 and p.input[0] in dq_out:
            acts = [c for c in consumers.get(n.output[0], []) if c.op_type in ACTIVATIONS]
            if acts:
                found.append(Finding("warning", acts[0].name or acts[0].op_type, "FP16 activation after an INT8 "
                                     "layer: TensorRT cannot fuse Conv + activation + Q, the layer's output goes "
                                     "through FP16", "give the activation its INT8 layer's precision; "
                                                     "`cli.py build` does"))
    return found


def _placement_findings(g, producer, values) -> list[Finding]:
    """Compare the model's activation quantizers with the one placement rule (:mod:`.placement`) for the
    layers it quantizes: a missing one (residual skip, pooling input) or one on the branch TensorRT fuses."""
    def source(t: str) -> str | None:
        """The float tensor behind a DQ(Q(t)) edge, else None."""
        dq = producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]

    stripped = onnx.helper.make_graph([], g.name, list(g.input), list(g.output))
    actual: dict[tuple[str, int], str] = {}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        c = onnx.NodeProto()
        c.CopyFrom(n)
        for i, t in enumerate(n.input):
            src = source(t) if t else None
            if src is not None:
                c.input[i] = src
                if src not in values:
                    actual[(n.name, i)] = src
        stripped.node.append(c)
    read = {i for n in stripped.node for i in n.input}
    stripped.initializer.extend(i for i in g.initializer if i.name in read)
    model = onnx.helper.make_model(stripped)
    int8 = [n.name for n in g.node if n.op_type in LAYERS and len(n.input) > 1
            and (n.name, 0) in actual and source(n.input[1]) in values]
    try:
        expected = place_quantizers(model, int8).edges()
    except QuantError:
        return []
    nodes = {n.name: n for n in g.node}
    found = []
    for edge, q in expected.items():
        node = nodes[edge[0]]
        if edge not in actual and node.op_type not in LAYERS:
            what = ("residual Add's skip input is not quantized: TensorRT cannot fuse the Add into the INT8 "
                    "convolution and runs it in float" if node.op_type == "Add" else
                    "pooling input from an INT8 layer is not quantized: the layer and the pool run in float")
            found.append(Finding("warning", node.name or node.op_type, what,
                                 f"quantize input {edge[1]} ({q.tensor!r}); `cli.py build` writes this placement"))
    for (name, idx), tensor in actual.items():
        node = nodes[name]
        if node.op_type == "Add" and (name, idx) not in expected:
            found.append(Finding("warning", name, f"residual Add quantizes input {idx} ({tensor!r}), the branch "
                                                  "TensorRT fuses into its convolution, instead of the skip input",
                                 "quantize the skip input and leave the single-consumer convolution output float"))
    return found
