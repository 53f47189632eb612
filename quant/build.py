"""``build_engine()``: model + ranges + precision plan -> an engine on a backend, plus TensorRT artifacts.

Writes into ``out``: ``model_qdq.onnx`` (the TensorRT 10/11 explicit-quantization model, when the
plan has INT8 or FP16 layers), ``plan.json``, and ``engine.json`` (engine description, smoke-test
numbers on the bundled images, and the equivalent ``trtexec`` command lines).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ..core.defaults import DEFAULT_MODEL
from ..core.errors import ModelError, PlanError, QuantError
from ..core.fileio import OutputSet, check_output_dir, json_text
from ..core.types import RangeSet
from ..datasets import open_source
from .artifacts.plan import PrecisionPlan, resolve_plan
from .artifacts.qdq import build_qdq_model
from .artifacts.ranges import load_ranges
from .artifacts.trtexec import trtexec_commands, trtexec_shapes
from .engines.base import Engine
from .engines.registry import build
from .graph.inputs import check_model_input
from .graph.models import resolve_model
from .graph.onnx_graph import OnnxGraph


log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BuildResult:
    engine: Engine
    plan: PrecisionPlan
    out: Path
    files: dict = field(default_factory=dict)
    trtexec: list = field(default_factory=list)
    smoke: dict = field(default_factory=dict)


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
    if smoke and len(graph.inputs) > 1:
        log.info("%s has %d inputs: no smoke check on the bundled images (they feed one image input)",
                 rm.name, len(graph.inputs))
        smoke = False
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
    cmds = trtexec_commands(rm.onnx_path, plan, qdq_path, trtexec_shapes(graph, x if smoke else None))
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
