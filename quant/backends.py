"""Engines for a precision configuration, behind one interface: ``build(...) -> Engine``, ``Engine.run``.

- ``onnxruntime`` (CPU, everywhere): FP32 runs the ONNX graph; INT8 runs the very Q/DQ model we ship
  for TensorRT, lowered for ONNX Runtime's integer kernels by value-preserving rewrites only
  (:mod:`.ort_int8`: uint8 activations with zero-point 128, u8 or s8 weights by what the CPU computes
  exactly, ``QLinearConv`` where a quantizer follows the convolution). The engine reports which
  integer kernels ORT actually selected.
- ``openvino`` (CPU, optional): FP32 runs the ONNX graph; INT8 runs the shipped Q/DQ model with
  OpenVINO's fused integer convolutions (:mod:`.ov_backend`), on CPUs where they are exact (VNNI/AMX):
  the fast INT8 CPU engine.
- ``torch`` (GPU when present, else CPU): FP32 / TF32 / FP16 / BF16 executed for real by the ONNX
  interpreter; INT8 is *simulated* (fake quantization with exactly our scales, on the same Q/DQ graph)
  and labelled so.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch


from ..core.errors import BackendUnavailable, ConfigError
from ..core.runtime import resolve_device, tf32
from .engine import Engine, EngineInfo, cpu_engine_fields
from .graph import OnnxGraph, TorchGraphExecutor
from .ort_int8 import _ort
from .plan import PrecisionPlan
from .qdq import build_qdq_model
from ..core.targets import BACKENDS
from ..core.types import RangeSet
from .ort_int8 import lower_for_onnxruntime, u8s8_is_exact
from .trt_backend import build_trt_engine
from .ov_backend import build_openvino_engine

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ORT_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearAdd",
                   "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
                   "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")


def build_ort_engine(graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None, *, precision: str,
                     weights: str | None = None) -> "OrtEngine":
    """FP32: the ONNX graph. INT8: the exact Q/DQ model we ship for TensorRT, lowered value-preservingly
    for ONNX Runtime's integer kernels (:mod:`.ort_int8`)."""

    ort = _ort()
    fields, isa = cpu_engine_fields("onnxruntime", precision)
    if not plan.nodes("int8"):
        engine = OrtEngine(graph.model, fields)
        engine.info = replace(engine.info, description=f"ONNX Runtime {ort.__version__} CPU, FP32; "
                                                       f"CPU instructions: {isa}")
        return engine
    shipped, _ = build_qdq_model(graph, ranges, plan)
    low = lower_for_onnxruntime(shipped, weights)
    engine = OrtEngine(low.model, fields)
    engine.lowering = low
    kernels = ", ".join(f"{v} {op}" for op, v in engine.integer_kernels.items()) or "none"
    exact = u8s8_is_exact()
    if low.weights == "s8":
        why = ("u8 x s8 weights (this CPU accumulates u8 x s8 exactly: VNNI/AMX)" if exact else
               "u8 x s8 weights as requested -- this CPU's u8 x s8 GEMM saturates (no VNNI: vpmaddubsw), so "
               "results are NOT exact: use the default weights")
    else:
        why = ("u8 x u8 weights with zero-point 128 (same values)"
               + (", as requested" if exact else
                  ": this CPU's u8 x s8 GEMM saturates (no VNNI: vpmaddubsw), so exact kernels widen to 16 bits "
                  "-- on this CPU INT8 is not expected to beat FP32: without VNNI/AMX an exact int8 product "
                  "costs as much as a float one"))
    engine.info = replace(engine.info, description=(
        f"ONNX Runtime {ort.__version__} CPU, INT8: the shipped TensorRT Q/DQ model, lowered value-preservingly; "
        f"{why}; integer kernels: {kernels}; {len(low.float_layers)} INT8 layer(s) computed in float on "
        f"dequantized values as the Q/DQ graph defines (residual/classifier); CPU instructions: {isa}"))
    return engine



