"""The planner's latency models: what a precision plan is estimated to cost on a GPU.

Where TensorRT runs, :class:`LayerTimesModel` sums TensorRT's measured per-layer times of an all-INT8 and an
all-FP16 engine. Elsewhere a plan's latency is **estimated** by a roofline, never measured, and every record and
report says so. The roofline (:class:`RooflineModel`), for an engine the way TensorRT builds one from our Q/DQ
model:

- **Kernels.** Every compute layer (Conv, ConvTranspose, Gemm, MatMul) is one kernel with the elementwise
  layers that follow it fused into its epilogue (BatchNorm, ReLU/Clip, residual Add, ...: TensorRT's
  conv+activation and conv+add fusions); pooling, concatenation, resizing and other data-movement layers
  are kernels of their own in FP16; reshapes are free.
- **Time of a kernel** = max(2·MACs / peak, bytes / bandwidth) + a fixed ``overhead_us`` (launch and tail),
  with the peak of its precision: the GPU's dense INT8 tensor-core TOPS for an INT8 layer, its dense FP16
  TFLOPS for an FP16 one (:data:`...core.gpus.GPUS`: datasheet figures, no sparsity).
- **Bytes** = activations read + weights + activations written, 1 byte an element in INT8, 2 in FP16. A layer
  writes its output in INT8 when every layer reading it is INT8 (the next layer's quantizer fused into the
  epilogue), else in FP16; a tensor read by INT8 and FP16 layers alike, or written in FP16 (an FP16 layer,
  a pooling, the input) and read by an INT8 layer, costs a reformat kernel (read 2 bytes, write 1). Keeping
  a layer in FP16 therefore costs its own slower kernel *and* the precision switches around it.

It is a lower bound of an ideal kernel, not a prediction of TensorRT's tactic choice: its use is to rank
plans (a big layer kept in FP16 costs more than a small one; switches cost), and it is labelled
``estimated (roofline)`` wherever it appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from ...core.errors import ConfigError
from ...core.gpus import GpuSpec
from ...core.types import Inputs, feeds, resize_rows
from ..artifacts.plan import quantizable_nodes
from ..graph.interpreter import TorchGraphExecutor
from ..graph.onnx_graph import OnnxGraph


KERNEL_OVERHEAD_US = 2.0
"""Fixed cost of one kernel (launch and tail), an assumption of the model, the same on every GPU."""

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FUSED_OPS = frozenset({"Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                       "LeakyRelu", "PRelu", "Elu", "Selu", "Erf", "Gelu", "BatchNormalization", "Identity", "Neg",
                       "Abs", "Sqrt", "Exp", "Pow"})
FREE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Gather", "Cast", "Identity"})


@dataclass
class _Kernel:
    """One kernel of the engine: a compute layer (``layer``) or a data-movement group, with what it moves."""
    anchor: str                      # the node that starts it
    layer: str | None                # the quantizable node it runs, when it is one
    macs: int = 0                    # per image
    act_in: int = 0                  # activation elements read, per image
    weights: int = 0                 # weight elements
    out: str = ""                    # the tensor it writes (the end of its fused chain)
    out_elems: int = 0               # per image
    inputs: tuple[str, ...] = ()     # activation tensors it reads
    readers: list[str] = field(default_factory=list)   # kernels that read ``out`` ("" = the graph's output)


class LatencyModel:
    """What the planner asks of a latency model: ``estimate(int8)`` = seconds of a batch with the layers ``int8``
    in INT8 and every other quantizable layer in FP16, and words for the report (``describe``)."""

    layers: list[str]

    def estimate(self, int8: Iterable[str]) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def estimate_fp16(self, fp16: Iterable[str]) -> float:
        """The seconds of the plan that keeps ``fp16`` in FP16 and the other quantizable layers INT8."""
        return self.estimate(set(self.layers) - set(fp16))

    def fp16_costs(self) -> dict[str, float]:
        """Seconds each quantizable layer adds when it alone stays FP16 in an otherwise INT8 model."""
        base = self.estimate(self.layers)
        return {n: self.estimate_fp16({n}) - base for n in self.layers}


class RooflineModel(LatencyModel):
    """Estimated latency of any plan of one graph on one GPU (the module docstring has the model)."""

    def __init__(self, graph: OnnxGraph, example: np.ndarray | Inputs, gpu: GpuSpec, *,
                 batch: int = 1, overhead_us: float = KERNEL_OVERHEAD_US):
        if batch < 1:
            raise ConfigError("invalid latency batch", subject="--latency-batch", got=str(batch), expected=">= 1")
        self.graph, self.gpu, self.batch, self.overhead_us = graph, gpu, batch, overhead_us
        self.layers = quantizable_nodes(graph)
        self.kernels = self._kernels(*self._shapes(example))

    # ---- the graph, once ----------------------------------------------------------------------------------
    def _shapes(self, example) -> tuple[TorchGraphExecutor, dict[str, tuple[int, ...]]]:
        """Every tensor's shape for one image (the graph run once on the example's first row)."""
        ex = TorchGraphExecutor(self.graph, "cpu", unsupported_hint="the latency model runs the graph once "
                                                                   "with PyTorch to learn its shapes")
        rows = self.graph.fixed_batch or 1              # a fixed-batch graph runs at its batch: shapes / rows
        fed = {k: torch.from_numpy(np.ascontiguousarray(resize_rows(np.asarray(v), rows), dtype=np.float32))
               for k, v in feeds([gi.name for gi in self.graph.inputs], example).items()}
        shapes: dict[str, tuple[int, ...]] = {k: (1, *v.shape[1:]) for k, v in fed.items()}

        def tap(i, inputs, outputs):
            node = ex.nodes[i][0]
            for name, v in zip(node.output, outputs):
                if name and isinstance(v, torch.Tensor):
                    per_image = v.shape[0] // rows if v.dim() and v.shape[0] == rows and rows > 1 else None
                    shapes[name] = (1, *v.shape[1:]) if per_image else tuple(v.shape)
        with torch.no_grad():
            ex.run(fed, tap=tap)
        return ex, shapes

    def _kernels(self, ex: TorchGraphExecutor, shapes: dict[str, tuple[int, ...]]) -> list[_Kernel]:
        consts = set(ex.consts)
        numel = lambda t: int(np.prod(shapes[t])) if t in shapes else 0          # noqa: E731
        nodes = [n for n, _, _ in ex.nodes]
        consumers: dict[str, list[int]] = {}
        for i, (_, _, inputs) in enumerate(ex.nodes):
            for t in inputs:
                if t and t not in consts:
                    consumers.setdefault(t, []).append(i)
        layers = set(self.layers)
        owner: dict[int, _Kernel] = {}
        kernels: list[_Kernel] = []
        for i, node in enumerate(nodes):
            if i in owner or node.op_type in FREE_OPS:
                continue
            acts = tuple(t for t in ex.nodes[i][2] if t and t not in consts)
            k = _Kernel(node.name, node.name if node.name in layers else None, inputs=acts,
                        act_in=sum(numel(t) for t in acts))
            if node.op_type in COMPUTE_OPS:
                k.weights = sum(_numel_const(ex, t) for t in ex.nodes[i][2][1:2] if t in consts)
                k.macs = _macs(node, ex.nodes[i][1], ex.nodes[i][2], shapes, ex)
            owner[i] = k
            kernels.append(k)
            tail = i
            # absorb the elementwise chain that follows (one reader at each step): the fused epilogue
            while node.op_type in COMPUTE_OPS:
                out = nodes[tail].output[0]
                readers = consumers.get(out, [])
                if len(readers) != 1 or out in self.graph.outputs:
                    break
                j = readers[0]
                if nodes[j].op_type not in FUSED_OPS or j in owner:
                    break
                owner[j] = k
                extra = tuple(t for t in ex.nodes[j][2] if t and t not in consts and t != out and numel(t) > 1)
                k.inputs += extra
                k.act_in += sum(numel(t) for t in extra)
                tail = j
            k.out = nodes[tail].output[0]
            k.out_elems = numel(k.out)
        producer = {o: (n, inputs) for n, _, inputs in ex.nodes for o in n.output}
        through = lambda t: _through_free(t, producer, consts)                   # noqa: E731
        by_out = {k.out: k for k in kernels}
        for k in kernels:                                # who reads each kernel's output (through free ops)
            for t in k.inputs:
                src = through(t)
                if src in by_out:
                    by_out[src].readers.append(k.anchor)
        for o in self.graph.outputs:
            src = through(o)
            if src in by_out:
                by_out[src].readers.append("")
        self._sources = {k.anchor: [through(t) for t in k.inputs] for k in kernels}
        self._input_elems = {gi.name: numel(gi.name) for gi in self.graph.inputs}
        return kernels

    # ---- a plan ---------------------------------------------------------------------------------------------
    def estimate(self, int8: Iterable[str]) -> float:
        """Seconds of one batch of ``batch`` images with the layers ``int8`` in INT8 and every other one in FP16."""
        return self.breakdown(int8)["total_s"]

    def breakdown(self, int8: Iterable[str]) -> dict:
        int8 = set(int8)
        is8 = {k.anchor: k.layer is not None and k.layer in int8 for k in self.kernels}
        bw, b, over = self.gpu.bandwidth_gbs * 1e9, self.batch, self.overhead_us * 1e-6
        per_kernel: dict[str, float] = {}
        out_bytes: dict[str, int] = {}
        reformat = 0.0
        for k in self.kernels:                           # the precision each tensor is written in
            readers = k.readers
            if readers and all(r and is8[r] for r in readers):
                out_bytes[k.out] = 1
            else:
                out_bytes[k.out] = 2
                if any(r and is8[r] for r in readers):   # INT8 readers of an FP16 tensor: a reformat
                    reformat += 3 * k.out_elems * b / bw + over
        for name, elems in self._input_elems.items():   # the graph input, quantized once for INT8 readers
            if any(is8[k.anchor] and name in self._sources[k.anchor] for k in self.kernels):
                reformat += 3 * elems * b / bw + over
        for k in self.kernels:
            s = 1 if is8[k.anchor] else 2
            moved = (k.act_in * b + k.weights) * s + k.out_elems * b * out_bytes[k.out]
            peak = (self.gpu.int8_tops if is8[k.anchor] else self.gpu.fp16_tflops) * 1e12
            per_kernel[k.anchor] = max(2.0 * k.macs * b / peak, moved / bw) + over
        return {"total_s": sum(per_kernel.values()) + reformat, "kernels_s": per_kernel, "reformat_s": reformat}

    def describe(self) -> str:
        return (f"estimated (roofline), {self.gpu.describe}, batch {self.batch}, {self.overhead_us:g} µs per kernel; "
                f"{len(self.kernels)} kernels")


def _numel_const(ex: TorchGraphExecutor, name: str) -> int:
    return int(ex.consts[name].numel()) if name in ex.consts else 0


def _through_free(t: str, producer: dict, consts: set) -> str:
    """The tensor that ``t`` is a free view of (reshapes and the like), back to its producer's output."""
    seen = 0
    while t in producer and producer[t][0].op_type in FREE_OPS and seen < 64:
        ins = [x for x in producer[t][1] if x and x not in consts]
        if not ins:
            break
        t, seen = ins[0], seen + 1
    return t


