"""``build_engine()``: model + ranges + precision plan -> an engine on a backend, plus TensorRT artifacts.

Writes into ``out``: ``model_qdq.onnx`` (the TensorRT 10/11 explicit-quantization model, when the
plan has INT8 or FP16 layers), ``plan.json``, and ``engine.json`` (engine description, smoke-test
numbers on the bundled images, and the equivalent ``trtexec`` command lines).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import Engine, build
from .cache_tools import load_ranges
from ..core.defaults import DEFAULT_MODEL
from ..core.errors import ConfigError, ModelError, PlanError, QuantError
from ..core.fileio import OutputSet, check_output_dir, json_text
from .graph import OnnxGraph
from .models import resolve_model
from .plan import PrecisionPlan, resolve_plan
from .qdq import build_qdq_model
from ..core.types import RangeSet
from ..datasets import open_source
from .calibrate import check_model_input


@dataclass(frozen=True, eq=False)
class BuildResult:
    engine: Engine
    plan: PrecisionPlan
    out: Path
    files: dict = field(default_factory=dict)
    trtexec: list = field(default_factory=list)
    smoke: dict = field(default_factory=dict)


def trtexec_input(graph, example_shape: tuple | None = None) -> tuple[str, tuple[int, ...], int]:
    """(input name, C/H/W..., batch) for ``trtexec --shapes``: static dims as exported, dynamic ones from
    the data's ``example_shape``; the batch is 1 for a dynamic batch, else the model's fixed batch."""
    gi = graph.inputs[0]
    dims = []
    for i, d in enumerate(gi.shape[1:], 1):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif example_shape is not None and len(example_shape) == len(gi.shape):
            dims.append(int(example_shape[i]))
        else:
            raise ConfigError("the model input has a dynamic dimension besides the batch", subject=f"model input {gi.name!r}",
                              got=str(tuple(gi.shape)), expected="static dims, or data that fixes them",
                              hint="export the model with static C/H/W, or run evaluate/sweep on data of that size")
    return gi.name, tuple(dims), graph.fixed_batch or 1


def trtexec_commands(onnx_path: Path, plan: PrecisionPlan, qdq_path: Path | None, input_name: str,
                     input_shape: tuple, batch: int = 1) -> list[str]:
    """``trtexec`` lines for the plan.

    Strongly typed (TensorRT 10/11) the Q/DQ nodes and Casts carry the precisions. Weakly typed
    (8.x/9.x) Casts pin nothing and ``--fp16`` lets any layer run in FP16, so the plan's FP16/FP32
    layers are pinned with ``--precisionConstraints=obey --layerPrecisions=...`` and ``--fp16`` is
    given only when the plan has FP16 layers. ``--noTF32`` keeps FP32 layers in FP32.
    """
    shape = "x".join(str(d) for d in (batch, *input_shape))
    common = f"--shapes={input_name}:{shape} --saveEngine=model.engine"
    has_fp16 = plan.default == "fp16" or bool(plan.nodes("fp16"))
    tf32 = " --noTF32" if plan.default == "fp32" or plan.nodes("fp32") else ""
    pins = [(n, lp.precision) for n, lp in plan.layers.items() if lp.precision in ("fp16", "fp32")]
    obey = ""
    if pins:
        spec = ",".join(f"{n}:{p}" for n, p in pins)
        obey = f" --precisionConstraints=obey {shlex.quote('--layerPrecisions=' + spec)}"
    fp16 = " --fp16" if has_fp16 else ""
    if qdq_path is not None:
        int8 = " --int8" if plan.nodes("int8") else ""
        return [f"trtexec --onnx={qdq_path} --stronglyTyped{tf32} {common}   # TensorRT 10/11: precisions from Q/DQ and Casts",
                f"trtexec --onnx={qdq_path}{int8}{fp16}{tf32}{obey} {common}   # TensorRT 8.x/9.x (weakly typed)"]
    return [f"trtexec --onnx={onnx_path}{fp16}{tf32}{obey} {common}"]


def _check_ranges_model(ranges: RangeSet, graph: OnnxGraph, source: str) -> None:
    fp = ranges.model_fingerprint
    if fp and fp != graph.fingerprint():
        raise PlanError("ranges are from another model", subject=f"--ranges {source}",
                        got=f"model fingerprint {fp[:12]}", expected=graph.fingerprint()[:12],
                        hint="calibrate this model (same export) or pass the matching ranges")


def build_engine(*, precision: str, backend: str, out: str | Path, model: str = DEFAULT_MODEL,
                 onnx: str | None = None, weights: str | None = None, preset: str | None = None,
                 ranges_path: str | None = None,
                 device: str = "auto", torch_precision: str | None = None, smoke: bool = True,
                 trt_mode: str = "explicit") -> BuildResult:
    out = Path(out)
    check_output_dir(out)
    rm = resolve_model(model, onnx=onnx, weights=weights, preset=preset)
    graph = rm.graph
    check_model_input(graph, image=rm.preprocess() if smoke else None)
    plan = resolve_plan(precision, graph)
    ranges = None
    if ranges_path is not None:
        ranges, _, _ = load_ranges(ranges_path)
        _check_ranges_model(ranges, graph, ranges_path)
    t0 = time.perf_counter()
    # TensorRT writes its engine and timing cache into `out`; other backends write nothing there
    created = not out.exists()
    if backend == "tensorrt":
        out.mkdir(exist_ok=True)
    try:
        engine = build(backend, graph, plan, ranges, torch_precision=torch_precision, device=device,
                       out_dir=out if backend == "tensorrt" else None, trt_mode=trt_mode)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    build_s = time.perf_counter() - t0
    model_qdq = None
    if plan.nodes("int8") or plan.nodes("fp16"):
        model_qdq, _ = build_qdq_model(graph, ranges if ranges is not None else RangeSet({}, "none"), plan)
    smoke_numbers = {}
    if smoke:
        src = open_source("imagenet_sample", preprocess=rm.preprocess())
        batches = list(src.batches(32, progress=False))
        x = np.concatenate([b.images for b in batches])
        y = np.concatenate([b.labels for b in batches])
        try:
            engine.run(x[:2])
            t = time.perf_counter()
            logits = engine.run(x)
        except QuantError:
            raise
        except Exception as err:  # noqa: BLE001  (the engine's runtime refused the bundled images)
            raise ModelError("the smoke check cannot run the built engine", subject=str(rm.onnx_path),
                             got=f"{type(err).__name__}: {err}"[:300],
                             hint="nothing was written; check the model's input, or pass --no-smoke") from err
        smoke_numbers = {"images": int(len(x)), "top1": float((logits.argmax(1) == y).mean()),
                         "batch_latency_ms": 1e3 * (time.perf_counter() - t)}
    qdq_path = out / "model_qdq.onnx" if model_qdq is not None else None
    cmds = trtexec_commands(rm.onnx_path, plan, qdq_path, *trtexec_input(graph, x.shape if smoke else None))
    doc = {"engine": asdict(engine.info), "plan": {"name": plan.name, "counts": plan.counts(), "default": plan.default},
           "model": {"name": rm.name, "onnx": str(rm.onnx_path), "fingerprint": graph.fingerprint()},
           "ranges": ranges_path, "build_s": build_s, "smoke": smoke_numbers, "trtexec": cmds}
    # everything that can fail has run (the smoke check included): only now create the directory and
    # write the set together (the CLI checked the paths and their kinds before any work)
    out.mkdir(exist_ok=True)
    outputs = OutputSet(force=True)
    files = {}
    with outputs:
        if model_qdq is not None:
            outputs.add(qdq_path, flag="--out")
            outputs.stage(qdq_path, model_qdq.SerializeToString())
            files["model_qdq.onnx"] = str(qdq_path)
        for name, text in (("plan.json", plan.to_json()), ("engine.json", json_text(doc))):
            outputs.add(out / name, flag="--out")
            outputs.stage(out / name, text)
            files[name] = str(out / name)
        outputs.commit()
    return BuildResult(engine=engine, plan=plan, out=out, files=files, trtexec=cmds, smoke=smoke_numbers)