class OrtEngine(Engine):
    def __init__(self, model: onnx.ModelProto, info_fields: dict):
        ort = _ort()
        self.model_bytes = model.ByteSize()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3          # errors only: the optimized-model dump warns about NCHWc layouts
        # ONNX Runtime's own Q/DQ fusions are not value-preserving (they drop float Clips, quantize biases
        # without range checks): the INT8 model is already lowered exactly (ort_int8), so keep them off
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
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
        return self.run_all(images)[0]

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}))


class TorchEngine(Engine):
    """The ONNX graph executed by PyTorch in FP32/TF32/FP16/BF16.

    On CUDA (``fast=True``): weights and activations in channels-last layout (tensor-core convolution
    kernels) and one CUDA graph per input shape, so a batch is a single graph replay instead of a
    Python loop over ~100 nodes (that loop dominates at batch 1).
    """

    def __init__(self, graph: OnnxGraph, info: EngineInfo, device: torch.device, dtype: torch.dtype, tf32: bool,
                 fast: bool = True):
        self.executor = TorchGraphExecutor(
            graph, device, unsupported_hint="use another --backend (e.g. --backend onnxruntime): the torch backend "
                                            "runs the graph with PyTorch")
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

    def _device_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.fast else x

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in, device tensor out (no host copies): what benchmarks time."""
        x = self._device_input(x)
        with tf32(self.tf32):          # off: what the executor enforces anyway (FP32 means FP32)
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

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output, through the interpreter (no CUDA graph: it captures the first output only)."""
        x = self._device_input(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        with tf32(self.tf32):
            out = self.executor.run({self.input_name: x})
        return tuple(v.float().cpu().numpy() for v in out.values())


def _plan_precision(plan: PrecisionPlan) -> str:
    counts = plan.counts()
    if counts["int8"] and not counts["fp16"] and plan.default == "fp32":
        return "int8"
    if not plan.layers:
        return plan.default
    return f"mixed({plan.name})"


def build(backend: str, graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None = None, *,
          torch_precision: str | None = None, device: str = "auto",
          fast: bool = True, out_dir: Path | None = None, trt_mode: str = "explicit") -> Engine:
    """Build an engine for ``plan`` on ``backend``. ``torch_precision`` (fp32|tf32|fp16|bf16) applies
    to the torch backend's non-INT8 execution. Every INT8 engine runs the one Q/DQ model we ship."""
    if backend not in BACKENDS:
        raise ConfigError("unknown backend", subject="--backend", got=repr(backend), expected=" | ".join(BACKENDS))
    needs_ranges = bool(plan.nodes("int8"))
    if needs_ranges and ranges is None:
        raise ConfigError("INT8 needs ranges", subject="--ranges", hint="pass the ranges JSON or cache from `calibrate`")
    precision = _plan_precision(plan)
    if backend in ("onnxruntime", "openvino"):
        if plan.nodes("fp16") or plan.default == "fp16":
            raise BackendUnavailable("the CPU engines run FP32 and INT8 layers: no FP16 convolution kernels",
                                     subject=f"--backend {backend} --precision {plan.name}",
                                     hint="use --backend torch (GPU) or tensorrt for FP16")
        cpu_engine = build_ort_engine if backend == "onnxruntime" else build_openvino_engine
        return cpu_engine(graph, plan, ranges, precision=precision)
    if backend == "torch":
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
            model, _ = build_qdq_model(graph, ranges, plan)
            g = OnnxGraph(model)
        simulated = needs_ranges
        desc = (f"PyTorch {torch.__version__} on {dev}, {tp.upper()}"
                + (" + INT8 SIMULATED (fake quantization with the same scales; not a real INT8 engine)" if simulated else ""))
        info = EngineInfo(backend="torch", precision=precision if needs_ranges else tp, device=str(dev),
                          simulated=simulated, description=desc)
        if fast and dev.type == "cuda":
            info = replace(info, description=info.description + ", channels-last, CUDA graphs")
        return TorchEngine(g, info, dev, TORCH_DTYPES[tp], tp == "tf32", fast=fast)

    return build_trt_engine(graph, plan, ranges, out_dir=out_dir, mode=trt_mode)
