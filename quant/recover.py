"""Accuracy recovery for all-INT8 models: cross-layer equalization, AdaRound and empirical bias correction.

Each step changes weights, so the result is a new ONNX model with the same node and tensor names (a cache
or ranges JSON keyed by tensor names still matches it). The steps, applied in this order whatever order the
user lists them in (``--recover cle+bias+adaround`` == ``cle+adaround+bias``; ``ranges`` always last):

1. **cle** (cross-layer equalization, Nagel et al. 2019, *Data-Free Quantization*): for every pair
   ``Conv1 -> act -> Conv2`` where ``act`` is ReLU, LeakyReLU or nothing and each tensor on the way feeds only the
   next node, channel ``i`` of the tensor between them is scaled by ``1/s_i`` with
   ``s_i = sqrt(r1_i * r2_i) / r2_i`` (``r1_i = max|W1[i]|``, the range of Conv1's output channel ``i``;
   ``r2_i = max|W2[:, i]|``, the range of Conv2's input channel ``i``): ``W1[i] /= s_i``, ``b1[i] /= s_i``,
   ``W2[:, i] *= s_i``. ReLU is positively homogeneous (``relu(x / s) = relu(x) / s`` for ``s > 0``), so
   the FP32 function is unchanged and both ranges become ``sqrt(r1_i * r2_i)``. Depthwise convolutions
   (``group == channels``) pair on either side. Pairs are swept until the scales converge. ReLU6 (``Clip(0,
   6)``) is *not* scale-equivariant: pairs through it are skipped unless ``replace_relu6`` (the CLI's
   ``--cle-replace-relu6``), which turns those Clips into ReLUs in the written model (a warning says how many).
   Activation ranges change, so the model is recalibrated after CLE.
2. **adaround** (Nagel et al. 2020, *Up or Down? Adaptive Rounding*): layer by layer in graph order, the
   per-channel INT8 weights ``W~ = s * clip(floor(W / s) + h(V), -127, 127)`` with the rectified sigmoid
   ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (``zeta = 1.1``, ``gamma = -0.1``) minimise
   ``|| W x - W~ x~ ||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)`` by Adam over ``V``, with ``beta`` annealed
   from 20 to 2 (cosine) after a warm-up without the regulariser. ``x`` is the layer's input in the FP32
   model, ``x~`` the fake-quantized input in the INT8 model whose earlier layers are already recovered (the
   paper's asymmetric reconstruction, so the rounding also absorbs the input's quantization error). The
   squared error is summed over output channels and averaged over every output position of every
   calibration image, held exactly as second moments of the inputs (:class:`RoundingProblem`), so one
   optimisation step costs the same for 10 or 1,000 images. At the end ``h`` is hardened (``V >= 0`` rounds
   up). The weights written are ``W' = s * q`` (already on the grid), and the element of largest ``|W|`` of
   each channel keeps its nearest rounding (``+-127``) so ``max|W'_c|`` and therefore the per-channel scale
   :func:`.placement.weight_scales` derives from the written model are unchanged: quantizing ``W'`` gives back
   ``q`` bit for bit. A layer whose learned rounding is not better than nearest on its objective keeps nearest
   rounding, and so does a layer with fewer than ``MIN_POSITIONS_PER_INPUT`` (4) output positions over the
   calibration images per input of an output (a classifier sees one position per image: 256 images for 1,280
   inputs would let the rounding fit those images' activation errors; measured on MobileNetV2 it lowered
   held-out agreement).
3. **bias** (empirical bias correction, as NNCF and AIMET): layer by layer in graph order, on the same
   INT8 model (earlier layers corrected, this one with its final weights), ``b_c += c`` per output channel
   over the calibration images and every output position; later layers see the corrected output. A layer
   without an activation gets the mean, ``c = E[y_fp32 - y_int8]_c``. A layer followed by a Relu or Clip
   (ReLU6) gets the shift of least squared error *after* the activation and the INT8 grid its output is
   read on (:func:`_bias_correct`): the mean of the error before the activation "corrects" values the
   activation or the grid clips away, and lowers MobileNetV2's agreement with FP32.

4. **ranges** (:mod:`.range_learning`): every INT8 activation's amax learned end to end (LSQ on the scales, the
   weights as shipped), against the FP32 output on the same images, kept only if a held-out fifth of them agrees;
   the recovered model ships with those ranges.

AdaRound and bias correction run in one pass over the graph (for each layer: its rounding is learned,
then its bias corrected), holding every calibration image's activations at the current layer: the FP32 and
the INT8 model advance side by side (:meth:`.graph.interpreter.TorchGraphExecutor.run_nodes`), the INT8 one
with exactly the quantizers the shipped Q/DQ model has (:class:`.planner.simulate.QuantSim`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from tqdm import tqdm

from ..core.errors import ConfigError, DataError
from ..core.numerics import fake_quant
from ..core.onnxutil import constant_values
from ..core.types import RangeSet
from .artifacts.placement import weight_scales
from .artifacts.plan import quantizable_nodes
from .graph.interpreter import TorchGraphExecutor, _pad_pairs, _resolve_pads
from .graph.onnx_graph import OnnxGraph
from .planner.simulate import QuantSim
from .range_learning import RangeLearning, learn_ranges

log = logging.getLogger(__name__)

RECOVERY_STEPS = ("cle", "adaround", "bias", "ranges")
"""Every recovery step, in the order they are applied."""
WEIGHT_STEPS = ("cle", "adaround", "bias")
"""The steps that change the model's weights (``ranges`` changes only the activation ranges)."""

ZETA, GAMMA = 1.1, -0.1           # AdaRound's rectified-sigmoid stretch
MIN_POSITIONS_PER_INPUT = 4       # AdaRound learns a layer's rounding from at least 4 output positions per input
QLIM = 127                         # symmetric weights: integers in [-127, 127] (max|W| maps to 127)


