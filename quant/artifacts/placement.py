"""The one quantizer-placement rule: for a graph and the set of INT8 layers, every quantizer TensorRT needs.

The Q/DQ writer (:mod:`.qdq`, what we ship), the planner's simulator (:class:`.sweep.QuantSim`, what
we measure) and lint (:mod:`.lint`, what we check) all consume :func:`place_quantizers`; none of them
re-derives placement. A quantizer is attached to *edges* (consumer node, input index), never to a
tensor as a whole: a tensor read by an INT8 convolution and by an FP32 layer is quantized for the
convolution only, in the simulation exactly as in the shipped graph.

TensorRT's explicit-quantization rules (NVIDIA's *Explicit Quantization* docs, pytorch-quantization's
ResNet tutorial, ModelOpt's ONNX placement):

- **Layer inputs.** An INT8 Conv/ConvTranspose/Gemm/MatMul gets a per-tensor quantizer on its
  activation input (scale = amax / 127 from the ranges, zero-point 0) and a per-channel quantizer on
  its weight (output-channel axis, scale = max|W_c| / 127). A MatMul of two activations (attention's
  Q·Kᵀ and softmax·V) gets a per-tensor quantizer on both inputs (TensorRT's placement for its INT8
  MHA kernels). What feeds them (LayerNorm, Softmax, GELU) is not quantized: TensorRT keeps those in
  float and quantizes only where an INT8 layer reads. Outputs are not quantized: TensorRT fuses
  ``DQ -> Conv -> activation -> Q`` and quantizes where the next INT8 layer reads.
- **Residual Add.** TensorRT fuses an ``Add`` into the convolution that produces one of its inputs
  when that convolution is INT8 and its output feeds only the Add; the *other* input (the skip
  branch) must then be quantized. If both inputs qualify, the one on the longer path from the graph
  inputs is fused (ModelOpt's rule: the skip is the shorter branch).
- **Pooling.** A GlobalAveragePool/AveragePool/MaxPool whose input comes (through element-wise
  activations) from an INT8 layer gets a quantizer on that input, so the pool and the layer before it
  run in INT8 instead of FP32.
"""

from __future__ import annotations
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np
import onnx
import torch

from ...core.errors import PlanError
from ...core.numerics import fake_quant
from ...core.onnxutil import constant_ranks
from ...core.trt_versions import convtranspose_weight_axis

if TYPE_CHECKING:                      # no runtime import: this module needs only numpy and onnx
    from ..graph.onnx_graph import OnnxGraph

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OPS = ("GlobalAveragePool", "AveragePool", "MaxPool")
ACTIVATION_OPS = ("Relu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu", "Tanh")


@dataclass(frozen=True)
class Quantizer:
    """One Q/DQ pair: ``tensor`` quantized for ``consumers`` (node name, input index)."""

    tensor: str
    kind: str                               # "activation" (per-tensor) | "weight" (per-channel)
    consumers: tuple[tuple[str, int], ...]
    reason: str                             # "layer input" | "weight" | "residual input" | "pooling input"
    axis: int | None = None                 # per-channel axis (weights)


@dataclass(frozen=True)
class Placement:
    int8_nodes: frozenset[str]
    quantizers: tuple[Quantizer, ...]
    fused_adds: tuple[tuple[str, str], ...] = ()   # (Add node, the INT8 layer TensorRT fuses it into)

    def activations(self) -> tuple[Quantizer, ...]:
        return tuple(q for q in self.quantizers if q.kind == "activation")

    def weights(self) -> tuple[Quantizer, ...]:
        return tuple(q for q in self.quantizers if q.kind == "weight")

    def edges(self) -> dict[tuple[str, int], Quantizer]:
        return {edge: q for q in self.quantizers for edge in q.consumers}

    def activation_tensors(self) -> list[str]:
        return sorted({q.tensor for q in self.activations()})


