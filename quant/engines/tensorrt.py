"""TensorRT engines (imported lazily; written against the TensorRT 8-11 Python API).

Two ways to an INT8/mixed engine:

- ``explicit`` (TensorRT 8-11, the only way on 11): build the Q/DQ ONNX of the plan (INT8 layers
  wrapped in Q/DQ, FP16 layers in Casts) and parse it. Strongly typed (``STRONGLY_TYPED``, from 9.0;
  always on 11, which removed the precision flags): the precisions come from the graph's types.
  Weakly typed (8.x): Casts do not pin anything, so the INT8/FP16 flags allow those precisions and
  the plan's FP16/FP32 layers are pinned with ``layer.precision`` + ``OBEY_PRECISION_CONSTRAINTS``.
- ``implicit`` (TensorRT <= 10): parse the plain ONNX, set every ranged tensor's dynamic range from
  our ranges (or cache), and pin each planned layer's precision with ``layer.precision`` +
  ``OBEY_PRECISION_CONSTRAINTS``; an INT8 layer is pinned only where every non-constant input and
  output has a range (the parser adds tensors of its own, e.g. a Gemm's bias add, that have none).

FP32 layers run in FP32, not TF32 (the TF32 flag, on by default, is cleared). One optimization
profile covers every input, from the network's own shapes (static dims fixed, a dynamic batch
1..max_batch). Engines are serialized to ``out_dir/model.engine`` with a reusable timing cache and
run through torch CUDA tensors (``set_tensor_address`` + ``execute_async_v3``) on a dedicated stream.
"""

from __future__ import annotations
import logging
from pathlib import Path

import numpy as np
import torch

from ...core.cache import TrtCache
from ...core.errors import BackendUnavailable, CalibrationError, ConfigError, PlanError
from ...core.fileio import atomic_write_bytes
from ...core.records import EngineInfo
from ...core.runtime import import_tensorrt
from ...core.trt_versions import needs_explicit_batch, trt_major
from ...core.trt_versions import strongly_typed as _strongly_typed
from ...core.types import RangeSet, feeds
from ..artifacts.plan import PrecisionPlan
from ..artifacts.qdq import build_qdq_model
from ..graph.onnx_graph import OnnxGraph
from .base import Engine, float_feeds

log = logging.getLogger(__name__)

MODES = ("explicit", "implicit")


def _trt():
    trt = import_tensorrt("--backend tensorrt", hint="install TensorRT, or use --backend onnxruntime/torch; the Q/DQ "
                                                     "ONNX that `cli.py build` writes builds with trtexec")
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU", subject="--backend tensorrt", hint="use --backend onnxruntime")
    return trt


def _major(trt) -> int:
    return trt_major(trt.__version__)


# Where TrtEngine puts its tensors and how it gets streams; the conformance tests' TensorRT double
# (tests/trt_conformance) runs the same code on the CPU by replacing these four.
_DEVICE = "cuda"


def _new_stream():
    return torch.cuda.Stream()


def _current_stream():
    return torch.cuda.current_stream()


def _use_stream(stream):
    return torch.cuda.stream(stream)


class TrtEngine(Engine):
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
        # enqueueV3 on the legacy default stream costs extra synchronizations (TensorRT warns)
        self.stream = _new_stream()

    def run_tensor(self, x: torch.Tensor | dict) -> torch.Tensor:
        """Device tensors in (one tensor, or a tensor per input name), the first output out."""
        fed = {n: x[n] for n in self.inputs} if isinstance(x, dict) else feeds(self.inputs, x)
        caller = _current_stream()
        self.stream.wait_stream(caller)          # x may still be written on the caller's stream
        kept = []
        with _use_stream(self.stream):
            for name, t in fed.items():
                t = t.to(_DEVICE, self._dtypes[self.engine.get_tensor_dtype(name)]).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ConfigError("TensorRT refused the input shape", subject=f"input {name!r}",
                                      got=str(tuple(t.shape)), expected="a shape within the engine's optimization "
                                      "profile (static dims as exported, batch 1..max_batch)")
                self.context.set_tensor_address(name, t.data_ptr())
                kept.append(t)
            outs = []
            for o in self.outputs:
                shape = tuple(self.context.get_tensor_shape(o))
                t = torch.empty(shape, dtype=self._dtypes[self.engine.get_tensor_dtype(o)], device=_DEVICE)
                self.context.set_tensor_address(o, t.data_ptr())
                outs.append(t)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendUnavailable("TensorRT execution failed", subject="--backend tensorrt")
        caller.wait_stream(self.stream)          # the caller sees the outputs in its stream order
        self._keep = kept         # the inputs must live until the stream has run
        return outs[0]

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self.run_tensor({k: torch.from_numpy(v) for k, v in float_feeds(self.inputs, images).items()})
        self.stream.synchronize()
        return out.float().cpu().numpy()

    def layer_times(self, images, iters: int = 20) -> dict[str, float]:
        """Milliseconds of each engine layer (TensorRT's names: fused layers joined by `` + ``), the mean of
        ``iters`` runs on ``images`` after one warm-up, from TensorRT's per-layer profiler (``IProfiler``)."""
        fed = {k: torch.from_numpy(v) for k, v in float_feeds(self.inputs, images).items()}
        self.run_tensor(fed)
        self.stream.synchronize()
        profiler = _layer_profiler(_trt())
        self.context.profiler = profiler
        for _ in range(iters):
            self.run_tensor(fed)
            self.stream.synchronize()
        return {name: ms / iters for name, ms in profiler.total_ms.items()}