def parse_recovery(text: str | None, *, flag: str = "--recover") -> tuple[str, ...]:
    """``"cle+bias"`` -> the steps in application order (``("cle", "bias")``); None -> ``()``; an empty or
    unknown step, or one listed twice, is a :class:`ConfigError` naming ``flag``."""
    if text is None:
        return ()
    parts = [p.strip().lower() for p in text.split("+")]
    unknown = [p for p in parts if p not in RECOVERY_STEPS]
    if unknown or len(set(parts)) != len(parts):
        raise ConfigError("unknown recovery step" if unknown else "recovery step listed twice", subject=flag,
                          got=repr(text), expected="steps joined by '+' from " + ", ".join(RECOVERY_STEPS)
                          + " (e.g. cle+adaround+bias)", hint="they apply in the order cle -> adaround -> bias -> ranges")
    return tuple(s for s in RECOVERY_STEPS if s in parts)


@dataclass(frozen=True)
class RecoverySettings:
    """How recovery runs (every default defined here once)."""

    steps: tuple[str, ...] = ()
    images: int | None = None            # --recover-images: the first calibration images every step reads (None:
                                         # each step's own default, below)
    layer_images: int = 128              # adaround and bias read these many (more did not help: auto+adaround+bias
                                         # with 256 images 95.03 / 92.74 % agreement on two splits vs 96.24 / 93.68 %)
    range_images: int = 256              # ranges read these many (MobileNetV2: 94.76 % agreement vs 93.41 % with 128)
    adaround_iters: int = 200            # optimisation steps per layer, on every device (MobileNetV2 on an H100,
                                         # auto+adaround+bias: 200 steps 95.56 % agreement in 17 s, 500 94.89 %,
                                         # 1000 95.30 % in 71 s)
    adaround_reg: float = 0.01           # lambda of the rounding regulariser (AIMET's default)
    adaround_lr: float = 1e-2            # Adam's learning rate on V
    adaround_warmup: float = 0.2         # fraction of the steps without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)
    cle_replace_relu6: bool = False      # CLE through ReLU6 by replacing it with ReLU in the written model
    cle_rounds: int = 20                 # sweeps over the pairs (stops earlier when the scales converge)
    range_steps: int = 100               # Adam steps of the learned ranges (MobileNetV2, 744 held-out images:
                                         # 100 steps 94.76 % agreement, 300 steps 93.82 %: more overfit)
    range_lr: float = 5e-3               # Adam's learning rate on log(scale)

    def __post_init__(self):
        bad = [s for s in self.steps if s not in RECOVERY_STEPS]
        if bad:
            raise ConfigError("unknown recovery step", subject="--recover", got=", ".join(bad),
                              expected=", ".join(RECOVERY_STEPS))
        for name, value, low in (("--recover-images", self.images, 1), ("--adaround-iters", self.adaround_iters, 1),
                                 ("--range-steps", self.range_steps, 1)):
            if value is not None and value < low:
                raise ConfigError("invalid recovery setting", subject=name, got=str(value), expected=f">= {low}")

    def images_for(self, step: str) -> int:
        """How many calibration images ``step`` reads (``images`` when given, else the step's default)."""
        if self.images is not None:
            return self.images
        return self.range_images if step == "ranges" else self.layer_images

    @property
    def images_needed(self) -> int:
        """The images the steps read, together (the first ones of the calibration images)."""
        return max([self.images_for(s) for s in self.steps if s != "cle"], default=0)

    @property
    def layerwise(self) -> bool:
        return "adaround" in self.steps or "bias" in self.steps


@dataclass(frozen=True)
class LayerRecovery:
    """What recovery did to one INT8 layer."""

    node: str
    rounding_error: tuple[float, float] | None = None  # (nearest, learned) AdaRound objective on the recovery images
    flipped: float | None = None                      # fraction of weights rounded away from nearest
    bias_shift: float | None = None                   # max over channels of |the bias correction|
    note: str = ""


@dataclass(frozen=True)
class RecoveryReport:
    """The recovery steps applied, recorded in the ranges JSON's meta (``meta.recovery``)."""

    steps: tuple[str, ...]
    order: str = "cle -> adaround -> bias -> ranges"
    device: str = "cpu"
    images: int = 0
    adaround_iters: int | None = None
    cle_pairs: int = 0
    cle_skipped: tuple[str, ...] = ()     # "conv -> act -> conv: reason"
    relu6_replaced: tuple[str, ...] = ()  # Clip nodes written as Relu
    layers: tuple[LayerRecovery, ...] = ()
    ranges: RangeLearning | None = None   # the learned ranges (step 4)
    seconds: float = 0.0

    def meta(self) -> dict:
        d = asdict(self)
        if self.ranges is None:
            d.pop("ranges")
        d["layers"] = [{k: v for k, v in asdict(r).items() if v not in (None, "")} for r in self.layers]
        return d


