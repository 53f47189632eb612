"""OpenVINO CPU engines: the shipped TensorRT Q/DQ model, compiled by OpenVINO's CPU plugin.

OpenVINO reads Q/DQ ONNX and, like TensorRT, fuses ``DQ -> Conv -> bias -> activation -> Q`` into one
integer convolution with requantization, so on CPUs with integer dot-product instructions (VNNI, AMX)
INT8 runs well ahead of FP32. Two things are checked rather than assumed:

- **Exactness on this CPU.** Without VNNI, x86 integer kernels multiply u8 x s8 with ``vpmaddubsw``,
  which saturates pairs of products to int16; OpenVINO has no non-saturating fallback, so INT8
  results collapse (measured: MobileNetV2 66 % top-1 vs 79.7 % FP32 on an AVX2-only EPYC).
  :func:`int8_is_exact` runs OpenVINO itself on a convolution whose exact answer needs more than 16
  bits per product pair and compares it with the exact integer result; INT8 is refused where it
  fails (ONNX Runtime's engine, which widens to 16 bits there, is exact on every CPU).
- **Precision.** FP32 layers run in FP32 (``INFERENCE_PRECISION_HINT=f32``): on AMX/AVX-512-BF16 CPUs
  OpenVINO would otherwise run them in BF16, which is not what the plan says.

The only rewrite is value-preserving and proved with OpenVINO's own kernels in
``tests/test_openvino.py``: a quantizer that reads a zero-padding ``Pad`` is moved in front of it
(``Q(pad(x, 0)) == pad(Q(x), 0)`` for a symmetric quantizer, whose ``Q(0) == 0``), which lets
OpenVINO fold the padding into the integer convolution instead of padding FP32 tensors between
integer layers (EfficientNet-Lite's TensorFlow-style "same" padding: 3x the throughput).
"""

from __future__ import annotations
import collections

import functools
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...core.errors import BackendUnavailable
from ...core.onnxutil import constant_values, toposort
from ...core.records import EngineInfo
from ...core.types import Inputs
from ..artifacts.qdq import build_qdq_model
from .base import Engine, cpu_engine_fields, float_feeds

log = logging.getLogger(__name__)

PIP = "openvino==2026.4.0"
_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def _ov():
    try:
        import openvino
    except ImportError as err:
        raise BackendUnavailable("OpenVINO is not installed", subject="--backend openvino",
                                 hint=f"pip install {PIP} (or use --backend onnxruntime)") from err
    return openvino


def _compile(model: onnx.ModelProto, hint: str):
    ov = _ov()
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:     # read_model takes a path (external data, if any)
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model.SerializeToString())
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {**_CONFIG, "PERFORMANCE_HINT": hint})
        except RuntimeError as err:
            raise BackendUnavailable("OpenVINO cannot compile this model", subject="--backend openvino",
                                     got=str(err).strip().splitlines()[-1][:300] if str(err).strip() else "",
                                     hint="use --backend onnxruntime") from err
    return compiled


