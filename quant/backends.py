"""Engines for a precision configuration, behind one interface: ``build(...) -> Engine``, ``Engine.run``.

- ``onnxruntime`` (CPU, everywhere): FP32 runs the ONNX graph; INT8 runs the Q/DQ model with ONNX
  Runtime's real integer kernels. ORT's fast x86 kernels want uint8 activations: a symmetric int8
  quantizer (zero-point 0) has exactly the values of a uint8 quantizer with zero-point 128 and the
  same scale (``q_u8 = q_s8 + 128``), so activation quantizers are rewritten that way; weights stay
  int8 per-channel. The engine reports which integer kernels ORT actually selected.
- ``torch`` (GPU when present, else CPU): FP32 / TF32 / FP16 / BF16 executed for real by the ONNX
  interpreter; INT8 is *simulated* (fake quantization with exactly our scales, on the same Q/DQ graph)
  and labelled so.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .errors import BackendUnavailable, ConfigError
from .graph import OnnxGraph, TorchGraphExecutor
from .plan import PrecisionPlan
from .qdq import build_qdq_model
from .types import RangeSet

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch", "tensorrt")
TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ORT_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearAdd",
                   "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
                   "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")


@dataclass(frozen=True)
class EngineInfo:
    backend: str
    precision: str
    device: str
    simulated: bool
    description: str
    integer_kernels: Mapping[str, int] = field(default_factory=dict)


class Engine:
    info: EngineInfo

    def run(self, images: np.ndarray) -> np.ndarray:   # pragma: no cover - interface
        raise NotImplementedError


def cpu_int8_instructions() -> list[str]:
    """The CPU's integer dot-product instruction sets (what makes INT8 faster than FP32 on a CPU)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return []
    wanted = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "avx2")
    return [f for f in wanted if f in flags]


def to_uint8_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Activation quantizers (input not a constant, int8 zero-point 0) -> uint8 with zero-point 128."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    const_inputs = set(inits) | {n.output[0] for n in g.node if n.op_type == "Constant"}
    # DequantizeLinear nodes consume the Q output; find activation Q nodes first
    act_zps = set()
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in const_inputs and len(n.input) > 2:
            act_zps.add(n.input[2])
    converted = {}
    for zp in act_zps:
        arr = numpy_helper.to_array(inits[zp])
        if arr.dtype != np.int8 or np.any(arr != 0):
            raise ConfigError("not a symmetric int8 activation quantizer", subject=f"zero point {zp!r}",
                              got=f"{arr.dtype} {arr.tolist()}", expected="int8 zero-point 0")
        name = f"{zp}_u8"
        g.initializer.append(numpy_helper.from_array(np.full(arr.shape, 128, dtype=np.uint8), name))
        converted[zp] = name
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in converted:
            n.input[2] = converted[n.input[2]]
    still_used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name in converted and i.name not in still_used]:
        g.initializer.remove(init)
    return out


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BackendUnavailable("ONNX Runtime is not installed", subject="--backend onnxruntime",
                                 hint="pip install onnxruntime") from err
    return ort


class OrtEngine(Engine):
    def __init__(self, model: onnx.ModelProto, info_fields: dict, threads: int | None = None):
        ort = _ort()
        self.model_bytes = model.ByteSize()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3          # errors only: the optimized-model dump warns about NCHWc layouts
        if threads:
            opts.intra_op_num_threads = threads
        with tempfile.TemporaryDirectory() as tmp:
            opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
            try:
                self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            except Exception as err:  # ORT's own exception types
                raise BackendUnavailable("ONNX Runtime cannot build this engine", subject="--backend onnxruntime",
                                         got=str(err)[:300], hint="ORT's CPU provider lacks some kernels "
                                                                  "(e.g. FP16 convolutions): use --backend torch or tensorrt") from err
            optimized = onnx.load(opts.optimized_model_filepath)
        ops = collections.Counter(n.op_type for n in optimized.graph.node)
        self.integer_kernels = {op: ops[op] for op in ORT_INTEGER_OPS if ops.get(op)}
        self.input_name = self.session.get_inputs()[0].name
        self.info = EngineInfo(integer_kernels=self.integer_kernels, **info_fields)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]