# ------------------------------------------------------------------------------------------------
# small ONNX helpers


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def _set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            return
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    taken |= {i.name for i in model.graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _unshare(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Give every weight and bias of ``nodes`` its own initializer (the exporter may store equal parameters
    once): recovery changes each layer's own copy. Only initializer names change, never a tensor's."""
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    for n in nodes:
        for idx in range(1, len(n.input)):
            name = n.input[idx]
            if name in inits and users.get(name, 0) > 1:
                new = _unique_name(model, f"{name}_{idx}_{n.name}")
                t = onnx.TensorProto()
                t.CopyFrom(inits[name])
                t.name = new
                model.graph.initializer.append(t)
                n.input[idx] = new
                users[name] -= 1


# ------------------------------------------------------------------------------------------------
# cross-layer equalization


@dataclass(frozen=True)
class _Pair:
    first: onnx.NodeProto
    act: onnx.NodeProto | None
    second: onnx.NodeProto
    depthwise_first: bool
    depthwise_second: bool


def _is_relu6(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    if node.op_type != "Clip":
        return False
    lo = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "min", None)
    hi = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else _attr(node, "max", None)
    return lo is not None and hi is not None and float(np.asarray(lo).reshape(-1)[0]) == 0.0 \
        and float(np.asarray(hi).reshape(-1)[0]) == 6.0


def _activation_bounds(model: onnx.ModelProto) -> dict[str, tuple[float, float, str]]:
    """Tensor -> (lo, hi, activation output) where the tensor's only reader is a Relu (0, inf) or a Clip with
    constant bounds (ReLU6: 0, 6) and it is no graph output: what the layer producing it is judged by after
    its activation."""
    consts = constant_values(model)
    consumers = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    bounds = {}
    for tensor, readers in consumers.items():
        if len(readers) != 1 or tensor in outputs or readers[0].input[0] != tensor:
            continue
        act = readers[0]
        if act.op_type == "Relu":
            bounds[tensor] = (0.0, math.inf, act.output[0])
        elif act.op_type == "Clip":
            def bound(i, attr, default):
                if len(act.input) > i and act.input[i]:
                    v = consts.get(act.input[i])
                    return None if v is None else float(np.asarray(v).reshape(-1)[0])
                return float(_attr(act, attr, default))
            lo, hi = bound(1, "min", -math.inf), bound(2, "max", math.inf)
            if lo is not None and hi is not None:
                bounds[tensor] = (lo, hi, act.output[0])
    return bounds


def _clips(model: onnx.ModelProto, ranges: RangeSet,
           in_edges) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Layer output -> (the activation's bounds, the bounds the INT8 model's value lives in): the activation's,
    narrowed to the INT8 grid ``[-128, 127] * scale`` of the activation's output where every reader reads
    it quantized (then what lies beyond is clipped away too)."""
    consumers = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    out = {}
    for tensor, (lo, hi, a_out) in _activation_bounds(model).items():
        live = (lo, hi)
        readers = [(n.name, i) for n in consumers.get(a_out, []) for i, t in enumerate(n.input) if t == a_out]
        if readers and a_out not in outputs and a_out in ranges.ranges and all(e in in_edges for e in readers):
            scale = ranges.ranges[a_out].scale
            live = (max(lo, -128 * scale), min(hi, 127 * scale))
        out[tensor] = ((lo, hi), live)
    return out


def _conv_form(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """``(channels out, group)`` of a Conv with constant weights (and bias, if any), else None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    return int(inits[node.input[1]].dims[0]), int(_attr(node, "group", 1))


def _cle_pairs(model: onnx.ModelProto, replace_relu6: bool) -> tuple[list[_Pair], list[str]]:
    """The Conv -> (ReLU | LeakyReLU | nothing | ReLU6 when allowed) -> Conv pairs CLE may scale (each tensor on
    the way read by the next node only), and why others were skipped."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = constant_values(model)
    consumers = _consumers(model)
    outputs = {o.name for o in g.output}
    users = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    pairs, skipped = [], []

    def only_consumer(tensor: str):
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in outputs else None

    for first in g.node:
        form1 = _conv_form(first, inits)
        if form1 is None:
            continue
        nxt = only_consumer(first.output[0])
        act = None
        if nxt is not None and nxt.op_type in ("Relu", "LeakyRelu", "Clip"):
            act, nxt = nxt, only_consumer(nxt.output[0])
        if nxt is None or _conv_form(nxt, inits) is None or nxt.input[0] != (act or first).output[0]:
            continue
        where = f"{first.name} -> {act.name + ' -> ' if act is not None else ''}{nxt.name}"
        if act is not None and act.op_type == "Clip" and not (replace_relu6 and _is_relu6(act, consts)):
            skipped.append(f"{where}: {'ReLU6' if _is_relu6(act, consts) else 'Clip'} is not scale-equivariant"
                           + (" (--cle-replace-relu6 replaces ReLU6 by ReLU)" if _is_relu6(act, consts) else ""))
            continue
        c1, g1 = form1
        c2, g2 = _conv_form(nxt, inits)
        w2 = inits[nxt.input[1]]
        dw1 = g1 > 1 and g1 == c1 and int(inits[first.input[1]].dims[1]) == 1
        dw2 = g2 > 1 and g2 == c1 and c2 == c1 and int(w2.dims[1]) == 1
        if (g1 != 1 and not dw1) or (g2 != 1 and not dw2) or (g2 == 1 and int(w2.dims[1]) != c1):
            skipped.append(f"{where}: grouped convolution (only group 1 or depthwise pair)")
            continue
        shared = [t for t in list(first.input[1:]) + [nxt.input[1]] if t and users.get(t, 0) > 1]
        if shared:
            skipped.append(f"{where}: weights shared with another node")
            continue
        pairs.append(_Pair(first, act, nxt, dw1, dw2))
    return pairs, skipped


def equalize(graph: OnnxGraph, *, replace_relu6: bool = False, rounds: int = 20) -> tuple[OnnxGraph, RecoveryReport]:
    """Cross-layer equalization (module docstring, step 1) on a copy of ``graph``; the FP32 function is
    unchanged (up to float rounding), except where ReLU6 is replaced by ReLU (``replace_relu6``)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    pairs, skipped = _cle_pairs(model, replace_relu6)
    inits = {i.name: i for i in model.graph.initializer}
    w = {n: numpy_helper.to_array(inits[n]).astype(np.float64) for p in pairs
         for n in [p.first.input[1], p.second.input[1]] + ([p.first.input[2]] if len(p.first.input) > 2
                                                          and p.first.input[2] else [])}
    for _ in range(rounds):
        worst = 0.0
        for p in pairs:
            w1, w2 = w[p.first.input[1]], w[p.second.input[1]]
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = (np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if p.depthwise_second
                  else np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(w2.shape[1], -1).max(axis=1))
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1 * r2, 1.0)) / np.where(ok, r2, 1.0), 1.0)
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            w[p.first.input[1]] = w1 / s.reshape(shape1)
            if len(p.first.input) > 2 and p.first.input[2]:
                w[p.first.input[2]] = w[p.first.input[2]] / s
            shape2 = ((-1,) + (1,) * (w2.ndim - 1)) if p.depthwise_second else ((1, -1) + (1,) * (w2.ndim - 2))
            w[p.second.input[1]] = w2 * s.reshape(shape2)
            worst = max(worst, float(np.abs(np.log(s)).max()) if s.size else 0.0)
        if worst < 1e-6:
            break
    for name, value in w.items():
        _set_initializer(model, name, value)
    replaced = []
    for p in pairs:
        if p.act is not None and p.act.op_type == "Clip":        # ReLU6 in a pair: only with replace_relu6
            p.act.op_type = "Relu"
            del p.act.input[1:]
            del p.act.attribute[:]
            replaced.append(p.act.name)
    if replaced:
        log.warning("cross-layer equalization replaced %d ReLU6 (Clip 0..6) by ReLU in the written model "
                    "(--cle-replace-relu6): its FP32 outputs differ from the original where activations exceed 6",
                    len(replaced))
    for s in skipped:
        log.info("CLE skipped %s", s)
    log.info("CLE equalized %d pairs (%d skipped)", len(pairs), len(skipped))
    report = RecoveryReport(steps=("cle",), cle_pairs=len(pairs), cle_skipped=tuple(skipped),
                            relu6_replaced=tuple(replaced))
    return OnnxGraph(model), report


# ------------------------------------------------------------------------------------------------
# layer-wise steps: each layer as a matrix product at every output position


@dataclass
class _Layer:
    """An INT8 layer seen as ``y[:, p] = W_m @ cols[:, p] + b`` per group at each output position ``p``: ``W_m``
    is (G, Cout/G, K/G), ``cols[:, p]`` the input patch that position reads."""

    index: int                  # position in the executor's node list
    node: onnx.NodeProto
    attrs: dict
    weight: str
    bias: str | None
    axis: int                   # per-channel axis of the weight (the placement's)
    kind: str                   # conv2d | gemm | matmul | other (bias correction only)
    groups: int = 1
    kernel: list[int] | None = None

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv2d":
            return w.reshape(self.groups, w.shape[0] // self.groups, -1)
        if self.axis == 0:                       # Gemm transB: (N, K)
            return w.reshape(1, *w.shape)
        return w.t().reshape(1, w.shape[1], w.shape[0])       # Gemm / MatMul: (K, N)

    def from_matrix(self, m: torch.Tensor, shape) -> torch.Tensor:
        if self.kind == "conv2d":
            return m.reshape(shape)
        if self.axis == 0:
            return m.reshape(shape)
        return m.reshape(shape[1], shape[0]).t().contiguous()

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as columns (N, K, positions), in the order of the output positions."""
        if self.kind == "conv2d":
            w_shape = self.kernel
            strides = self.attrs.get("strides", [1, 1])
            dil = self.attrs.get("dilations", [1, 1])
            pads = _resolve_pads(self.attrs, x, w_shape, strides, dil)
            if any(pads):
                x = F.pad(x, _pad_pairs(pads, 2))
            return F.unfold(x, w_shape, dilation=dil, stride=strides)
        if self.kind == "gemm":
            return x.reshape(x.shape[0], x.shape[1], 1)
        return x.reshape(-1, x.shape[-1], 1)                   # matmul: every leading index is a position

    def positions(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output as (N, Cout, positions), matching :meth:`columns`."""
        if self.kind == "conv2d":
            return y.reshape(y.shape[0], y.shape[1], -1)
        if self.kind == "gemm":
            return y.reshape(y.shape[0], y.shape[1], 1)
        return y.reshape(-1, y.shape[-1], 1)

    def channel_axis(self, y: torch.Tensor) -> int:
        return y.dim() - 1 if self.kind == "matmul" else 1


def _layers(sim: QuantSim) -> list[_Layer]:
    """The INT8 layers with constant weights, in execution order."""
    ex = sim.ex
    placement = sim.placement(sim.layers)
    axes = {q.tensor: q.axis for q in placement.weights()}
    index = {node.name: i for i, (node, _, _) in enumerate(ex.nodes)}
    layers = []
    for name in sorted((n for n in sim.layers if n in index), key=index.get):
        node, a, _ = ex.nodes[index[name]]
        if len(node.input) < 2 or node.input[1] not in axes:
            continue                                  # e.g. a MatMul of two activations: no weights to recover
        w = ex.consts[node.input[1]]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        kind, groups = "other", 1
        if node.op_type == "Conv" and w.dim() == 4:
            kind, groups = "conv2d", int(a.get("group", 1))
        elif node.op_type == "Gemm" and not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0 \
                and a.get("beta", 1.0) == 1.0 and w.dim() == 2:
            kind = "gemm"
        elif node.op_type == "MatMul" and w.dim() == 2:
            kind = "matmul"
        layer = _Layer(index[name], node, a, node.input[1], bias, axes[node.input[1]], kind, groups,
                       kernel=list(w.shape[2:]) if kind == "conv2d" else None)
        layers.append(layer)
    return layers


def _h(v: torch.Tensor) -> torch.Tensor:
    """AdaRound's rectified sigmoid ``clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


@dataclass(frozen=True, eq=False)
class RoundingProblem:
    """One layer's AdaRound objective in matrix form, for weights ``w`` (G groups, Co outputs, K inputs each)
    with per-row scales ``scale`` (G, Co, 1):

        E(W~) = mean over positions p of  sum_c ( W~_c . x~_p  -  W_c . x_p )^2

    (``x_p``: the FP32 model's input patch at output position p, ``x~_p`` the INT8 model's, fake-quantized;
    the bias cancels). Held exactly, over every position of every calibration image, as moments (a layer has
    at least ``MIN_POSITIONS_PER_INPUT`` positions per input, :func:`_adaround_layer`): with ``dW = W~ - W``
    and ``e = x~ - x``, ``E = sum(dW H * dW) + 2 sum(dW * C) + c0`` where ``H = E[x~ x~^T]`` (G, K, K),
    ``C = W E[e x~^T]^T`` (G, Co, K) and ``c0 = sum(W E[e e^T] * W)``: every term is of the size of the error
    itself (no cancellation of large terms in float32).
    """

    w: torch.Tensor
    scale: torch.Tensor
    h: torch.Tensor
    c: torch.Tensor
    c0: float = 0.0

    def error(self, wq: torch.Tensor) -> torch.Tensor:
        """``E(wq)``."""
        return self.error_of(wq - self.w)

    def error_of(self, dw: torch.Tensor) -> torch.Tensor:
        """``E(W + dw)``."""
        return (torch.bmm(dw, self.h) * dw).sum() + 2 * (dw * self.c).sum() + self.c0

    def descent(self, dw: torch.Tensor) -> torch.Tensor:
        """A function of ``dw`` whose gradient is ``E``'s (its value is not ``E``'s): ``2 (dw H + C)``, from one
        matrix product per step instead of the two that differentiating ``E`` takes."""
        return (2 * (torch.bmm(dw.detach(), self.h) + self.c) * dw).sum()

    def nearest(self) -> torch.Tensor:
        return torch.clamp(torch.round(self.w / self.scale), -QLIM, QLIM)


def learn_rounding(p: RoundingProblem, *, iters: int, reg: float = 0.01, lr: float = 1e-2, warmup: float = 0.2,
                   beta: tuple[float, float] = (20.0, 2.0)) -> tuple[torch.Tensor, float, float]:
    """AdaRound on one layer (module docstring, step 2): ``(integers q, error with nearest, error with q)``.

    Minimises ``E(W~) + reg * sum(1 - |2 h(V) - 1|^beta)`` (:class:`RoundingProblem`) by Adam over ``V``,
    ``W~ = scale * (floor(w / scale) + h(V))``, ``h(V)`` initialised to the fractional part; no regulariser for
    the first ``warmup`` of the steps, then ``beta`` annealed (cosine) from ``beta[0]`` to ``beta[1]``. ``q`` is
    in [-127, 127], each element the floor or the ceiling of ``w / scale`` (so within 1 of nearest). The
    element(s) of largest magnitude in each row keep nearest rounding (``+-127``), so the row's max|W| and its
    scale are unchanged, as does any element whose other rounding would leave [-127, 127]: their ``V`` starts
    where ``h`` is clamped to exactly 0 or 1, so it has no gradient and never moves. Returns nearest rounding if
    the learned one is not better."""
    x = p.w / p.scale
    floor = torch.floor(x)
    rest = x - floor
    near = p.nearest()
    amax = p.w.abs().amax(dim=2, keepdim=True)
    fixed = (p.w.abs() >= amax) | (floor < -QLIM) | (floor + 1 > QLIM)
    v = -torch.log((ZETA - GAMMA) / (rest.clamp(0, 1) - GAMMA) - 1)                 # h(V) = rest
    v = torch.where(fixed, torch.where(near > floor, 20.0, -20.0), v).requires_grad_(True)   # h = 1 or 0, flat
    opt = torch.optim.Adam([v], lr=lr, fused=True)
    warm = int(iters * warmup)
    for it in range(iters):
        h = _h(v)
        loss = p.descent(p.scale * (h - rest))                  # W~ - W = scale * (floor + h - w / scale)
        if it >= warm:
            rel = (it - warm) / max(1, iters - warm)
            b = beta[1] + 0.5 * (beta[0] - beta[1]) * (1 + math.cos(rel * math.pi))
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(b)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(floor + (v >= 0).to(x.dtype), -QLIM, QLIM)
        q = torch.where(fixed, near, q)
        e_near = float(p.error(p.scale * near))
        e_learn = float(p.error(p.scale * q))
    if not e_learn < e_near:
        return near, e_near, e_near
    return q, e_near, e_learn


def on_grid(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W' = scale * q`` in float32: the weights whose per-channel quantization gives back ``q``."""
    return (scale.to(torch.float32) * q.to(torch.float32)).to(torch.float32)


# ------------------------------------------------------------------------------------------------
# the layer-wise pass


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def recover_layers(graph: OnnxGraph, ranges: RangeSet, images: np.ndarray, settings: RecoverySettings,
                   device: torch.device, *, progress: bool = True) -> tuple[OnnxGraph, RecoveryReport]:
    """AdaRound and/or bias correction (module docstring, steps 2 and 3) of every INT8 layer of ``graph``
    (all-INT8 placement, activations quantized with ``ranges``), on ``images`` (model-ready floats).
    Returns the new graph (same tensor names) and what was done per layer."""
    t0 = time.perf_counter()
    do_round, do_bias = "adaround" in settings.steps, "bias" in settings.steps
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    int8 = set(quantizable_nodes(graph))
    _unshare(model, [n for n in model.graph.node if n.name in int8])
    work = OnnxGraph(model)                              # no path: it is not the file the user named any more
    sim = QuantSim(work, ranges, device)                 # the INT8 model (its executor's weights change)
    fp = TorchGraphExecutor(work, device)                # the FP32 model (never changes)
    layers = _layers(sim)
    in_edges = sim.placement(sim.layers).edges()
    iters = settings.adaround_iters

    fixed = work.fixed_batch
    n = len(images) if fixed is None else (len(images) // fixed) * fixed
    if n == 0:
        raise DataError("too few images for the model's fixed batch", subject="--recover-images",
                        got=f"{len(images)} image(s)", expected=f"at least {fixed} (the batch of model input "
                                                              f"{work.inputs[0].name!r})", hint="recover on more images")
    spans = _batches(n, fixed or 32)
    name_in = work.inputs[0].name
    env_fp = [fp.feed({name_in: torch.from_numpy(np.ascontiguousarray(images[lo:hi]))}) for lo, hi in spans]
    env_q = [sim.ex.feed({name_in: torch.from_numpy(np.ascontiguousarray(images[lo:hi]))}) for lo, hi in spans]
    changed: dict[str, torch.Tensor] = {}
    done: list[LayerRecovery] = []
    clips = _clips(model, ranges, in_edges) if do_bias else {}
    pos = 0
    bar = tqdm(layers, desc="recover " + "+".join(s for s in settings.steps if s != "cle"), unit="layer",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for layer in bar:
        bar.set_postfix_str(layer.node.name[-40:])
        for e_fp, e_q in zip(env_fp, env_q):                 # advance both models to the layer
            fp.run_nodes(e_fp, pos, layer.index)
            sim.ex.run_nodes(e_q, pos, layer.index, edges=sim.edges(sim.layers))
        rec, check = LayerRecovery(layer.node.name), None
        if do_round:
            if layer.kind == "other" or (layer.node.name, 0) not in in_edges:
                rec = LayerRecovery(layer.node.name, note=f"adaround: {layer.node.op_type} of this form not "
                                                          f"supported, nearest rounding kept")
            else:
                rec, check = _adaround_layer(layer, sim, env_fp, env_q, in_edges, settings, iters)
        for e_fp in env_fp:                                  # the FP32 model through the layer
            fp.run_nodes(e_fp, layer.index, layer.index + 1)
        out = layer.node.output[0]
        if check is not None:
            if check(env_fp[0][out][:1]):
                changed[layer.weight] = sim.ex.consts[layer.weight]
            else:
                rec = LayerRecovery(layer.node.name, note="adaround: the layer's matrix view does not reproduce "
                                                          "it (unusual attributes): nearest rounding kept")
        for e_q in env_q:                                    # the INT8 model through the layer
            sim.ex.run_nodes(e_q, layer.index, layer.index + 1, edges=sim.edges(sim.layers))
        if do_bias:
            shift = _bias_correct(layer, sim, model, env_fp, env_q, *clips.get(layer.node.output[0], (None, None)))
            if shift is None:
                rec = LayerRecovery(rec.node, rec.rounding_error, rec.flipped, None,
                                    (rec.note + "; " if rec.note else "") + "bias: no per-channel bias to correct")
            else:
                rec = LayerRecovery(rec.node, rec.rounding_error, rec.flipped, shift, rec.note)
                changed[layer.bias] = sim.ex.consts[layer.bias]
        done.append(rec)
        pos = layer.index + 1
    bar.close()
    del env_fp, env_q
    for name, value in changed.items():
        _set_initializer(model, name, value.detach().float().cpu().numpy())
    out_graph = OnnxGraph(model)
    report = RecoveryReport(steps=tuple(s for s in settings.steps if s != "cle"), device=str(device), images=n,
                            adaround_iters=iters if do_round else None, layers=tuple(done),
                            seconds=time.perf_counter() - t0)
    return out_graph, report


def _positions(layer: _Layer, x: torch.Tensor) -> int:
    """Output positions of the layer over input ``x`` (each one a row of the objective)."""
    if layer.kind == "matmul":
        return int(np.prod(x.shape[:-1]))
    if layer.kind == "gemm":
        return int(x.shape[0])
    return int(x.shape[0]) * int(layer.columns(x[:1]).shape[2])


def _rounding_problem(layer: _Layer, w: torch.Tensor, x_fp: list[torch.Tensor], x_q: list[torch.Tensor],
                      scale: torch.Tensor, total: int) -> RoundingProblem:
    """The layer's :class:`RoundingProblem` over every output position (``total`` of them) of the inputs
    ``x_fp`` (FP32 model) and ``x_q`` (INT8 model, fake-quantized), batch by batch."""
    g = layer.groups if layer.kind == "conv2d" else 1
    wm = layer.to_matrix(w)
    c_out, k = wm.shape[0] * wm.shape[1], wm.shape[2]
    sm = scale.reshape(g, c_out // g, 1)
    h = torch.zeros(g, k, k, dtype=torch.float64, device=w.device)
    d = torch.zeros_like(h)
    ee = torch.zeros_like(h)
    for xf, xq in zip(x_fp, x_q):
        n_loc = layer.columns(xq[:1]).shape[2] if layer.kind != "matmul" else 1
        chunk = max(1, int(64 * 2**20 // (4 * k * g * n_loc)))
        rows_q = xq.reshape(-1, xq.shape[-1]) if layer.kind == "matmul" else xq
        rows_f = xf.reshape(-1, xf.shape[-1]) if layer.kind == "matmul" else xf
        for lo in range(0, rows_q.shape[0], chunk):
            cq = layer.columns(rows_q[lo:lo + chunk]).permute(1, 0, 2).reshape(g, k, -1)     # (G, K, n * L)
            ce = cq - layer.columns(rows_f[lo:lo + chunk]).permute(1, 0, 2).reshape(g, k, -1)
            h += torch.bmm(cq, cq.transpose(1, 2)).double()
            d += torch.bmm(ce, cq.transpose(1, 2)).double()
            ee += torch.bmm(ce, ce.transpose(1, 2)).double()
    w64 = wm.double()
    c = torch.bmm(w64, d) / total                            # W E[e x~^T]: C_ci = sum_j W_cj E[e_j x~_i]
    c0 = float((torch.bmm(w64, ee / total) * w64).sum())
    return RoundingProblem(wm, sm, h=(h / total).float(), c=c.float(), c0=c0)


def _adaround_layer(layer: _Layer, sim: QuantSim, env_fp, env_q, in_edges, settings: RecoverySettings,
                    iters: int) -> tuple[LayerRecovery, Callable[[], None]]:
    """Learn the layer's rounding (:func:`learn_rounding`) from the FP32 and INT8 models' inputs to it; returns
    the record and a check to run once the FP32 model has executed the layer (its output must be what the
    matrix view of the layer computes), then writes ``W' = s * q`` into ``sim``."""
    node = layer.node
    w = sim.ex.consts[layer.weight].float()
    in_scale = sim.scales[in_edges[(node.name, 0)].tensor]
    x_fp = [e[node.input[0]] for e in env_fp]
    k = layer.to_matrix(w).shape[2]
    positions = sum(_positions(layer, x) for x in x_fp)
    if positions < MIN_POSITIONS_PER_INPUT * k:
        # e.g. a classifier fed one vector per image: the floor/ceil choices of K inputs per output would fit
        # the calibration images' own activation errors (and be worse on other images)
        return LayerRecovery(node.name, note=f"adaround: {positions} output positions for {k} inputs per output "
                                             f"(fewer than {MIN_POSITIONS_PER_INPUT}x): nearest rounding kept, "
                                             f"learning would fit the calibration images"), None
    x_q = [fake_quant(e[node.input[0]], in_scale) for e in env_q]       # what the INT8 layer reads
    scale = torch.from_numpy(weight_scales(w.detach().cpu().numpy(), layer.axis)).to(w.device)
    problem = _rounding_problem(layer, w, x_fp, x_q, scale, positions)
    x0 = x_fp[0][:1]
    del x_fp, x_q
    with torch.enable_grad():
        q, e_near, e_learn = learn_rounding(problem, iters=iters, reg=settings.adaround_reg, lr=settings.adaround_lr,
                                            warmup=settings.adaround_warmup, beta=settings.beta)
    flipped = float((q != problem.nearest()).float().mean())
    new_w = layer.from_matrix(on_grid(q, problem.scale), w.shape)

    def check_and_set(y0: torch.Tensor) -> bool:
        """``y0``: the FP32 layer's output for the first image. False (and nothing set) if the matrix view
        does not reproduce it."""
        yv = layer.positions(y0)[0]
        b = sim.ex.consts[layer.bias].float().reshape(-1, 1) if layer.bias is not None else 0
        cols = layer.columns(x0)[0] if layer.kind != "matmul" else x0.reshape(-1, x0.shape[-1]).t()
        g = problem.w.shape[0]
        ym = torch.bmm(problem.w, cols.reshape(g, -1, cols.shape[-1])).reshape(yv.shape[0], -1) + b
        if layer.kind == "matmul":
            yv = y0.reshape(-1, y0.shape[-1]).t()
        if ym.shape != yv.shape or float((ym - yv).norm()) > 1e-3 * float(yv.norm()) + 1e-6:
            return False
        sim.set_constant(layer.weight, new_w)
        return True

    note = "" if e_learn < e_near else "adaround: learned rounding not better than nearest: nearest kept"
    return LayerRecovery(node.name, (e_near, e_learn), flipped, note=note), check_and_set


BIAS_ITERATIONS = 8        # Gauss-Newton steps of the activation-aware bias correction


def _bias_correct(layer: _Layer, sim: QuantSim, model: onnx.ModelProto, env_fp, env_q,
                  bounds: tuple[float, float] | None = None, live: tuple[float, float] | None = None) -> float | None:
    """``b += c`` per output channel, the INT8 model's output of the layer corrected in place so that later
    layers see it. Without an activation: ``c = E[y_fp32 - y_int8]`` over every image and position (the
    shift of least squared error). Followed by a Relu/Clip of ``bounds`` = (lo, hi): ``c`` minimises the
    error *after* it, ``E[(clip(y_fp32) - clip'(y_int8 + c))^2]`` with ``clip'`` to ``live`` (the bounds, or
    narrower where the INT8 grid of the activation's output clips too: :func:`_clips`), by Gauss-Newton:
    positions clipped carry no gradient. A plain mean also "corrects" errors that are clipped away (measured
    on MobileNetV2, percentile ranges, 744 held-out images: 94.35 % agreement with FP32 uncorrected, 91.67 %
    after the plain mean, 93.95 % judged after the activation only, 94.89 % after the activation and the
    grid). None where there is no per-channel bias to correct (a MatMul; a Gemm whose C is not a vector)."""
    node = layer.node
    c_out = int(sim.ex.consts[layer.weight].shape[layer.axis])
    if node.op_type == "MatMul" or (layer.bias is not None and sim.ex.consts[layer.bias].numel() != c_out):
        return None
    out = node.output[0]

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        axis = layer.channel_axis(t)
        return t.double().sum(dim=tuple(i for i in range(t.dim()) if i != axis))

    def channel_shape(t: torch.Tensor) -> list[int]:
        shape = [1] * t.dim()
        shape[layer.channel_axis(t)] = -1
        return shape

    if bounds is None:                       # no activation: the mean error
        total, count = None, 0
        for e_fp, e_q in zip(env_fp, env_q):
            d = e_fp[out] - e_q[out]
            s = per_channel(d)
            total = s if total is None else total + s
            count += d.numel() // d.shape[layer.channel_axis(d)]
        corr = (total / count).float()
    else:                                    # the error after the activation (Gauss-Newton from 0)
        (lo, hi), (live_lo, live_hi) = bounds, live or bounds
        corr = torch.zeros(c_out, dtype=torch.float32, device=env_q[0][out].device)
        for _ in range(BIAS_ITERATIONS):
            num, den = None, None
            for e_fp, e_q in zip(env_fp, env_q):
                y = e_q[out] + corr.reshape(channel_shape(e_q[out]))
                inside = (y > live_lo) & (y < live_hi)
                r = torch.where(inside, e_fp[out].clamp(lo, hi) - y, torch.zeros_like(y))
                n_, d_ = per_channel(r), per_channel(inside.to(y.dtype))
                num, den = (n_, d_) if num is None else (num + n_, den + d_)
            step = torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num)).float()
            corr = corr + step
            if float(step.abs().max()) <= 1e-7 * max(1.0, float(corr.abs().max())):
                break
    gain = float(layer.attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0    # Gemm adds beta * C
    if layer.bias is None:                                   # a Conv/Gemm without bias gets one
        layer.bias = _unique_name(model, f"{node.name}_bias")
        base = torch.zeros_like(corr)
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = layer.bias
        inputs = sim.ex.nodes[layer.index][2]                # the executor reads the node's inputs from its copy
        inputs.extend([""] * (3 - len(inputs)))
        inputs[2] = layer.bias
    else:
        base = sim.ex.consts[layer.bias].float().reshape(-1)
    shape_b = tuple(sim.ex.consts[layer.bias].shape) if layer.bias in sim.ex.consts else tuple(corr.shape)
    sim.set_constant(layer.bias, (base + corr / gain).reshape(shape_b))
    for e_q in env_q:
        e_q[layer.bias] = sim.ex.consts[layer.bias]
        e_q[out] = e_q[out] + corr.reshape(channel_shape(e_q[out]))
    return float(corr.abs().max())


# ------------------------------------------------------------------------------------------------
# all steps


def describe(report: RecoveryReport) -> str:
    """One line: what each step did."""
    parts = []
    if "cle" in report.steps:
        parts.append(f"cle {report.cle_pairs} pair(s) equalized, {len(report.cle_skipped)} skipped"
                     + (f", {len(report.relu6_replaced)} ReLU6 -> ReLU" if report.relu6_replaced else ""))
    rounded = [r for r in report.layers if r.rounding_error is not None]
    if "adaround" in report.steps:
        gains = [1 - r.rounding_error[1] / r.rounding_error[0] for r in rounded if r.rounding_error[0] > 0]
        parts.append(f"adaround {len(rounded)} layer(s), {report.adaround_iters} steps each, layer error "
                     f"{-100 * float(np.median(gains)) if gains else 0:+.1f}% (median) vs nearest rounding")
    if "bias" in report.steps:
        parts.append(f"bias {sum(r.bias_shift is not None for r in report.layers)} layer(s) corrected")
    if report.ranges is not None:
        r = report.ranges
        parts.append(f"ranges {r.tensors} tensor(s), {r.steps} steps, held-out SQNR {r.held_out_sqnr_db[0]:.2f} -> "
                     f"{r.held_out_sqnr_db[1]:.2f} dB: " + ("learned ranges kept" if r.kept == "learned" else
                                                            "no better on held-out images, starting ranges kept"))
    return "; ".join(parts) + (f" | {report.images} images" if report.images else "") \
        + f" | {report.seconds:.1f} s on {report.device}"


def check_recovery_outputs(onnx_out, *, steps: tuple[str, ...] = WEIGHT_STEPS, from_stats=None,
                           calibrator: str = "ours") -> None:
    """Before any work: recovery runs the model on the data, and a step that changes weights writes a new model,
    so it needs ``--onnx-out`` (learned ranges alone ship as a cache for the model as it is)."""
    if onnx_out is None and any(s in WEIGHT_STEPS for s in steps):
        raise ConfigError("--recover changes the weights, so it writes a new model: --onnx-out is required",
                          subject="--recover", hint="add --onnx-out recovered.onnx and build the TensorRT engine "
                                                    "from that model (the cache written is its)")
    if from_stats is not None:
        raise ConfigError("--recover needs the model and the calibration images", subject="--recover with --from-stats",
                          hint="drop --from-stats (recovery runs the model on the data)")
    if calibrator != "ours":
        raise ConfigError("--recover needs our calibrator", subject="--recover with --calibrator tensorrt",
                          hint="use --calibrator ours (recovery simulates the INT8 model with our ranges)")


def first_images(source, n: int, batch: int) -> np.ndarray:
    """The first ``n`` images of ``source``, model-ready (what the layer-wise steps read)."""
    out, count = [], 0
    for b in source.batches(batch, progress=False):
        out.append(b.images[:n - count])
        count += len(out[-1])
        if count >= n:
            break
    return np.concatenate(out)


@dataclass(frozen=True, eq=False)
class Recovered:
    graph: OnnxGraph            # the recovered model (same tensor names)
    report: RecoveryReport
    ranges: RangeSet | None = None   # the learned ranges (ranges), else those the layer-wise steps learned against
                                     # (None: CLE only)

    def shipped_ranges(self, calibrate: Callable[[OnnxGraph], RangeSet]) -> RangeSet:
        """The ranges to ship with the recovered model, its recovery in their meta: the learned ones after
        ``ranges``, else those AdaRound and bias correction compensated (calibrating the recovered model again would move the activation ranges the
        learned rounding absorbs: measured on MobileNetV2, 744 held-out images, mse+adaround agreement 93.01 %
        with these vs 91.67 % recalibrated, mse alone 92.34 %), else ``calibrate(graph)`` (CLE alone changes
        the activation ranges)."""
        ranges = self.ranges if self.ranges is not None else calibrate(self.graph)
        learned = self.report.ranges
        of = ("the recovered model, learned end to end" if learned is not None and learned.kept == "learned" else
              "the model the layer-wise steps started from" if self.ranges is not None and self.report.layers else
              "the recovered model")
        return replace(ranges, model_fingerprint=self.graph.fingerprint(),
                       meta={**ranges.meta, "recovery": self.report.meta(), "ranges_of": of})


def recover(graph: OnnxGraph, settings: RecoverySettings, *, ranges_of: Callable[[OnnxGraph], RangeSet],
            images: Callable[[], np.ndarray], device: torch.device, progress: bool = True) -> Recovered:
    """Every step of ``settings``, in the order cle -> adaround -> bias -> ranges. ``ranges_of(graph)``
    calibrates a graph (the caller's statistics pass and range method): the layer-wise steps simulate the INT8
    model with the ranges of the (equalized) model they start from, and ``ranges`` starts from those (or from
    ``ranges_of`` of the recovered model when no layer-wise step ran). ``images()`` gives the calibration images
    the steps read (model-ready floats; :attr:`RecoverySettings.images_needed` of them).
    :meth:`Recovered.shipped_ranges` gives the ranges to ship with the recovered model."""
    t0 = time.perf_counter()
    report = RecoveryReport(steps=())
    g = graph
    if "cle" in settings.steps:
        g, report = equalize(g, replace_relu6=settings.cle_replace_relu6, rounds=settings.cle_rounds)
    layers = ranges = learning = None
    imgs = images()[:settings.images_needed] if settings.images_needed else None
    if settings.layerwise:
        ranges = ranges_of(g)
        g, layers = recover_layers(g, ranges, imgs[:settings.images_for("adaround")], settings, device,
                                   progress=progress)
    if "ranges" in settings.steps:              # last: the ranges of the final weights, learned end to end
        ranges, learning = learn_ranges(g, ranges if ranges is not None else ranges_of(g),
                                        imgs[:settings.images_for("ranges")], device,
                                        steps=settings.range_steps, lr=settings.range_lr,
                                        progress=progress)
    used = max(layers.images if layers else 0, learning.train_images + learning.held_out_images if learning else 0)
    report = RecoveryReport(steps=settings.steps, device=str(device), images=used,
                            adaround_iters=layers.adaround_iters if layers else None, cle_pairs=report.cle_pairs,
                            cle_skipped=report.cle_skipped, relu6_replaced=report.relu6_replaced,
                            layers=layers.layers if layers else (), ranges=learning, seconds=time.perf_counter() - t0)
    return Recovered(g, report, ranges)