def runtime_precisions(compiled) -> dict[str, int]:
    """``{"Convolution i8": 52, ...}``: what each compute layer of the compiled model really runs in."""
    counts: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"):
            counts[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- exactness probe
def _probe_model(channels: int) -> onnx.ModelProto:
    """``DQ(Q(x)) -> Conv 1x1 (DQ(Q(w))) -> output``, all scales 1: the exact answer is an integer sum."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    w = numpy_helper.from_array(np.full((1, channels, 1, 1), 127.0, np.float32), "w")
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zp"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "one", "zp"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "one", "zp"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"])]
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])], [one, zp, w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@functools.lru_cache(maxsize=1)
def int8_is_exact() -> bool:
    """Does OpenVINO's INT8 convolution accumulate exactly on this CPU? Run, not guessed from CPU flags.

    Inputs of -128 and 127 (signed activations are shifted to u8 by +128 internally: 0 and 255) with
    weights 127: a pair of u8 x s8 products is up to 2 x 255 x 127 = 64,770, beyond int16, so a
    saturating ``vpmaddubsw`` path gives a wrong sum and an exact (VNNI/AMX) path the right one.
    """
    channels = 64
    x = np.full((1, channels, 1, 1), 127.0, np.float32)
    x[0, channels // 2 + 1::2] = -128.0             # mostly positive: the saturating sum differs from the exact one
    exact = float((x.astype(np.int64) * 127).sum())
    compiled = _compile(_probe_model(channels), "LATENCY")
    got = float(compiled.create_infer_request().infer({0: x})[0].reshape(-1)[0])
    ok = got == exact
    log.debug("OpenVINO INT8 exactness probe: got %s, exact %s", got, exact)
    return ok


# --------------------------------------------------------------------------- value-preserving rewrite
def _is_zero_pad(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> bool:
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode != "constant":
        return False
    if len(node.input) > 2 and node.input[2]:
        v = values.get(node.input[2])
        return v is not None and v.size == 1 and float(v.reshape(-1)[0]) == 0.0
    return True


def quantize_before_zero_pads(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``Pad(x, 0) -> Q -> DQ`` becomes ``Q -> DQ -> Pad(., 0)``: identical values (a symmetric
    quantizer maps 0 to 0, and is applied per element). Only where the Pad's one reader is the Q, the
    Q is per-tensor with zero-point 0, and the padding value is 0. Returns the model and the count."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    values = constant_values(out)
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
    outputs = {o.name for o in g.output}
    moved = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        r = readers[pad.output[0]]
        if len(r) != 1 or r[0].op_type != "QuantizeLinear" or pad.output[0] in outputs or not _is_zero_pad(pad, values):
            continue
        q = r[0]
        zp = values.get(q.input[2]) if len(q.input) > 2 else np.zeros((), np.uint8)
        if zp is None or zp.size != 1 or int(zp.reshape(-1)[0]) != 0:
            continue
        dqs = readers[q.output[0]]
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or q.output[0] in outputs:
            continue
        dq = dqs[0]
        padded = dq.output[0]                       # the tensor the old DQ produced keeps its name and readers
        q.input[0] = pad.input[0]
        dq.output[0] = f"{pad.output[0]}_quantized_before_pad"
        pad.input[0] = dq.output[0]
        pad.output[0] = padded
        moved += 1
    if moved:
        nodes = toposort(list(g.node))
        del g.node[:]
        g.node.extend(nodes)
        del g.value_info[:]
        onnx.checker.check_model(out)
    return out, moved


# --------------------------------------------------------------------------- engine
class OpenVinoEngine(Engine):
    """One ONNX model compiled twice on demand: THROUGHPUT (several CPU streams, a batch split over an
    asynchronous request queue) for batches, LATENCY (one request over all cores) for small ones."""

    def __init__(self, model: onnx.ModelProto, info_fields: dict):
        ov = _ov()
        self.model = model
        self.input_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self.model_bytes = model.ByteSize()
        self.throughput = _compile(model, "THROUGHPUT")
        self.requests = max(1, int(self.throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.throughput, self.requests)
        self._results: dict[int, np.ndarray] = {}
        self.queue.set_callback(self._done)
        self._latency = None
        self.precisions = runtime_precisions(self.throughput)
        self.integer_kernels = {k: v for k, v in self.precisions.items() if k.endswith((" i8", " u8"))}
        self.info = EngineInfo(integer_kernels=self.integer_kernels, **info_fields)

    def _done(self, request, index: int) -> None:
        self._results[index] = request.get_output_tensor(0).data.copy()

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        fed = float_feeds(self.input_names, images)
        if self._latency is None:
            self._latency = _compile(self.model, "LATENCY").create_infer_request()
        res = self._latency.infer(fed)
        return tuple(res[i].copy() for i in range(len(res)))

    def run(self, images: np.ndarray) -> np.ndarray:
        if isinstance(images, Inputs):             # several inputs: one request, by name
            return self.run_all(images)[0]
        x = np.ascontiguousarray(images, dtype=np.float32)
        if len(x) < 2 * self.requests:
            if self._latency is None:
                self._latency = _compile(self.model, "LATENCY").create_infer_request()
            return self._latency.infer({0: x})[0].copy()
        chunk = -(-len(x) // self.requests)
        self._results.clear()
        starts = range(0, len(x), chunk)
        for i, s in enumerate(starts):
            self.queue.start_async({0: x[s:s + chunk]}, i)
        self.queue.wait_all()
        return np.concatenate([self._results[i] for i in range(len(starts))])


def build_openvino_engine(graph, plan, ranges, *, precision: str) -> OpenVinoEngine:
    """FP32: the ONNX graph. INT8: the exact Q/DQ model we ship for TensorRT (one value-preserving
    rewrite, :func:`quantize_before_zero_pads`), on CPUs where OpenVINO's INT8 is exact."""

    ov = _ov()
    fields, isa = cpu_engine_fields("openvino", precision)
    if not plan.nodes("int8"):
        engine = OpenVinoEngine(graph.model, fields)
        engine.info = replace(engine.info, description=f"OpenVINO {ov.__version__} CPU, FP32 (inference precision "
                                                       f"f32); {engine.requests} stream(s); CPU instructions: {isa}")
        return engine
    if not int8_is_exact():
        raise BackendUnavailable(
            "OpenVINO's INT8 convolutions saturate on this CPU", subject="--backend openvino",
            got=f"CPU integer instructions: {isa} (no VNNI/AMX: u8 x s8 products go through vpmaddubsw, which "
                "saturates pairs to int16)",
            hint="use --backend onnxruntime: its INT8 engine is exact on every CPU (on CPUs without VNNI/AMX INT8 is "
                 "not faster than FP32 anyway)")
    shipped, _ = build_qdq_model(graph, ranges, plan)
    model, moved = quantize_before_zero_pads(shipped)
    engine = OpenVinoEngine(model, fields)
    kernels = ", ".join(f"{v} {k}" for k, v in engine.precisions.items())
    engine.info = replace(engine.info, description=(
        f"OpenVINO {ov.__version__} CPU, INT8: the shipped TensorRT Q/DQ model"
        + (f" ({moved} quantizer(s) moved in front of a zero Pad: same values)" if moved else "")
        + f"; layers run as: {kernels}; exact integer accumulation checked on this CPU; "
          f"{engine.requests} stream(s); CPU instructions: {isa}"))
    return engine
