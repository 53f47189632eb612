"""The ONNX graph as the single source of truth for tensor names, and executors that run it.

``OnnxGraph`` loads and validates a model and lists the tensors TensorRT may quantize (the graph
inputs and every data-dependent floating-point node output, by ONNX value name). Two executors run
exactly that graph and hand each of those tensors to an ``observe(name, tensor)`` callback:

- ``TorchGraphExecutor``: interprets the ONNX nodes one by one with PyTorch ops, on the GPU when
  present. Fast, and every observed value *is* the ONNX tensor of that name.
- ``OrtGraphExecutor``: ONNX Runtime with every calibrated tensor added as a graph output; the
  universal fallback for operators the interpreter does not implement.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ...core.errors import ModelError
from ...core.numerics import fake_quant
from ...core.runtime import strict_fp32
from .onnx_graph import Observer, OnnxGraph


# ------------------------------------------------------------------------------------------
# PyTorch interpreter


# ------------------------------------------------------------------------------------------
def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _pad_pairs(pads: Sequence[int], nd: int) -> list[int]:
    """ONNX pads [b1..bn, e1..en] -> torch F.pad order (last dim first)."""
    out = []
    for d in reversed(range(nd)):
        out += [int(pads[d]), int(pads[d + nd])]
    return out


def _auto_pads(x: torch.Tensor, kernel, strides, dilations, mode: str) -> list[int]:
    spatial = x.shape[2:]
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        if mode == "SAME_UPPER":
            begins.append(small); ends.append(big)
        else:
            begins.append(big); ends.append(small)
    return begins + ends


def _resolve_pads(node_attrs, x, kernel, strides, dilations):
    nd = len(kernel)
    mode = node_attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return _auto_pads(x, kernel, strides, dilations, mode)
    if mode == "VALID":
        return [0] * (2 * nd)
    return list(node_attrs.get("pads", [0] * (2 * nd)))


def _conv(x, w, b=None, **a):
    nd = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * nd)
    dil = a.get("dilations", [1] * nd)
    pads = _resolve_pads(a, x, kernel, strides, dil)
    sym = all(pads[i] == pads[i + nd] for i in range(nd))
    if not sym:
        x = F.pad(x, _pad_pairs(pads, nd))
        pads = [0] * (2 * nd)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=strides, padding=pads[:nd], dilation=dil, groups=a.get("group", 1))


def _pool(x, kind, **a):
    kernel = a["kernel_shape"]
    nd = len(kernel)
    strides = a.get("strides", [1] * nd)
    dil = a.get("dilations", [1] * nd)
    pads = _resolve_pads(a, x, kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    sym = all(pads[i] == pads[i + nd] for i in range(nd)) and all(pads[i] <= kernel[i] // 2 for i in range(nd))
    if kind == "max":
        if not sym:
            x = F.pad(x, _pad_pairs(pads, nd), value=float("-inf"))
            pads = [0] * (2 * nd)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, kernel, strides, pads[:nd], dil, ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    if not sym:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric pads and count_include_pad=0")
        x = F.pad(x, _pad_pairs(pads, nd))
        pads = [0] * (2 * nd)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)


def _gemm(a_, b_, c=None, **a):
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    y = a.get("alpha", 1.0) * (a_ @ b_)
    if c is not None:
        y = y + a.get("beta", 1.0) * c
    return y


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", None) if lo is None else lo
    hi = a.get("max", None) if hi is None else hi
    if lo is not None and hi is not None and not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
        return torch.clamp(x, lo, hi)
    if isinstance(lo, torch.Tensor):
        lo = lo.item() if lo.numel() == 1 else lo
    if isinstance(hi, torch.Tensor):
        hi = hi.item() if hi.numel() == 1 else hi
    return torch.clamp(x, lo, hi)


def _reshape(x, shape, **a):
    shape = _ints(shape)
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(x, **a):
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = math.prod(x.shape[:axis]) if axis else 1     # Python ints: torch.compile traces it without a break
    return x.reshape(lead, -1)


def _gather(x, idx, **a):
    axis = a.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    idx = idx.to(torch.int64).to(x.device)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def _axes(a, axes_in, opset_attr="axes"):
    if axes_in is not None:
        return _ints(axes_in)
    return list(a.get(opset_attr, []))


def _unsqueeze(x, axes=None, **a):
    axes = sorted(ax + x.dim() + len(_axes(a, axes)) if ax < 0 else ax for ax in _axes(a, axes))
    for ax in axes:
        x = x.unsqueeze(ax)
    return x


def _squeeze(x, axes=None, **a):
    axes = _axes(a, axes)
    if not axes:
        return x.squeeze()
    for ax in sorted((ax + x.dim() if ax < 0 else ax for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _slice(x, starts, ends, axes=None, steps=None, **a):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax + x.dim() if ax < 0 else ax
        # ONNX Slice clamps exactly like Python's slice.indices (negative steps included)
        idx = range(*slice(s, e, st).indices(x.shape[ax]))
        if st > 0:
            x = x[(slice(None),) * ax + (slice(idx.start, idx.stop, st),)]
        else:
            x = x.index_select(ax, torch.tensor(list(idx), dtype=torch.int64, device=x.device))
    return x


def _per_axis(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    v = v.to(x.device)
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * x.dim()
    shape[axis if axis >= 0 else axis + x.dim()] = -1
    return v.reshape(shape)


def _quantize_linear(x, scale, zero_point=None, **a):
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), int8 or uint8."""
    axis = a.get("axis", 1)
    s = _per_axis(scale, x, axis)
    out_dtype = zero_point.dtype if zero_point is not None else torch.uint8
    lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    q = torch.round(x / s)
    if zero_point is not None:
        q = q + _per_axis(zero_point, x, axis).to(q.dtype)
    return torch.clamp(q, lo, hi).to(out_dtype)


