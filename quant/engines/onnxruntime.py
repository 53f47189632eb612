"""The ONNX Runtime engine (CPU, everywhere): FP32 runs the ONNX graph; INT8 runs the very Q/DQ model we
ship for TensorRT, lowered for ONNX Runtime's integer kernels by value-preserving rewrites only
(:mod:`.ort_int8`). The engine reports which integer kernels ORT actually selected."""

from __future__ import annotations
import collections
import os
import tempfile
from dataclasses import replace

import numpy as np
import onnx

from ...core.errors import BackendUnavailable
from ...core.records import EngineInfo
from ...core.types import RangeSet
from ..artifacts.plan import PrecisionPlan
from ..artifacts.qdq import build_qdq_model
from ..graph.onnx_graph import OnnxGraph
from .base import Engine, cpu_engine_fields, float_feeds
from .ort_int8 import _ort, lower_for_onnxruntime, u8s8_is_exact
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
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.info = EngineInfo(integer_kernels=self.integer_kernels, **info_fields)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.run_all(images)[0]

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, float_feeds(self.input_names, images)))