def weight_axis(node: onnx.NodeProto, ndim: int, trt_version: str | None = None) -> int:
    """Output-channel axis of a weight, as TensorRT expects per-channel weight scales (ConvTranspose:
    by TensorRT version, :func:`.trt_versions.convtranspose_weight_axis`)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1:
            raise PlanError("per-channel INT8 for grouped ConvTranspose is not supported",
                            subject=f"node {node.name!r}", hint="keep this node FP16/FP32 in the plan")
        return convtranspose_weight_axis(trt_version)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1   # MatMul: (..., K, N)


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel scales ``max|W_c| / 127`` (1.0 for an all-zero channel: any scale is exact)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w.astype(np.float32)).max(axis=reduce) if reduce else np.abs(w.astype(np.float32))
    scale = (amax / np.float32(127.0)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def fake_quant_weight(w: torch.Tensor, axis: int) -> torch.Tensor:
    """A weight as the shipped Q/DQ model computes with it: fake-quantized per channel along ``axis`` with
    :func:`weight_scales` (the simulator's and ``--method auto``'s one weight quantizer)."""
    s = torch.from_numpy(weight_scales(w.detach().float().cpu().numpy(), axis)).to(w.device)
    shape = [1] * w.dim()
    shape[axis] = -1
    return fake_quant(w, s.reshape(shape))


INT8_LAYERS = "Conv/ConvTranspose/Gemm/MatMul with constant weights, or a MatMul of two activations"


def is_int8_layer(node: onnx.NodeProto, consts: set[str]) -> bool:
    """A node TensorRT runs in INT8 when its inputs are quantized: a Conv/ConvTranspose/Gemm/MatMul with
    constant weights, or a MatMul of two activations (attention's batched matrix products)."""
    if node.op_type not in LAYER_OPS or len(node.input) < 2:
        return False
    if node.input[1] in consts:
        return True
    return node.op_type == "MatMul" and node.input[0] not in consts


def _depths(nodes: list[onnx.NodeProto]) -> dict[str, int]:
    """Longest path (in nodes) from a graph input to each tensor."""
    depth: dict[str, int] = {}
    for n in nodes:                       # ONNX graphs are topologically sorted
        d = 1 + max((depth.get(i, 0) for i in n.input if i), default=0)
        for o in n.output:
            depth[o] = d
    return depth


def place_quantizers(graph: "OnnxGraph | onnx.ModelProto", int8: Iterable[str], *,
                     trt_version: str | None = None) -> Placement:
    """Every quantizer TensorRT needs when the layers in ``int8`` run in INT8 (see the module docstring)."""
    model = graph if isinstance(graph, onnx.ModelProto) else graph.model
    nodes = list(model.graph.node)
    by_name = {n.name: n for n in nodes}
    int8 = frozenset(int8)
    ranks = constant_ranks(model)          # names and ranks only: no weight data is read
    consts = set(ranks)
    for name in int8:
        n = by_name.get(name)
        if n is None or not is_int8_layer(n, consts):
            raise PlanError("INT8 requested for a node that cannot be quantized", subject=f"node {name!r}",
                            expected=INT8_LAYERS)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    depth = _depths(nodes)

    acts: dict[str, list[tuple[str, int]]] = {}
    reasons: dict[str, str] = {}
    weights: list[Quantizer] = []

    def quantize(tensor: str, node: onnx.NodeProto, idx: int, reason: str) -> None:
        if tensor in consts:
            return
        acts.setdefault(tensor, []).append((node.name, idx))
        reasons.setdefault(tensor, reason)

    def from_int8_layer(tensor: str) -> bool:
        """``tensor`` is an INT8 layer's output, possibly through element-wise activations."""
        p = producer.get(tensor)
        while p is not None and p.op_type in ACTIVATION_OPS:
            p = producer.get(p.input[0])
        return p is not None and p.name in int8

    for n in nodes:
        if n.name in int8:
            quantize(n.input[0], n, 0, "layer input")
            if n.input[1] in consts:
                axis = weight_axis(n, ranks[n.input[1]], trt_version)
                weights.append(Quantizer(n.input[1], "weight", ((n.name, 1),), "weight", axis))
            else:                      # a MatMul of two activations: both inputs per tensor
                quantize(n.input[1], n, 1, "layer input")
    fused = []
    for n in nodes:
        if n.op_type == "Add" and len(n.input) == 2 and not any(i in consts for i in n.input):
            fusable = []
            for idx, t in enumerate(n.input):
                p = producer.get(t)
                if (p is not None and p.name in int8 and len(consumers.get(t, [])) == 1
                        and t not in graph_outputs):
                    fusable.append(idx)
            if not fusable:
                continue
            into = max(fusable, key=lambda i: (depth.get(n.input[i], 0), -i))
            other = 1 - into
            fused.append((n.name, producer[n.input[into]].name))
            quantize(n.input[other], n, other, "residual input")
        elif n.op_type in POOL_OPS and from_int8_layer(n.input[0]):
            quantize(n.input[0], n, 0, "pooling input")
    activation_q = [Quantizer(t, "activation", tuple(edges), reasons[t]) for t, edges in acts.items()]
    return Placement(int8, tuple(activation_q + weights), tuple(fused))


FP16_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid",
                      "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "GlobalAveragePool", "AveragePool", "MaxPool",
                      "Softmax", "Concat", "BatchNormalization", "Flatten", "Reshape", "Transpose", "Pad", "ReduceMean",
                      "Pow", "Sqrt", "Erf", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"})


def fp16_nodes(model: onnx.ModelProto, plan) -> frozenset[str]:
    """The nodes that compute in FP16 under ``plan``: those it marks fp16 (of the ops we cast), except an
    element-wise activation applied to an INT8 layer's output. TensorRT fuses that activation into the
    INT8 layer (Conv + bias + Clip + Q), so it takes the layer's precision; an FP16 Cast around it would
    split the fusion (review finding 10)."""
    int8 = plan.nodes("int8")
    producer = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for n in model.graph.node:
        if plan.precision(n.name) != "fp16" or n.op_type not in FP16_OPS:
            continue
        if n.op_type in ACTIVATION_OPS:
            p = producer.get(n.input[0])
            while p is not None and p.op_type in ACTIVATION_OPS:
                p = producer.get(p.input[0])
            if p is not None and p.name in int8:
                continue
        out.add(n.name)
    return frozenset(out)