def _dequantize_linear(x, scale, zero_point=None, **a):
    fused = a.get("_fake_quant")           # DQ(Q(x)) of one per-tensor int8 quantizer (TorchGraphExecutor)
    if fused is not None:
        if x.dtype == torch.float32:
            return fake_quant(x, fused)
        return _dequantize_linear(_quantize_linear(x, scale, zero_point), scale, zero_point)
    axis = a.get("axis", 1)
    s = _per_axis(scale, x, axis)
    v = x.to(torch.float32)
    if zero_point is not None:
        v = v - _per_axis(zero_point, x, axis).to(torch.float32)
    return v * s


def _constant_of_shape(shape, **a):
    val = a.get("value")
    arr = numpy_helper.to_array(val) if val is not None else np.zeros(1, dtype=np.float32)
    return torch.full(tuple(_ints(shape)), arr.reshape(-1)[0].item(), dtype=torch.from_numpy(np.array(arr)).dtype)


def _pad(x, pads=None, value=None, axes=None, **a):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(pads) if pads is not None else list(a["pads"])
    if axes is not None:
        raise NotImplementedError("Pad with axes")
    v = float(value.item()) if isinstance(value, torch.Tensor) and value.numel() else float(a.get("value", 0.0))
    nd = x.dim()
    pairs = _pad_pairs(pads, nd)
    while len(pairs) > 2 and pairs[-1] == 0 and pairs[-2] == 0:
        pairs = pairs[:-2]
    tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    return F.pad(x, pairs, mode=tmode, value=v) if tmode == "constant" else F.pad(x, pairs, mode=tmode)


def _reduce_mean(x, axes=None, **a):
    axes = _axes(a, axes)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        return x.mean(dim=tuple(range(x.dim())), keepdim=keep)
    return x.mean(dim=tuple(axes), keepdim=keep)


def _softmax(x, opset, **a):
    if opset >= 13:
        return torch.softmax(x, dim=a.get("axis", -1))
    axis = a.get("axis", 1)
    shape = x.shape
    return torch.softmax(x.reshape(math.prod(shape[:axis]), -1), dim=1).reshape(shape)


def _concat(*xs, **a):
    return torch.cat([t.to(xs[0].device) for t in xs], dim=a["axis"])


def _split(x, split=None, **a):
    axis = a.get("axis", 0)
    sizes = _ints(split) if split is not None else a.get("split")
    if sizes is None:
        n = a.get("num_outputs")
        if n is None:
            raise NotImplementedError("Split without sizes")
        return torch.tensor_split(x, n, dim=axis)
    return torch.split(x, sizes, dim=axis)


_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16,
           onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.INT64: torch.int64,
           onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.BOOL: torch.bool,
           onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
           onnx.TensorProto.BFLOAT16: torch.bfloat16}


def _batchnorm(x, scale, bias, mean, var, **a):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _layer_norm(x, scale, bias=None, **a):
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=a.get("epsilon", 1e-5))


