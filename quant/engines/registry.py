"""Engines for a precision configuration, behind one interface: ``build(...) -> Engine``, ``Engine.run``.

- ``onnxruntime`` (CPU, everywhere): FP32 runs the ONNX graph; INT8 runs the very Q/DQ model we ship
  for TensorRT, lowered for ONNX Runtime's integer kernels by value-preserving rewrites only
  (:mod:`.ort_int8`: uint8 activations with zero-point 128, u8 or s8 weights by what the CPU computes
  exactly, ``QLinearConv`` where a quantizer follows the convolution). The engine reports which
  integer kernels ORT actually selected.
- ``openvino`` (CPU, optional): FP32 runs the ONNX graph; INT8 runs the shipped Q/DQ model with
  OpenVINO's fused integer convolutions (:mod:`.openvino`), on CPUs where they are exact (VNNI/AMX):
  the fast INT8 CPU engine.
- ``torch`` (GPU when present, else CPU): FP32 / TF32 / FP16 / BF16 executed for real by the ONNX
  interpreter; INT8 is *simulated* (fake quantization with exactly our scales, on the same Q/DQ graph)
  and labelled so.
"""

from __future__ import annotations
import logging
from dataclasses import replace
from pathlib import Path
import torch

from ...core.errors import BackendUnavailable, ConfigError
from ...core.records import EngineInfo
from ...core.runtime import resolve_device
from ...core.targets import BACKENDS
from ...core.types import RangeSet, feeds
from ..artifacts.plan import PrecisionPlan
from ..artifacts.qdq import build_qdq_model
from ..graph.compiled import CUDA_ENGINE_MODE, DEFAULT_COMPILE, compile_enabled
from ..graph.onnx_graph import OnnxGraph
from .base import Engine
from .onnxruntime import build_ort_engine
from .openvino import build_openvino_engine
from .tensorrt import build_trt_engine
from .torch import TORCH_DTYPES, TorchEngine, channels_last_for

log = logging.getLogger(__name__)


def _plan_precision(plan: PrecisionPlan) -> str:
    counts = plan.counts()
    if counts["int8"] and not counts["fp16"] and plan.default == "fp32":
        return "int8"
    if not plan.layers:
        return plan.default
    return f"mixed({plan.name})"


def build(backend: str, graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None = None, *,
          torch_precision: str | None = None, device: str = "auto",
          fast: bool = True, out_dir: Path | None = None, trt_mode: str = "explicit", example=None,
          compile: str = DEFAULT_COMPILE, compile_mode: str | None = None) -> Engine:
    """Build an engine for ``plan`` on ``backend``. ``torch_precision`` (fp32|tf32|fp16|bf16) applies
    to the torch backend's non-INT8 execution. ``example``: a batch of the data (an array or
    :class:`Inputs`), whose sizes fix the TensorRT profile's dynamic dims besides the batch. Every INT8 engine runs the one Q/DQ model we ship.
    ``compile`` (off | on | auto: on CUDA): the torch backend runs the graph ``torch.compile``'d
    (``compile_mode``: the inductor mode; default :data:`.CUDA_ENGINE_MODE` on CUDA); other backends ignore it."""
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
        dtype, tf32 = TORCH_DTYPES[tp], tp == "tf32"
        if fast and dev.type == "cuda":
            layout = ", channels-last" if channels_last_for(dtype, tf32) else ""
            info = replace(info, description=info.description + layout + ", CUDA graphs")
        compiled = compile_enabled(compile, dev)
        if compiled:
            mode = compile_mode or (CUDA_ENGINE_MODE if dev.type == "cuda" else "default")
            info = replace(info, description=info.description + f", torch.compile (mode {mode})")
        return TorchEngine(g, info, dev, dtype, tf32, fast=fast, compile=compiled,
                           compile_mode=compile_mode)

    shapes = None if example is None else {k: v.shape for k, v in feeds([gi.name for gi in graph.inputs], example).items()}
    return build_trt_engine(graph, plan, ranges, out_dir=out_dir, mode=trt_mode, example_shapes=shapes)