def _layer_profiler(trt):
    """An ``IProfiler`` that sums each layer's reported milliseconds."""
    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.total_ms: dict[str, float] = {}

        def report_layer_time(self, layer_name, ms):
            self.total_ms[layer_name] = self.total_ms.get(layer_name, 0.0) + float(ms)
    return LayerTimes()


def profile_shapes(name: str, shape: tuple, max_batch: int, example: tuple | None = None) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) of one input: static dims as they are (TensorRT requires min = opt = max = d
    there), a dynamic batch 1 .. max_batch//4 .. max_batch; other dynamic dims (H/W of a fully
    convolutional export) take the data's ``example`` shape (min = opt = max: the size evaluated)."""
    dims = [int(d) for d in shape]
    lo, opt, hi = list(dims), list(dims), list(dims)
    for i, d in enumerate(dims):
        if d != -1:
            continue
        if i == 0:
            lo[0], opt[0], hi[0] = 1, max(1, max_batch // 4), max_batch
        elif example is not None and len(example) == len(dims):
            lo[i] = opt[i] = hi[i] = int(example[i])
        else:
            raise ConfigError("input has a dynamic dimension other than the batch", subject=f"input {name!r}",
                              got=str(tuple(dims)), hint="export the model with static C/H/W, or give data that "
                                                        "fixes it (evaluate/sweep take the data's size)")
    return tuple(lo), tuple(opt), tuple(hi)


def _layer_io(layer):
    ins = [layer.get_input(j) for j in range(layer.num_inputs)]
    outs = [layer.get_output(j) for j in range(layer.num_outputs)]
    return [t for t in ins if t is not None], [t for t in outs if t is not None]


def _set_dynamic_ranges(trt, network, amax: dict) -> set[str]:
    """Set every network tensor we have a range for; returns the names that have one."""
    tensors = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        tensors[t.name] = t
    for i in range(network.num_layers):
        for t in _layer_io(network.get_layer(i))[1]:
            tensors[t.name] = t
    ranged = set()
    for name, t in tensors.items():
        a = amax.get(name)
        if a is None:
            continue
        if not t.set_dynamic_range(-float(a), float(a)):
            raise CalibrationError("TensorRT refused a dynamic range", subject=f"tensor {name!r}", got=f"amax {a!r}")
        ranged.add(name)
    return ranged


def _int8_ready(trt, layer, ranged: set[str], constants: set[str]) -> bool:
    ins, outs = _layer_io(layer)
    return all(t.name in ranged for t in ins + outs if t.name not in constants)


def build_trt_engine(graph: OnnxGraph, plan: PrecisionPlan, ranges: RangeSet | None, *, out_dir: Path | None,
                     mode: str = "explicit", max_batch: int = 256, workspace_gib: float = 4.0,
                     example_shapes: dict[str, tuple] | None = None,
                     cache: TrtCache | None = None):
    if mode not in MODES:
        raise ConfigError("unknown TensorRT mode", subject="--trt-mode", got=repr(mode), expected=" | ".join(MODES))
    trt = _trt()
    major = _major(trt)
    has_int8 = bool(plan.nodes("int8"))
    has_fp16 = plan.default == "fp16" or bool(plan.nodes("fp16"))
    keeps_fp32 = plan.default == "fp32" or bool(plan.nodes("fp32"))
    if mode == "implicit" and major >= 11:
        raise BackendUnavailable("implicit INT8 (calibration caches, layer precisions) was removed in TensorRT 11",
                                 subject=f"--trt-mode implicit (tensorrt {trt.__version__})",
                                 hint="use --trt-mode explicit: the plan is built from a Q/DQ ONNX model")
    amax = None
    if mode == "implicit" and has_int8:
        if ranges is not None:
            amax = {n: r.amax for n, r in ranges.ranges.items()}
        elif cache is not None:
            amax = {n: r.amax for n, r in cache.ranges().items()}
        else:
            raise ConfigError("implicit INT8 needs ranges", subject="--ranges",
                              hint="pass a ranges JSON or TensorRT cache from `cli.py calibrate`")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag_enum = trt.NetworkDefinitionCreationFlag
    typed = mode == "explicit" and _strongly_typed(trt.__version__, hasattr(flag_enum, "STRONGLY_TYPED"))
    flags = 0
    if typed and hasattr(flag_enum, "STRONGLY_TYPED"):
        flags |= 1 << int(flag_enum.STRONGLY_TYPED)
    if needs_explicit_batch(trt.__version__):
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if mode == "explicit" and (has_int8 or has_fp16):
        model, _ = build_qdq_model(graph, ranges if ranges is not None else RangeSet({}, "none"), plan,
                                   trt_version=trt.__version__)
        onnx_bytes = model.SerializeToString()
    else:
        onnx_bytes = graph.model.SerializeToString()
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable("TensorRT cannot parse the model", subject="--backend tensorrt", got=errors[:400])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not typed:
        if has_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if has_int8:
            config.set_flag(trt.BuilderFlag.INT8)
    if keeps_fp32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)      # on by default: "fp32" layers would run in TF32
    if not typed:
        _pin_precisions(trt, network, plan, mode, amax, config)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        ex = example_shapes.get(inp.name) if example_shapes else None
        profile.set_shape(inp.name, *profile_shapes(inp.name, tuple(inp.shape), max_batch, ex))
    config.add_optimization_profile(profile)
    timing_path = Path(out_dir) / "timing.cache" if out_dir is not None else None
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path and timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable("TensorRT engine build failed", subject="--backend tensorrt", hint="see TensorRT's log above")
    data = bytes(serialized)
    if out_dir is not None:
        atomic_write_bytes(Path(out_dir) / "model.engine", data)
        atomic_write_bytes(timing_path, bytes(timing.serialize()))
    desc = (f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}, {mode} "
            + ("strongly typed Q/DQ + Cast graph" if typed else "builder flags + layer precisions")
            + f", batch 1..{max_batch}")
    info = EngineInfo(backend="tensorrt", precision=plan.name, device="cuda", simulated=False, description=desc)
    return TrtEngine(data, info)