def _expand(x, shape, **a):
    """ONNX Expand: numpy-style broadcast of x and shape (a dim of 1 in shape keeps x's)."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _mod(x, y, **a):
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


def _hardsigmoid(x, **a):
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)


OPS: dict[str, Callable] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a_, b_, **a: torch.matmul(a_, b_),
    "Relu": lambda x, **a: torch.relu(x),
    "Clip": _clip,
    "Sigmoid": lambda x, **a: torch.sigmoid(x),
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda x, **a: F.hardswish(x),
    "Tanh": lambda x, **a: torch.tanh(x),
    "LeakyRelu": lambda x, **a: F.leaky_relu(x, a.get("alpha", 0.01)),
    "Erf": lambda x, **a: torch.erf(x),
    "Add": lambda x, y, **a: x + y,
    "Sub": lambda x, y, **a: x - y,
    "Mul": lambda x, y, **a: x * y,
    "Div": lambda x, y, **a: torch.div(x, y, rounding_mode="trunc") if not x.is_floating_point() else x / y,
    "Pow": lambda x, y, **a: torch.pow(x, y),
    "Sqrt": lambda x, **a: torch.sqrt(x),
    "Exp": lambda x, **a: torch.exp(x),
    "Neg": lambda x, **a: -x,
    "Abs": lambda x, **a: torch.abs(x),
    "Reciprocal": lambda x, **a: torch.reciprocal(x),
    "Max": lambda *xs, **a: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "Min": lambda *xs, **a: torch.stack(torch.broadcast_tensors(*xs)).amin(0),
    "GlobalAveragePool": lambda x, **a: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x, **a: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "AveragePool": lambda x, **a: _pool(x, "avg", **a),
    "MaxPool": lambda x, **a: _pool(x, "max", **a),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, **a: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
    "Concat": _concat,
    "Shape": lambda x, **a: torch.tensor(x.shape, dtype=torch.int64)[a.get("start", 0):a.get("end", None)],
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Identity": lambda x, **a: x,
    "Dropout": lambda x, *rest, **a: x,
    "BatchNormalization": _batchnorm,
    "Pad": _pad,
    "ReduceMean": _reduce_mean,
    "Cast": lambda x, **a: x.to(_DTYPES[a["to"]]),
    "Split": _split,
    "ConstantOfShape": _constant_of_shape,
    "LayerNormalization": _layer_norm,
    "Expand": _expand,
    "Equal": lambda x, y, **a: torch.eq(x, y.to(x.device)),
    "Where": lambda c, x, y, **a: torch.where(c, x, y.to(x.device)),
    "Mod": _mod,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
}
_NEEDS_OPSET = {"Softmax"}
_SUPPORTED = set(OPS) | _NEEDS_OPSET | {"Constant"}


def unsupported_ops(graph: OnnxGraph) -> list[str]:
    """Operator types in ``graph`` that the PyTorch interpreter cannot run."""
    return sorted({n.op_type for n in graph.model.graph.node
                   if n.op_type not in _SUPPORTED or n.domain not in ("", "ai.onnx")})


class TorchGraphExecutor:
    """Runs the ONNX graph node by node with PyTorch, observing named tensors as they are produced."""

    kind = "torch"

    def __init__(self, graph: OnnxGraph, device: torch.device | str = "cpu", *,
                 unsupported_hint: str = "use the ONNX Runtime executor (--executor onnxruntime)",
                 fuse_qdq: bool = True):
        missing = unsupported_ops(graph)
        if missing:
            raise ModelError("operators not supported by the PyTorch executor", subject=str(graph.path or "model"),
                             got=", ".join(missing), hint=unsupported_hint)
        self.graph = graph
        self.device = torch.device(device)
        self.allow_tf32 = False          # True only for an engine asked to run TF32
        self.grad = False                # True: run under autograd (learning ranges), not inference mode
        g = graph.model.graph
        self.consts: dict[str, torch.Tensor] = {}
        for init in g.initializer:
            self.consts[init.name] = self._to_tensor(numpy_helper.to_array(init))
        self.nodes = []
        for node in g.node:
            a = _attrs(node)
            if node.op_type == "Constant":
                val = a.get("value")
                if val is None:
                    for key in ("value_float", "value_floats", "value_int", "value_ints"):
                        if key in a:
                            val = np.array(a[key], dtype=np.float32 if "float" in key else np.int64)
                            break
                else:
                    val = numpy_helper.to_array(val)
                self.consts[node.output[0]] = self._to_tensor(np.asarray(val))
                continue
            a = {k: (v.decode() if isinstance(v, bytes) and k not in ("auto_pad", "mode") else v) for k, v in a.items()}
            if node.input and all((not n) or n in self.consts for n in node.input) and node.op_type != "Softmax":
                # constant subgraph (e.g. exported padding arithmetic): evaluate once, here
                args = [self.consts[n] if n else None for n in node.input]
                while args and args[-1] is None:
                    args.pop()
                out = OPS[node.op_type](*args, **a)
                for name, val in zip(node.output, out if isinstance(out, (tuple, list)) else (out,)):
                    if name:
                        self.consts[name] = val if not val.is_floating_point() else val.to(self.device)
                continue
            inputs = list(node.input)     # a copy: the ONNX graph itself is never modified
            self._bake_scalar_inputs(node, a, inputs)
            self.nodes.append((node, a, inputs))
        if fuse_qdq:          # False: every Q/DQ node executed as written (tests compare the two)
            self._fuse_fake_quant()
        # last use of each value, to free intermediates early (memory ~ the widest cut, not the whole graph)
        self._last_use: dict[str, int] = {}
        for i, (_, _, inputs) in enumerate(self.nodes):
            for name in inputs:
                self._last_use[name] = i
        for name in graph.outputs:
            self._last_use[name] = len(self.nodes)

    def _fuse_fake_quant(self) -> None:
        """A per-tensor int8 ``QuantizeLinear`` read by one ``DequantizeLinear`` of the same scale and zero point 0
        (an activation quantizer of a Q/DQ model) runs as one fake quantization: :func:`~..core.numerics.fake_quant`,
        one fused kernel on the GPU instead of six (divide, round, clamp, to int8, to float, multiply), the same
        values (``DQ(Q(x)) = clamp(round(x / s), -128, 127) * s`` either way; a zero may come out as -0.0). The
        Q node is dropped, the DQ node reads Q's input and carries the scale as ``_fake_quant``."""
        readers: dict[str, list[int]] = {}
        for i, (_, _, inputs) in enumerate(self.nodes):
            for name in inputs:
                if name:
                    readers.setdefault(name, []).append(i)
        outputs = set(self.graph.outputs)
        drop = set()
        for i, (node, _, inputs) in enumerate(self.nodes):
            if node.op_type != "QuantizeLinear" or len(inputs) < 3 or node.output[0] in outputs:
                continue
            users = readers.get(node.output[0], [])
            if len(users) != 1 or self.nodes[users[0]][0].op_type != "DequantizeLinear":
                continue
            j = users[0]
            _, da, dinputs = self.nodes[j]
            scale, zp = self._scalar_const(inputs[1]), self._scalar_const(inputs[2], torch.int8)
            if (scale is None or zp != 0 or len(dinputs) < 3 or dinputs[0] != node.output[0]
                    or self._scalar_const(dinputs[1]) != scale or self._scalar_const(dinputs[2], torch.int8) != 0
                    or not (scale > 0 and math.isfinite(scale))):
                continue
            da["_fake_quant"] = scale
            dinputs[0] = inputs[0]
            drop.add(i)
        if drop:
            self.nodes = [n for i, n in enumerate(self.nodes) if i not in drop]

    def _scalar_const(self, name: str, dtype: torch.dtype = torch.float32) -> float | None:
        """The value of a one-element constant of ``dtype`` (None if ``name`` is not one)."""
        t = self.consts.get(name) if name else None
        if t is None or t.numel() != 1 or t.dtype != dtype:
            return None
        return float(t.reshape(-1)[0].item())

    def _bake_scalar_inputs(self, node, a: dict, inputs: list[str]) -> None:
        """Constant scalar operands read as Python numbers become attributes, and quantizer parameters live
        on the device: the forward then never copies between host and device (CUDA-graph capturable)."""
        if node.op_type == "Clip":
            for idx, key in ((1, "min"), (2, "max")):
                if len(inputs) > idx and inputs[idx] in self.consts:
                    a[key] = float(self.consts[inputs[idx]].reshape(-1)[0].item())
                    inputs[idx] = ""
        elif node.op_type == "Pad" and len(inputs) > 2 and inputs[2] in self.consts:
            a["value"] = float(self.consts[inputs[2]].reshape(-1)[0].item())
            inputs[2] = ""
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in inputs[1:]:
                if name in self.consts:
                    self.consts[name] = self.consts[name].to(self.device)

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(arr, copy=True, order="C"))
        # small integer tensors (shapes, axes) stay on the CPU: they are read back as Python ints
        if not t.is_floating_point() and t.numel() <= 64:
            return t
        return t.to(self.device)

    def run(self, feeds: Mapping[str, torch.Tensor], observe: Observer | None = None,
            watch: set[str] | None = None,
            transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
            edges: Mapping[str, Mapping[int, Callable[[torch.Tensor], torch.Tensor]]] | None = None,
            tap: Callable[[int, list, tuple], None] | None = None,
            ) -> dict[str, torch.Tensor]:
        """Run the graph. ``observe(name, value)`` sees each watched tensor; ``transform(name, value)``
        may replace a float tensor before its consumers read it; ``edges[node][i](value)`` replaces
        what input ``i`` of ``node`` reads, for that consumer only (quantizers sit on edges);
        ``tap(i, inputs, outputs)`` sees every executed node ``self.nodes[i]``: its inputs as the graph
        gives them (before ``edges``) and its outputs (a second computation can follow the run node by
        node with :meth:`run_node`)."""
        env = self.feed(feeds, observe, watch, transform)
        self.run_nodes(env, 0, len(self.nodes), observe, watch, transform, edges, tap)
        return {o: env[o] for o in self.graph.outputs}

    def feed(self, feeds: Mapping[str, torch.Tensor], observe: Observer | None = None,
             watch: set[str] | None = None,
             transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The environment before the first node: the constants and the graph inputs (for :meth:`run_nodes`)."""
        env: dict[str, torch.Tensor] = dict(self.consts)
        for gi in self.graph.inputs:
            if gi.name not in feeds:
                raise ModelError("missing model input", subject=f"input {gi.name!r}")
            x = feeds[gi.name].to(self.device)
            if observe and (watch is None or gi.name in watch):
                observe(gi.name, x)
            env[gi.name] = transform(gi.name, x) if transform else x
        return env

    def run_nodes(self, env: dict[str, torch.Tensor], start: int, stop: int, observe: Observer | None = None,
                  watch: set[str] | None = None,
                  transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                  edges: Mapping[str, Mapping[int, Callable[[torch.Tensor], torch.Tensor]]] | None = None,
                  tap: Callable[[int, list, tuple], None] | None = None) -> None:
        """Execute ``self.nodes[start:stop]`` on ``env`` in place (values past their last use are freed), so a
        caller can stop between layers, look at or change what the next one reads, and go on."""
        with torch.inference_mode(not self.grad), (contextlib.nullcontext() if self.allow_tf32 else strict_fp32()):
            for i in range(start, stop):
                node, a, inputs = self.nodes[i]
                args = [env[n] if n else None for n in inputs]
                given = list(args) if tap else None
                if edges and node.name in edges:
                    for idx, fn in edges[node.name].items():
                        args[idx] = fn(args[idx])
                outs = self.run_node(i, args)
                if tap:
                    tap(i, given, outs)
                for name, val in zip(node.output, outs):
                    if not name:
                        continue
                    if val.is_floating_point():
                        if observe and (watch is None or name in watch):
                            observe(name, val)
                        if transform:
                            val = transform(name, val)
                    env[name] = val
                for name in inputs:
                    if name and self._last_use.get(name) == i and name not in self.consts:
                        env.pop(name, None)
    def run_node(self, i: int, args: list) -> tuple:
        """Node ``self.nodes[i]`` on ``args`` (its inputs in order, None where absent): its outputs, as
        :meth:`run` computes them (call it inside :meth:`run`, or under ``torch.inference_mode()``)."""
        node, a, _ = self.nodes[i]
        args = list(args)
        while args and args[-1] is None:
            args.pop()
        try:
            if node.op_type == "Softmax":
                out = _softmax(args[0], self.graph.opset, **a)
            else:
                out = OPS[node.op_type](*args, **a)
        except (RuntimeError, ValueError, IndexError, KeyError, NotImplementedError, TypeError) as err:
            raise ModelError("cannot execute node", subject=f"node {node.name!r} ({node.op_type})",
                             got=f"{type(err).__name__}: {err}"[:300],
                             hint="check the input shape; or use --executor onnxruntime") from err
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