def _macs(node, attrs: dict, inputs: list[str], shapes: dict, ex: TorchGraphExecutor) -> int:
    """Multiply-accumulates of one image through a compute node (from its output and weight shapes)."""
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = ex.consts.get(inputs[1]) if len(inputs) > 1 else None
        wshape = tuple(w.shape) if w is not None else shapes.get(inputs[1], ())
        if len(wshape) < 3:
            return 0
        if op == "Conv":        # each output element: Cin/group × kernel
            return int(np.prod(out)) * int(np.prod(wshape[1:]))
        return int(np.prod(shapes.get(inputs[0], ()))) * int(np.prod(wshape[1:]))   # each input element scattered
    a = shapes.get(inputs[0], ())
    if not a:
        return 0
    k = a[-1] if not (op == "Gemm" and attrs.get("transA", 0)) else a[-2]
    return int(np.prod(out)) * int(k)


class LayerTimesModel(LatencyModel):
    """A plan's latency from TensorRT's **measured** per-layer times of two engines of the graph, all INT8 and all
    FP16 (``TrtEngine.layer_times``): each quantizable layer costs the time of the engine layers it is part of (a
    fused layer's name lists its ONNX nodes) in its precision's engine, every other engine layer its all-INT8 time.
    The per-layer times are measured; a plan's total is their sum, so it is an estimate (reformats at precision
    switches of a mixed plan are not in either engine)."""

    def __init__(self, graph: OnnxGraph, int8_ms: dict[str, float], fp16_ms: dict[str, float], *, gpu: str,
                 batch: int):
        self.layers = quantizable_nodes(graph)
        self.gpu, self.batch = gpu, batch
        known = set(self.layers)
        self._int8 = _by_owner(int8_ms, known)
        self._fp16 = _by_owner(fp16_ms, known)

    def estimate(self, int8: Iterable[str]) -> float:
        int8 = set(int8)
        total = sum(self._int8.get(None, {}).values())
        for n in self.layers:
            total += sum((self._int8 if n in int8 else self._fp16).get(n, {}).values())
        return total * 1e-3

    def describe(self) -> str:
        return (f"estimated from TensorRT's per-layer times (IProfiler, measured) of an all-INT8 and an all-FP16 "
                f"engine on {self.gpu}, batch {self.batch}; reformats between precisions not included")


def _by_owner(times: dict[str, float], layers: set[str]) -> dict[str | None, dict[str, float]]:
    """Engine layer times by the quantizable ONNX node each one runs (None: layers that run none)."""
    out: dict[str | None, dict[str, float]] = {}
    for name, ms in times.items():
        owner = next((p for p in (part.strip() for part in name.split(" + ")) if p in layers), None)
        out.setdefault(owner, {})[name] = ms
    return out


def latency_order(regain: dict[str, float], fp16_cost: dict[str, float]) -> list[str]:
    """The search order of the latency objective: layers whose FP16 costs nothing first (most regain first),
    then by SQNR regained per second of latency added, layers that regain nothing last."""
    def key(n):
        r, c = regain[n], fp16_cost[n]
        if c <= 0:
            return (0, -r)
        return (1, -r / c) if r > 0 else (2, -r)
    return sorted(regain, key=key)