def _pin_precisions(trt, network, plan: PrecisionPlan, mode: str, amax: dict | None, config) -> None:
    """Weakly typed builds: ``layer.precision`` for the plan's layers + OBEY_PRECISION_CONSTRAINTS.

    explicit (Q/DQ graph): the FP16/FP32 layers (INT8 comes from the Q/DQ nodes; Casts pin nothing).
    implicit: every planned layer, after setting the dynamic ranges; an INT8 layer only where every
    non-constant input and output has a range (else OBEY would fail the build), the rest is logged.
    """
    wanted = {"int8": trt.int8, "fp16": trt.float16, "fp32": trt.float32}
    pins = {n: lp.precision for n, lp in plan.layers.items() if mode == "implicit" or lp.precision != "int8"}
    ranged: set[str] = set()
    if amax is not None:
        ranged = _set_dynamic_ranges(trt, network, amax)
    if not pins:
        return
    layers, constants = {}, set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers[layer.name] = layer
        if layer.type == trt.LayerType.CONSTANT:
            constants.update(t.name for t in _layer_io(layer)[1])
    missing = [n for n in pins if n not in layers]
    if missing:
        raise PlanError("plan names layers TensorRT does not have", subject="--precision",
                        got=", ".join(missing[:5]), hint="TensorRT names layers after ONNX nodes; re-make the plan")
    unranged = []
    for node, precision in pins.items():
        if precision == "int8" and not _int8_ready(trt, layers[node], ranged, constants):
            unranged.append(node)
            continue
        layers[node].precision = wanted[precision]
    if unranged:
        log.warning("%d INT8 layer(s) have tensors without a range (parser-made tensors); left to TensorRT: %s",
                    len(unranged), ", ".join(unranged[:5]) + (" ..." if len(unranged) > 5 else ""))
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