class TorchEngine(Engine):
    """The ONNX graph executed by PyTorch in FP32/TF32/FP16/BF16.

    On CUDA (``fast=True``): weights and activations in channels-last layout (tensor-core convolution
    kernels) and one CUDA graph per input shape, so a batch is a single graph replay instead of a
    Python loop over ~100 nodes (that loop dominates at batch 1).
    """

    def __init__(self, graph: OnnxGraph, info: EngineInfo, device: torch.device, dtype: torch.dtype, tf32: bool,
                 fast: bool = True):
        self.executor = TorchGraphExecutor(graph, device)
        self.executor.allow_tf32 = tf32
        self.dtype, self.tf32, self.device = dtype, tf32, device
        self.fast = fast and device.type == "cuda"
        consts = {}
        for k, v in self.executor.consts.items():
            if v.is_floating_point():
                v = v.to(dtype)
                if self.fast and v.dim() == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            consts[k] = v
        self.executor.consts = consts
        self.input_name = graph.inputs[0].name
        self.info = info
        self._graphs: dict[tuple, tuple] = {}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.executor.run({self.input_name: x})
        return next(iter(out.values()))

    def _tf32_context(self):
        import contextlib

        if not self.tf32:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def on():
            saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return on()

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in, device tensor out (no host copies): what benchmarks time."""
        x = x.to(self.device, self.dtype)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._tf32_context():
            if not self.fast:
                return self._forward(x)
            key = tuple(x.shape)
            if key not in self._graphs:
                static_in = x.clone()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):           # warm-up: cuDNN picks its kernels outside the capture
                        self._forward(static_in)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._forward(static_in)
                self._graphs[key] = (graph, static_in, static_out)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out

    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return self.run_tensor(x).float().cpu().numpy()


def _plan_precision(plan: PrecisionPlan) -> str:
    counts = plan.counts()
    if counts["int8"] and not counts["fp16"] and plan.default == "fp32":
        return "int8"
    if not plan.layers:
        return plan.default
    return f"mixed({plan.name})"


def build(backend: str, graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None = None, *,
          torch_precision: str | None = None, device: str = "auto", quantize_outputs: bool = False,
          fast: bool = True, out_dir: Path | None = None, trt_mode: str = "explicit",
          qdq_flavour: str = "ort") -> Engine:
    """Build an engine for ``plan`` on ``backend``. ``torch_precision`` (fp32|tf32|fp16|bf16) applies
    to the torch backend's non-INT8 execution; ``quantize_outputs`` makes the simulated torch engine
    use the ONNX Runtime flavour of the Q/DQ graph (quantized layer outputs too), for agreement checks."""
    if backend not in BACKENDS:
        raise ConfigError("unknown backend", subject="--backend", got=repr(backend), expected=" | ".join(BACKENDS))
    needs_ranges = bool(plan.nodes("int8"))
    if needs_ranges and ranges is None:
        raise ConfigError("INT8 needs ranges", subject="--ranges", hint="pass the ranges JSON or cache from `calibrate`")
    precision = _plan_precision(plan)
    if backend == "onnxruntime":
        if plan.nodes("fp16") or plan.default == "fp16":
            raise BackendUnavailable("ONNX Runtime's CPU provider has no FP16 convolution kernels",
                                     subject="--backend onnxruntime --precision " + plan.name,
                                     hint="use --backend torch (GPU) or tensorrt for FP16")
        if needs_ranges:
            # "ort": also quantize layer outputs so ORT selects its integer kernels (fast, but adds quantizers
            # TensorRT would not have); "tensorrt": the exact Q/DQ model written for TensorRT (ORT then runs most
            # layers as float kernels between Q/DQ: the best CPU predictor of TensorRT's accuracy)
            model, summary = build_qdq_model(graph, ranges, plan, quantize_outputs=qdq_flavour == "ort")
            model = to_uint8_activations(model)
        else:
            model = graph.model
        ort = _ort()
        fields = dict(backend="onnxruntime", precision=precision, device="cpu", simulated=False,
                      description="")
        engine = OrtEngine(model, fields)
        isa = ", ".join(cpu_int8_instructions()) or "none detected"
        if needs_ranges:
            k = sum(engine.integer_kernels.values())
            kernels = ", ".join(f"{v} {op}" for op, v in engine.integer_kernels.items()) or "none"
            desc = (f"ONNX Runtime {ort.__version__} CPU, INT8 ({qdq_flavour}-shaped Q/DQ) with uint8 activations "
                    f"(zero-point 128) and int8 per-channel weights; integer kernels selected: {kernels}"
                    + ("" if k else " -- none: ORT runs this model's quantizers in float (not a real INT8 engine)")
                    + f"; CPU integer instructions: {isa}")
        else:
            desc = f"ONNX Runtime {ort.__version__} CPU, FP32; CPU integer instructions: {isa}"
        engine.info = EngineInfo(**{**engine.info.__dict__, "description": desc})
        return engine
    if backend == "torch":
        from .calibrate import resolve_device

        dev = resolve_device(device)
        tp = torch_precision or ("fp16" if plan.default == "fp16" and not plan.layers else "fp32")
        if tp not in TORCH_DTYPES:
            raise ConfigError("unknown torch precision", subject="--torch-precision", got=repr(tp),
                              expected=" | ".join(TORCH_DTYPES))
        if dev.type == "cpu" and tp in ("fp16", "bf16"):
            log.warning("FP16/BF16 on the CPU is slow in PyTorch; numbers are real but not representative")
        g = graph
        if needs_ranges:
            if tp != "fp32":
                raise ConfigError("simulated INT8 runs on an FP32 base", subject="--torch-precision", got=tp,
                                  expected="fp32 with an INT8 plan")
            model, _ = build_qdq_model(graph, ranges, plan, quantize_outputs=quantize_outputs)
            g = OnnxGraph(model)
        simulated = needs_ranges
        desc = (f"PyTorch {torch.__version__} on {dev}, {tp.upper()}"
                + (" + INT8 SIMULATED (fake quantization with the same scales; not a real INT8 engine)" if simulated else ""))
        info = EngineInfo(backend="torch", precision=precision if needs_ranges else tp, device=str(dev),
                          simulated=simulated, description=desc)
        if fast and dev.type == "cuda":
            info = EngineInfo(**{**info.__dict__, "description": info.description + ", channels-last, CUDA graphs"})
        return TorchEngine(g, info, dev, TORCH_DTYPES[tp], tp == "tf32", fast=fast)
    from .trt_backend import build_trt_engine

    return build_trt_engine(graph, plan, ranges, out_dir=out_dir, mode=trt_mode)
