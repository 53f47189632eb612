"""TensorRT engines (imported lazily; written against the TensorRT 8-11 Python API).

Two ways to an INT8/mixed engine:

- ``explicit`` (TensorRT 8-11, the only way on 11): build the Q/DQ ONNX of the plan (INT8 layers
  wrapped in Q/DQ, FP16 layers in Casts) and parse it; with ``STRONGLY_TYPED`` (TensorRT >= 10) the
  precisions come from the graph's types, otherwise the INT8 and FP16 builder flags allow them.
- ``implicit`` (TensorRT <= 10): parse the plain ONNX, serve our calibration cache through an
  ``IInt8Calibrator`` (no calibration run), and pin each planned layer's precision with
  ``layer.precision`` + ``OBEY_PRECISION_CONSTRAINTS``.

Engines are serialized to ``out_dir/model.engine`` with a reusable timing cache, run through torch
CUDA tensors (``set_tensor_address`` + ``execute_async_v3``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .cache import TrtCache, trt_version_int
from .errors import BackendUnavailable, ConfigError, PlanError
from .graph import OnnxGraph
from .plan import PrecisionPlan
from .qdq import build_qdq_model
from .types import RangeSet

log = logging.getLogger(__name__)

MODES = ("explicit", "implicit")


def _trt():
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable("TensorRT is not installed", subject="--backend tensorrt",
                                 hint="install TensorRT, or use --backend onnxruntime/torch; the Q/DQ ONNX that "
                                      "`cli.py build` writes builds with trtexec") from err
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU", subject="--backend tensorrt", hint="use --backend onnxruntime")
    return trt


def _major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


class TrtEngine:
    def __init__(self, serialized: bytes, info):
        trt = _trt()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise BackendUnavailable("TensorRT could not deserialize the engine", subject="--backend tensorrt")
        self.context = self.engine.create_execution_context()
        self.model_bytes = len(serialized)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8,
                        trt.int32: torch.int32}
        self.info = info

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        name = self.inputs[0]
        x = x.to("cuda", self._dtypes[self.engine.get_tensor_dtype(name)]).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for o in self.outputs:
            shape = tuple(self.context.get_tensor_shape(o))
            t = torch.empty(shape, dtype=self._dtypes[self.engine.get_tensor_dtype(o)], device="cuda")
            self.context.set_tensor_address(o, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailable("TensorRT execution failed", subject="--backend tensorrt")
        self._keep = x            # the input must live until the stream has run
        return outs[0]

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self.run_tensor(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        torch.cuda.current_stream().synchronize()
        return out.float().cpu().numpy()


def build_trt_engine(graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None, *, out_dir: Path | None,
                     mode: str = "explicit", max_batch: int = 256, workspace_gib: float = 4.0,
                     cache: TrtCache | None = None):
    from .backends import EngineInfo

    if mode not in MODES:
        raise ConfigError("unknown TensorRT mode", subject="--trt-mode", got=repr(mode), expected=" | ".join(MODES))
    trt = _trt()
    major = _major(trt)
    has_int8 = bool(plan.nodes("int8"))
    if mode == "implicit" and major >= 11:
        raise BackendUnavailable("implicit INT8 (calibration caches, layer precisions) was removed in TensorRT 11",
                                 subject=f"--trt-mode implicit (tensorrt {trt.__version__})",
                                 hint="use --trt-mode explicit: the plan is built from a Q/DQ ONNX model")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = mode == "explicit" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if mode == "explicit" and (has_int8 or plan.nodes("fp16") or plan.default == "fp16"):
        model, _ = build_qdq_model(graph, ranges if ranges is not None else RangeSet({}, "none"), plan)
        onnx_bytes = model.SerializeToString()
    else:
        onnx_bytes = graph.model.SerializeToString()
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable("TensorRT cannot parse the model", subject="--backend tensorrt", got=errors[:400])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:
        if plan.default == "fp16" or plan.nodes("fp16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if has_int8:
            config.set_flag(trt.BuilderFlag.INT8)
    calibrator = None
    if mode == "implicit":
        if has_int8:
            if cache is None:
                if ranges is None:
                    raise ConfigError("implicit INT8 needs ranges", subject="--ranges")
                cache = TrtCache.from_ranges(ranges, algorithm="EntropyCalibration2",
                                             version=trt_version_int(trt.__version__))
            from ..calibrators.tensorrt import make_calibrator

            calibrator = make_calibrator("entropy", iter([]), batch_size=1, input_name=graph.inputs[0].name,
                                         serve_cache=cache)
            config.int8_calibrator = calibrator
        if plan.layers:
            wanted = {"int8": trt.int8, "fp16": trt.float16, "fp32": trt.float32}
            names = {}
            for i in range(network.num_layers):
                names[network.get_layer(i).name] = network.get_layer(i)
            missing = [n for n in plan.layers if n not in names]
            if missing:
                raise PlanError("plan names layers TensorRT does not have", subject="--precision",
                                got=", ".join(missing[:5]), hint="TensorRT names layers after ONNX nodes; re-make the plan")
            for node, lp in plan.layers.items():
                names[node].precision = wanted[lp.precision]
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    inp = network.get_input(0)
    chw = tuple(int(d) for d in inp.shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, *chw), (max(1, max_batch // 4), *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    timing_path = Path(out_dir) / "timing.cache" if out_dir is not None else None
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path and timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None:
        calibrator.raise_if_failed()
    if serialized is None:
        raise BackendUnavailable("TensorRT engine build failed", subject="--backend tensorrt", hint="see TensorRT's log above")
    data = bytes(serialized)
    if out_dir is not None:
        from .fileio import atomic_write_bytes

        atomic_write_bytes(Path(out_dir) / "model.engine", data)
        atomic_write_bytes(timing_path, bytes(timing.serialize()))
    desc = (f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}, {mode} "
            + ("strongly typed Q/DQ + Cast graph" if strongly_typed else "builder flags")
            + f", batch 1..{max_batch}")
    info = EngineInfo(backend="tensorrt", precision=plan.name, device="cuda", simulated=False, description=desc)
    return TrtEngine(data, info)
