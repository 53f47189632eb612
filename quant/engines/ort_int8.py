"""The shipped Q/DQ model, lowered for ONNX Runtime's integer kernels without changing what it computes.

The model we ship for TensorRT quantizes layer *inputs* only (``DQ -> Conv -> Clip -> Q``). ONNX
Runtime selects an integer kernel only for ``DQ -> Conv -> Q``; everything else runs in float between
Q/DQ. Earlier versions added output quantizers to get integer kernels, which changed the numbers.
This module instead rewrites only where the rewrite is value-preserving, and proves it in tests with
ONNX Runtime's own kernels (``tests/test_ort_int8.py``):

1. **Weights** ``Q(W) -> DQ`` become integer initializers (``q = sat(rint(W / s))``, computed exactly as
   ``QuantizeLinear`` does) read by the DQ.
2. **Activations** int8 with zero-point 0 become uint8 with zero-point 128: ``q_u8 = q_s8 + 128`` holds
   the same values, ties and saturation included.
3. **Conv -> Q** becomes ``QLinearConv`` with the Q's output scale. **Conv -> Clip/Relu -> Q** becomes
   ``QLinearConv -> Clip`` on uint8 with bounds ``Q(lo), Q(hi)``: a quantizer is monotonic, so
   ``Q(clip(y, lo, hi)) == clip(Q(y), Q(lo), Q(hi))`` for every ``y``. The only difference from the
   float graph is the bias, which ``QLinearConv`` adds in int32 with scale ``s_x * s_w``: the rounding
   of ``bias / (s_x s_w)`` is at most half of ``s_x s_w``, a thousandth of an output step, so an output
   moves by one step only where it sat within that distance of a rounding boundary (measured in the
   tests: < 0.5 % of outputs, never more than one step).
4. Every other layer (a convolution feeding a residual ``Add``, the classifier ``Gemm``) runs as the
   shipped graph says: float arithmetic on dequantized values.

**Weights u8 or s8, by what the CPU computes exactly.** x86 CPUs without VNNI multiply u8 x s8 with
``vpmaddubsw``, which saturates pairs of products to int16: 255 x 127 x 2 does not fit, and accuracy
collapses (ONNX Runtime's quantization docs warn about it). With VNNI (``vpdpbusd``) or AMX, u8 x s8
accumulates in int32 exactly. Rather than trusting CPU flags, :func:`u8s8_is_exact` runs ONNX
Runtime's integer GEMM on a case that saturates and compares with the exact answer; when it is not
exact, weights are stored as uint8 with zero-point 128 (same values: ``w_u8 = w_s8 + 128``), for
which ONNX Runtime uses u8 x u8 kernels that widen to 16 bits first and never saturate.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...core.errors import BackendUnavailable, ConfigError
from ...core.onnxutil import constant_values, toposort

log = logging.getLogger(__name__)

ACT_ZERO_POINT = 128


@dataclass(frozen=True)
class Lowering:
    model: onnx.ModelProto
    weights: str                 # "u8" (zero-point 128) | "s8" (zero-point 0)
    integer_convs: int           # convolutions turned into QLinearConv
    float_layers: tuple[str, ...]    # INT8 layers left as float arithmetic on dequantized values (exact)


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendUnavailable("ONNX Runtime is not installed", subject="--backend onnxruntime",
                                 hint="pip install onnxruntime") from err
    return ort


@functools.lru_cache(maxsize=None)
def u8s8_is_exact() -> bool:
    """Does ONNX Runtime's u8 x s8 integer GEMM accumulate exactly on this CPU (VNNI/AMX), or saturate?"""
    ort = _ort()
    k = 64
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])
    b = numpy_helper.from_array(np.full((k, 8), 127, np.int8), "b")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                                                [a], [y], [b]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"a": np.full((1, k), 255, np.uint8)})[0]
    exact = bool(np.all(got == 255 * 127 * k))
    log.debug("ONNX Runtime u8 x s8 GEMM exact on this CPU: %s (got %s, exact %s)", exact, got[0, 0], 255 * 127 * k)
    return exact


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(rint(x / scale) + zero_point)`` in float32 (round half to even)."""
    x = x.astype(np.float32)
    scale = scale.astype(np.float32)
    zp = zero_point.astype(np.int32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    return np.clip(np.rint(x / scale).astype(np.int64) + zp, info.min, info.max).astype(zero_point.dtype)


def lower_for_onnxruntime(model: onnx.ModelProto, weights: str | None = None) -> Lowering:
    """Lower a TensorRT-shaped Q/DQ model (int8, zero-point 0) for ONNX Runtime, value-preserving."""
    weights = weights or ("s8" if u8s8_is_exact() else "u8")
    if weights not in ("u8", "s8"):
        raise ConfigError("unknown weight type", subject="weights", got=repr(weights), expected="u8 | s8")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    values = constant_values(out)
    new_inits: list[onnx.TensorProto] = []
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {n.name for n in g.node}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def const(arr: np.ndarray, base: str) -> str:
        name = fresh(base)
        new_inits.append(numpy_helper.from_array(arr, name))
        values[name] = arr
        return name

    def axis_of(n: onnx.NodeProto) -> int:
        return next((a.i for a in n.attribute if a.name == "axis"), 1)

    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = values.get(n.input[2])
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                raise ConfigError("not a TensorRT quantizer", subject=f"node {n.name!r}",
                                  got=f"zero point {None if zp is None else zp.dtype}",
                                  expected="int8 zero-point 0 (symmetric)", hint="lint the model (cli.py lint)")

    # the DequantizeLinear nodes reading each Q's output (their zero point changes with the Q's)
    dq_readers: dict[str, list[onnx.NodeProto]] = {}
    for c in g.node:
        if c.op_type == "DequantizeLinear":
            dq_readers.setdefault(c.input[0], []).append(c)

    # 1. weights: Q(constant) -> DQ  =>  integer initializer -> DQ
    drop: set[int] = set()
    for i, n in enumerate(g.node):
        if n.op_type == "QuantizeLinear" and n.input[0] in values:
            scale, zp = values[n.input[1]], values[n.input[2]]
            q = _quantize(values[n.input[0]], scale, zp, axis_of(n))
            if weights == "u8":
                qname = const((q.astype(np.int16) + ACT_ZERO_POINT).astype(np.uint8), f"{n.input[0]}_u8")
                zname = const(np.full(zp.shape, ACT_ZERO_POINT, np.uint8), f"{n.input[2]}_u8")
            else:
                qname, zname = const(q, f"{n.input[0]}_s8"), n.input[2]
            for c in dq_readers.get(n.output[0], []):
                c.input[0], c.input[2] = qname, zname
            drop.add(i)
    # 2. activations: int8 zero-point 0 => uint8 zero-point 128 (same values)
    u8_zp: dict[str, str] = {}
    for i, n in enumerate(g.node):
        if n.op_type == "QuantizeLinear" and i not in drop:
            zp = n.input[2]
            if zp not in u8_zp:
                u8_zp[zp] = const(np.full(values[zp].shape, ACT_ZERO_POINT, np.uint8), f"{zp}_u8")
            n.input[2] = u8_zp[zp]
            for c in dq_readers.get(n.output[0], []):
                c.input[2] = u8_zp[zp]

    # 3. DQ -> Conv [-> Clip|Relu] -> Q  =>  QLinearConv [-> Clip on uint8]
    nodes = [n for i, n in enumerate(g.node) if i not in drop]
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in g.output}
    removed: set[int] = set()
    added: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []     # (anchor, replacement)
    float_layers, fused = [], 0

    def only_consumer(tensor: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in graph_outputs else None

    def dq_input(name: str) -> onnx.NodeProto | None:
        p = producer.get(name)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    def clip_bounds(act: onnx.NodeProto) -> tuple[float, float] | None:
        if act.op_type == "Relu":
            return 0.0, float("inf")
        attrs = {a.name: a.f for a in act.attribute}
        lo, hi = attrs.get("min", -float("inf")), attrs.get("max", float("inf"))
        for idx in (1, 2):
            if len(act.input) > idx and act.input[idx]:
                v = values.get(act.input[idx])
                if v is None:
                    return None
                if idx == 1:
                    lo = float(v.reshape(-1)[0])
                else:
                    hi = float(v.reshape(-1)[0])
        return lo, hi

    for conv in nodes:
        if conv.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        dqx, dqw = dq_input(conv.input[0]), dq_input(conv.input[1]) if len(conv.input) > 1 else None
        if dqx is None or dqw is None or dqw.input[0] not in values:
            continue
        if conv.op_type != "Conv":
            float_layers.append(conv.name)
            continue
        chain: list[onnx.NodeProto] = []
        nxt = only_consumer(conv.output[0])
        if nxt is not None and nxt.op_type in ("Clip", "Relu"):
            chain.append(nxt)
            nxt = only_consumer(nxt.output[0])
        bounds = clip_bounds(chain[0]) if chain else None
        if nxt is None or nxt.op_type != "QuantizeLinear" or (chain and bounds is None):
            float_layers.append(conv.name)
            continue
        qy = nxt
        x_s, w_s = values[dqx.input[1]].astype(np.float32), values[dqw.input[1]].astype(np.float32)
        inputs = [dqx.input[0], dqx.input[1], dqx.input[2], dqw.input[0], dqw.input[1], dqw.input[2],
                  qy.input[1], qy.input[2]]
        if len(conv.input) > 2 and conv.input[2]:
            bias = values[conv.input[2]].astype(np.float32)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                bias_steps = np.rint(bias.astype(np.float64) / (x_s * w_s).astype(np.float64))
            if not np.all(np.abs(bias_steps) < 2**31 - 1):
                float_layers.append(conv.name)      # the bias does not fit int32 at this scale: keep it float
                continue
            inputs.append(const(bias_steps.astype(np.int32), f"{conv.input[2]}_int32"))
        attrs = [a for a in conv.attribute]
        out_name = qy.output[0]
        repl = []
        if chain:
            y_s = values[qy.input[1]].astype(np.float32)
            lo, hi = bounds
            u8 = np.array(ACT_ZERO_POINT, np.uint8)
            lo_q = _quantize(np.array(lo, np.float32), y_s, u8, None) if np.isfinite(lo) else np.array(0, np.uint8)
            hi_q = _quantize(np.array(hi, np.float32), y_s, u8, None) if np.isfinite(hi) else np.array(255, np.uint8)
            raw = fresh(f"{conv.output[0]}_quantized")
            repl.append(helper.make_node("QLinearConv", inputs, [raw], name=fresh(f"{conv.name}_QLinearConv")))
            repl[-1].attribute.extend(attrs)
            repl.append(helper.make_node("Clip", [raw, const(lo_q, f"{chain[0].name}_min_u8"),
                                                  const(hi_q, f"{chain[0].name}_max_u8")],
                                         [out_name], name=fresh(f"{chain[0].name}_u8")))
        else:
            repl.append(helper.make_node("QLinearConv", inputs, [out_name], name=fresh(f"{conv.name}_QLinearConv")))
            repl[-1].attribute.extend(attrs)
        for n in [conv, *chain, qy]:
            removed.add(id(n))
        added.append((conv, repl))
        fused += 1

    anchors = {id(a): r for a, r in added}
    final: list[onnx.NodeProto] = []
    for n in nodes:
        if id(n) in anchors:
            final.extend(anchors[id(n)])
        if id(n) not in removed:
            final.append(n)
    # drop DQ nodes nobody reads any more, then unused initializers
    while True:
        used = {i for n in final for i in n.input} | graph_outputs
        keep = [n for n in final if n.op_type != "DequantizeLinear" or n.output[0] in used]
        if len(keep) == len(final):
            break
        final = keep
    del g.node[:]
    g.node.extend(toposort(final))
    used = {i for n in g.node for i in n.input}
    kept = [i for i in list(g.initializer) + new_inits if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    onnx.checker.check_model(out)
    return Lowering(out, weights, fused, tuple(float_layers))
