"""``evaluate()``: build every requested engine, measure accuracy and speed, write the report.

The results JSON (``results.json`` in ``out``) is the source of truth. It is rewritten atomically
after every configuration, so an interrupted run keeps what it finished and ``resume=True`` skips
configurations already measured with the same settings. A configuration whose build fails is
recorded as failed with its reason; the others are still evaluated.
"""

from __future__ import annotations
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ..calibrators.auto import METHODS

from ..core import metrics
from ..core.cache import TrtCache, ranges_to_json
from ..core.errors import BackendUnavailable, ConfigError, DataError, QuantError
from ..core.fileio import OutputSet, atomic_write_text, check_output_dir, json_format
from ..core.records import (
    RESULTS_FORMAT,
    CalibrationInfo,
    DataRef,
    Drop,
    EngineResult,
    Evaluation,
    Latency,
    LayerChoice,
    ModelRef,
    OutputFidelity,
    PlanSummary,
    Recommendation,
    Throughput,
    document_text,
    parse_document,
)
from ..core.runtime import cpu_int8_instructions, installed_trt_version, resolve_device
from ..core.targets import Target, parse_target
from ..core.types import Inputs, RangeSet, resize_rows
from ..datasets.sources import open_capped
from ..reports import render
from . import distributed
from .artifacts.plan import resolve_plan
from .artifacts.qdq import build_qdq_model
from .artifacts.trtexec import trtexec_commands, trtexec_shapes
from .engines import registry
from .engines.torch import TORCH_DTYPES
from .engines.ort_int8 import lower_for_onnxruntime
from .graph.inputs import check_input_shape, check_model_input, check_preset_fits, data_inputs
from .graph.onnx_graph import run_batched
from .recover import RECOVERY_STEPS, RecoverySettings, first_images, parse_recovery, recover
from .settings import DEFAULT_MAX_IMAGES, CalibrationConfig, EvalSettings
from .auto_method import AutoPass
from .statistics import cache_header, ranges_from_stats, statistics

log = logging.getLogger(__name__)

PARTIAL_NAME = "results.partial.json"
"""Progress of a run (rewritten after every configuration; --resume reads it). results.json and the
reports are moved into place together only when the run completes, so an interrupted run never
replaces a complete earlier set."""


def results_outputs() -> dict:
    """The files evaluate writes into ``--out`` and their same-kind tests."""
    return {"results.json": json_format(RESULTS_FORMAT), PARTIAL_NAME: json_format(RESULTS_FORMAT)}


FLOAT_CONFIGS = tuple(TORCH_DTYPES)     # fp32 tf32 fp16 bf16: the engine precisions a config names
CONFIG_NAMES = FLOAT_CONFIGS + tuple(f"int8:{m}" for m in METHODS)     # int8:<every --method, auto included>
RECOVERED_CONFIGS = (f"int8:METHOD+STEP[+STEP...] (accuracy recovery: {', '.join(RECOVERY_STEPS)}; "
                     "e.g. int8:mse+bias)")


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    precision: str             # fp32|tf32|fp16|bf16 (non-INT8 execution) or "plan"
    method: str | None = None  # INT8 range method
    plan_path: str | None = None
    recover: tuple[str, ...] = ()   # accuracy-recovery steps (quant/recover.py), in the order they apply


def parse_configs(text: str) -> list[ConfigSpec]:
    specs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        if item in FLOAT_CONFIGS:
            specs.append(ConfigSpec(item, item))
        elif item.startswith("int8:") and item[5:].partition("+")[0] in METHODS:
            method, plus, rest = item[5:].partition("+")
            steps = parse_recovery(rest, flag=f"--configs {item}") if plus else ()
            name = f"int8:{method}" + "".join("+" + s for s in steps)      # one name per recovery, whatever the order
            specs.append(ConfigSpec(name, "fp32", method=method, recover=steps))
        elif item == "int8":
            specs.append(ConfigSpec("int8:entropy", "fp32", method="entropy"))
        elif item.endswith(".json"):
            if not Path(item).is_file():
                raise ConfigError("plan file not found", subject=f"--configs {item}")
            specs.append(ConfigSpec(Path(item).stem, "plan", method="entropy", plan_path=item))
        else:
            raise ConfigError("unknown configuration", subject="--configs", got=repr(item),
                              expected="one of " + ", ".join(CONFIG_NAMES) + ", " + RECOVERED_CONFIGS
                              + ", or a PLAN.json")
    if not specs:
        raise ConfigError("no configurations", subject="--configs", expected="e.g. fp32,fp16,int8:entropy")
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError("configuration listed twice", subject="--configs", got=text)
    return specs


def environment(device: str, processes: int = 1) -> dict:
    import onnx
    import onnxruntime

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
           "device": device, "cpu": platform.processor() or platform.machine(), "argv": sys.argv,
           "processes": processes, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    env["tensorrt"] = installed_trt_version()

    env["cpu_int8_instructions"] = cpu_int8_instructions()
    return env


def _timed(engine, x_np: np.ndarray, iters: int) -> np.ndarray:
    """Seconds per call; GPU engines are timed with CUDA events on device tensors."""
    if (hasattr(engine, "run_tensor") and getattr(engine.info, "device", "cpu").startswith("cuda")
            and not isinstance(x_np, Inputs)):
        x = torch.from_numpy(x_np).cuda()
        engine.run_tensor(x)
        torch.cuda.synchronize()
        out = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            engine.run_tensor(x)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        return np.array(out)
    engine.run(x_np)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        engine.run(x_np)
        out.append(time.perf_counter() - t)
    return np.array(out)


def _config_dir_name(config: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in config)


def _artifacts(out: Path, spec_name: str, graph, plan, trt_plan, ranges, trt_version, *, recovered: bool = False) -> dict:
    """What TensorRT needs to build this configuration, for ``OUT/<config>/`` (the trtexec lines name these
    files; they are written with the rest of the outputs at the end). Also the bytes of the real INT8
    artifact (integer weights), if the configuration has INT8 layers. A ``recovered`` model is written too
    (``model.onnx``, what TensorRT builds from), with its ranges (``ranges.json``, the recovery in its meta)."""

    d = out / _config_dir_name(spec_name)
    blobs: dict[Path, bytes | str] = {d / "plan.json": trt_plan.to_json()}
    files, int8_bytes = {"plan": d / "plan.json"}, None
    if recovered:
        blobs[d / "model.onnx"] = graph.model.SerializeToString()
        blobs[d / "ranges.json"] = ranges_to_json(ranges)
        files.update(onnx=d / "model.onnx", ranges=d / "ranges.json")
    if trt_plan.layers or trt_plan.default == "fp16":
        qdq, _ = build_qdq_model(graph, ranges if ranges is not None else RangeSet({}, "none"), trt_plan)
        blobs[d / "model_qdq.onnx"] = qdq.SerializeToString()
        files["qdq"] = d / "model_qdq.onnx"
        if trt_plan.nodes("int8"):
            # the deployable INT8 model: integer weights (what an INT8 engine stores), not fake-quant floats
            int8_bytes = lower_for_onnxruntime(qdq, "s8").model.ByteSize()
    if ranges is not None and plan.nodes("int8"):
        version, algo = cache_header(CalibrationConfig(trt_version=trt_version))
        blobs[d / "calib.bin"] = TrtCache.from_ranges(ranges, algorithm=algo, version=version).to_text()
        files["cache"] = d / "calib.bin"
    return {"files": {k: str(v) for k, v in files.items()}, "int8_bytes": int8_bytes, "blobs": blobs}


def _engine_bytes(engine) -> int | None:
    """Bytes of the engine's model: the ONNX given to ORT, the torch constants, TensorRT's plan."""
    if hasattr(engine, "model_bytes"):
        return int(engine.model_bytes)
    if hasattr(engine, "executor"):
        return int(sum(v.numel() * v.element_size() for v in engine.executor.consts.values()))
    return None


@dataclass
class EvaluationResult:
    doc: Evaluation
    out: Path
    files: dict = field(default_factory=dict)


def _load_previous(path: Path, key: dict) -> dict[str, EngineResult]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        log.warning("--resume: ignoring unreadable %s", path)
        return {}
    if not isinstance(obj, dict) or obj.get("format") != RESULTS_FORMAT or not isinstance(obj.get("results"), list):
        log.warning("--resume: %s is not a trtquant results file: starting over", path)
        return {}
    if obj.get("settings_key") != key:
        log.warning("%s was measured with other settings: starting over", path)
        return {}
    try:
        doc = parse_document(Evaluation, obj, path)
    except QuantError as err:
        log.warning("--resume: ignoring malformed %s (%s): starting over", path, err)
        return {}
    return {r.config: r for r in doc.results if r.ok}


def _plan_summary(plan, with_layers: bool) -> PlanSummary:
    layers = tuple(LayerChoice(lp.node, lp.precision, lp.reason) for lp in plan.layers.values()) if with_layers else ()
    return PlanSummary(plan.name, plan.counts(), plan.default, layers)


def evaluate(settings: EvalSettings, out: str | Path, *, resume: bool = False, progress: bool = True,
             recovery: RecoverySettings | None = None) -> EvaluationResult:
    """Every configuration of ``settings.configs``; an ``int8:METHOD+STEPS`` one is the model recovered by those
    steps (``recovery``'s settings, :func:`.recover.recover`) from the calibration subset, calibrated again,
    built and measured like any other, its model, ranges and Q/DQ model written into ``OUT/<config>/``."""

    specs = parse_configs(settings.configs)
    recovery = recovery or RecoverySettings()
    out = Path(out)
    check_output_dir(out)
    results_path = out / "results.json"
    partial_path = out / PARTIAL_NAME
    key = settings.key()
    if any(s.recover for s in specs):        # the recovery settings make two measurements comparable too
        key = {**key, "recovery": {k: v for k, v in asdict(recovery).items() if k != "steps"}}
    previous = {}
    if resume:
        previous = _load_previous(partial_path, key) or _load_previous(results_path, key)

    user_metric = metrics.load_user_metric(settings.metric) if settings.metric else None
    ctx = distributed.join(settings.device)     # several processes under torchrun: each takes a shard of the images
    progress = progress and ctx.is_root
    device = resolve_device(settings.device)
    rm = settings.resolve()
    graph = rm.graph
    preprocess = rm.preprocess()
    def subset(limit: int | None, seed: int):
        return open_capped(settings.data, preprocess=preprocess, limit=limit, seed=seed, data_dir=settings.data_dir,
                           inputs=data_inputs(graph))

    settings = replace(settings, batch_size=check_model_input(graph, batch_size=settings.batch_size))
    fixed = graph.fixed_batch
    source = subset(settings.num_images if settings.num_images is not None else DEFAULT_MAX_IMAGES, settings.seed)
    check_preset_fits(graph, rm.preset, source)
    t_load = time.perf_counter()
    shard = distributed.load_images(ctx, source, settings.batch_size, batch_size=settings.batch_size,
                                    progress=progress, pixels=True)
    load_s = time.perf_counter() - t_load
    pixels = shard.images                         # this rank's rows shard.lo..hi of every image (all of them alone)
    check_input_shape(graph, pixels[:1], source.name, hint="evaluate data of the model's input size")
    labels = shard.labels
    has_labels = labels is not None and bool((labels >= 0).any())
    if has_labels and getattr(source, "label_space", None) == "folder":
        log.warning("%s: class folders are not ImageNet WordNet ids, so their labels are not the model's classes: "
                    "measuring agreement with FP32 instead of top-1 (add a labels.csv class map to score top-1)",
                    source.name)
        has_labels = False
    num_classes = graph_num_classes(graph)
    if has_labels and num_classes and int(labels.max()) >= num_classes:
        bad = labels[labels >= num_classes]
        raise DataError("labels outside the model's classes", subject=f"--data {settings.data}",
                        got=f"{len(bad)} label(s) from {int(bad.min())} to {int(bad.max())}",
                        expected=f"class indices 0..{num_classes - 1} (the model has {num_classes} outputs)",
                        hint="labels must be indices into the model's output")

    def images(lo: int, hi: int) -> np.ndarray:
        uint8 = not isinstance(pixels, Inputs) and pixels.dtype == np.uint8
        return preprocess.normalize(pixels[lo:hi]) if uint8 else pixels[lo:hi]

    # a CUDA torch engine of a one-output model: the batch goes to the GPU as uint8 pixels (4x fewer bytes) and
    # is normalised there (bit-identical to the NumPy path), not on the host once per configuration
    on_device = (settings.backend == "torch" and device.type == "cuda" and not isinstance(pixels, Inputs)
                 and pixels.dtype == np.uint8 and fixed is None and len(graph.outputs) == 1 and user_metric is None)

    def device_images(lo: int, hi: int) -> torch.Tensor:
        return preprocess.normalize_torch(torch.from_numpy(pixels[lo:hi]).to(device))

    head = distributed.head_rows(ctx, shard, pixels, settings.batch_size)     # the first batch: what rank 0 times

    def first(k: int) -> np.ndarray:
        uint8 = not isinstance(head, Inputs) and head.dtype == np.uint8
        return preprocess.normalize(head[:k]) if uint8 else head[:k]

    doc = Evaluation(
        settings=asdict(settings), settings_key=key, environment=environment(str(device), ctx.world_size),
        model=ModelRef(rm.name, graph.fingerprint(), onnx=str(rm.onnx_path)),
        data=DataRef(source.name, source.fingerprint(), shard.count, has_labels, shard.skipped),
        metric="top-1" if has_labels else "agreement with FP32 top-1", results=(), timings={"load_images_s": load_s})

    # ranges for every INT8 method from one statistics pass over a seeded calibration subset
    stats = None
    if any(s.method for s in specs):
        calib_cfg = CalibrationConfig(**settings.model_spec(), data=settings.data, data_dir=settings.data_dir,
                                      num_images=settings.calib_images, seed=settings.seed + 1, device=settings.device)
        calib_src = subset(settings.calib_images, settings.seed + 1)

        def calibrate_once():                   # on rank 0 only (its histograms' bin width is set by its first batch)
            t = time.perf_counter()
            return statistics(graph, calib_src, calib_cfg, device, progress=progress), time.perf_counter() - t
        stats, calib_s = distributed.on_root(ctx, calibrate_once)
        doc = replace(doc, calibration=CalibrationInfo(stats.num_images, stats.data_fingerprint, calib_s,
                                                       len(set(calib_src.ids) & set(source.ids))))
    calib_stats = {graph.fingerprint(): stats}          # statistics of each (recovered) model, by fingerprint

    def stats_of(g):
        if g.fingerprint() not in calib_stats:
            calib_stats[g.fingerprint()] = statistics(g, calib_src, calib_cfg, device, progress=progress)
        return calib_stats[g.fingerprint()]

    def recovered(spec: ConfigSpec):
        """The model recovered for ``spec`` and the ranges shipped with it (:meth:`.recover.Recovered.shipped_ranges`)."""
        cfg = CalibrationConfig(method=spec.method)
        steps = replace(recovery, steps=spec.recover)
        rec = recover(graph, steps, ranges_of=lambda g: ranges_from_stats(
                          stats_of(g), cfg, auto_pass=AutoPass(g, calib_src, device, progress=progress)),
                      images=lambda: first_images(calib_src, steps.images_needed, fixed or settings.batch_size),
                      device=device, progress=progress)
        return rec.graph, rec.shipped_ranges(lambda g: ranges_from_stats(
            stats_of(g), cfg, auto_pass=AutoPass(g, calib_src, device, progress=progress)))

    rows: list[EngineResult] = []

    def save():
        if not ctx.is_root:
            return
        out.mkdir(exist_ok=True)
        atomic_write_text(partial_path, document_text(doc.with_results(rows)))

    reference_outputs: tuple[np.ndarray, ...] = ()     # this rank's FP32 outputs
    reference_all: tuple[np.ndarray, ...] | None = None  # every image's, on rank 0 (a user metric reads them)
    reference_scores = None
    # every output when the model has several or a user metric reads them; else the first (a CUDA graph's)
    every_output = len(graph.outputs) > 1 or user_metric is not None
    artifact_blobs: dict[Path, bytes | str] = {}
    ordered = sorted(specs, key=lambda s: s.name != "fp32")   # FP32 first: every other row compares to it
    if not any(s.name == "fp32" for s in specs):
        ordered.insert(0, ConfigSpec("fp32", "fp32"))
    for spec in ordered:
        if spec.name in previous and spec.name != "fp32" and all(
                Path(p).is_file() for p in previous[spec.name].artifacts.values()):
            rows.append(previous[spec.name])
            save()
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            ranges = None
            if spec.precision in ("tf32", "bf16") and settings.backend != "torch":
                raise BackendUnavailable(f"{spec.precision.upper()} is a torch-backend precision",
                                         subject=f"--configs {spec.name} --backend {settings.backend}",
                                         hint="use --backend torch for TF32/BF16")
            if spec.plan_path:
                plan = resolve_plan(spec.plan_path, graph)
            elif spec.method:
                plan = resolve_plan("int8", graph)
            else:
                plan = resolve_plan("fp16" if spec.precision == "fp16" and settings.backend != "torch" else "fp32", graph)
            model = graph                                # the recovered model for an int8:METHOD+STEPS config
            if spec.recover:
                model, ranges = recovered(spec)
            elif plan.nodes("int8"):
                ranges = ranges_from_stats(stats, CalibrationConfig(method=spec.method or "entropy"),
                                           auto_pass=AutoPass(graph, calib_src, device, progress=progress))
            # what TensorRT would build for this configuration (the torch backend runs FP16 by dtype instead)
            trt_plan = resolve_plan("fp16", graph) if spec.precision == "fp16" and not spec.method else plan
            tp = spec.precision if spec.precision in FLOAT_CONFIGS and settings.backend == "torch" else None

            def build_and_run():                # every rank its shard; an error on any rank is raised by all
                engine = registry.build(settings.backend, model, plan, ranges, torch_precision=tp,
                                        device=settings.device, example=head[:1], compile=settings.compile)
                times["build_s"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                if on_device and hasattr(engine, "run_tensor"):     # uint8 to the GPU, normalised there
                    # every call a full batch (the tail padded, its outputs dropped): one input shape, the
                    # timing's, so the engine captures one CUDA graph and cuDNN meets no new shape for the tail
                    outputs = run_batched(lambda c: (engine.run_tensor(c).float().cpu().numpy(),), device_images,
                                          len(pixels), settings.batch_size, settings.batch_size) \
                        if len(pixels) else None
                else:
                    outputs = run_batched(engine.run_all if every_output else (lambda c: (engine.run(c),)), images,
                                          len(pixels), settings.batch_size, fixed) if len(pixels) else None
                times["accuracy_pass_s"] = time.perf_counter() - t1
                return engine, outputs
            engine, outputs = distributed.together(ctx, build_and_run)
            t2 = time.perf_counter()
            if spec.name == "fp32":
                reference_outputs = outputs
            # per-image scores of every rank, in image order: every accuracy and fidelity number below is theirs
            scores = distributed.gather_scores(ctx, lambda: None if outputs is None else metrics.image_scores(
                reference_outputs, outputs, shard.local_labels if has_labels else None))
            if spec.name == "fp32":
                reference_scores = scores
            user_value = None
            if user_metric:                     # once, on rank 0, with every image's outputs
                every = distributed.gather_outputs(ctx, outputs, len(graph.outputs))
                if spec.name == "fp32":
                    reference_all = every
                user_value = distributed.on_root(ctx, lambda: metrics.call_user_metric(
                    user_metric, settings.metric, reference_all, every, labels if has_labels else None))
            if not ctx.is_root:                 # rank 0 times the engine and writes the row
                continue
            lat_batch = fixed or 1                     # batch-1 latency, or the model's fixed batch
            lat = _timed(engine, resize_rows(first(lat_batch), lat_batch), settings.latency_iters)
            full = resize_rows(first(settings.batch_size), settings.batch_size)  # tiled to a full batch
            thr = _timed(engine, full, max(3, settings.latency_iters // 10))
            times["timing_s"] = time.perf_counter() - t2
            if getattr(engine, "compile_s", 0.0):     # --compile: spent inside the accuracy pass and the timing
                times["compile_s"] = float(engine.compile_s)
            art = _artifacts(out, spec.name, model, plan, trt_plan, ranges, getattr(settings, "trt_version", None),
                             recovered=bool(spec.recover))
            artifact_blobs.update(art.pop("blobs"))
            fidelity = tuple(OutputFidelity(name, **metrics.fidelity_from_terms(terms))
                             for name, terms in zip(graph.outputs, scores.fidelity))
            ref_ok = reference_scores.top1 if has_labels else np.ones(len(scores), bool)
            cand_ok = scores.top1 if has_labels else scores.agreement
            d = metrics.paired_bootstrap_drop(ref_ok, cand_ok, samples=settings.bootstrap, seed=settings.seed)
            row = EngineResult(
                spec.name, settings.backend, **times, engine=engine.info,
                plan=_plan_summary(plan, with_layers=bool(spec.plan_path)),
                latency_ms=Latency.from_seconds(lat, batch=lat_batch),
                throughput=Throughput(float(settings.batch_size / np.median(thr)), settings.batch_size),
                engine_bytes=art["int8_bytes"] if art["int8_bytes"] is not None else _engine_bytes(engine),
                artifacts=art["files"],
                peak_device_mb=(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
                trtexec=tuple(trtexec_commands(Path(art["files"].get("onnx", rm.onnx_path)), trt_plan,
                                               Path(art["files"]["qdq"]) if "qdq" in art["files"] else None,
                                               trtexec_shapes(graph, head))),
                top1=float(scores.top1.mean()) if has_labels else None,
                top5=float(scores.top5.mean()) if has_labels else None,
                agreement=float(scores.agreement.mean()), sqnr_db=fidelity[0].sqnr_db,
                cosine=fidelity[0].cosine, drop_pp=Drop(float(d.points), (float(d.lo), float(d.hi)), bool(d.within_noise)),
                outputs=fidelity, metric=user_value)
        except (QuantError, RuntimeError) as err:
            if spec.name == "fp32" or isinstance(err, metrics.MetricError):   # the user's metric: their input
                raise
            row = EngineResult(spec.name, settings.backend, status="failed", reason=str(err), **times)
            log.warning("%s failed: %s", spec.name, err)
        rows.append(row)
        save()
    def finish():                               # rank 0 (every rank gets its document, or raises its error)
        final = doc.with_results(rows)
        final = replace(final, recommendation=recommend(final, parse_target(settings.target)))

        # the complete set, moved into place together; the progress file goes only after that
        out.mkdir(exist_ok=True)
        with OutputSet(force=True) as outputs:
            names = {"report.md": render.markdown(final), "report.html": render.html_report(final),
                     "results.json": document_text(final)}
            for name, text in names.items():
                outputs.add(out / name, flag="--out")
                outputs.stage(out / name, text)
            for path, data in artifact_blobs.items():
                path.parent.mkdir(exist_ok=True)
                outputs.add(path, flag="--out")
                outputs.stage(path, data)
            outputs.commit()
        try:
            partial_path.unlink()
        except FileNotFoundError:
            pass
        return final, {name: str(out / name) for name in names}
    doc, files = distributed.on_root(ctx, finish)
    return EvaluationResult(doc=doc, out=out, files=files if ctx.is_root else {})


def graph_num_classes(graph) -> int | None:
    """The model's number of classes (last dim of its first output), when the ONNX declares it."""
    g = graph.model.graph
    for o in g.output[:1]:
        dims = o.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0:
            return int(dims[-1].dim_value)
    return None


def recommend(doc: Evaluation, target: Target) -> Recommendation:
    """The fastest *measured* engine within the target. A simulated engine's latency is not a measurement:
    it never wins the speed ranking; when one is within the target the recommendation says what could
    not be measured."""
    ok = doc.ok
    fp32 = next((r for r in ok if r.config == "fp32"), None)
    fp32_acc = doc.accuracy(fp32) if fp32 else 1.0
    drop_kind = target.kind in ("abs", "rel")
    allowed = target.allowed_drop(fp32_acc) if drop_kind else None

    def meets(r: EngineResult) -> bool:
        """The row's value of the target's metric, judged by the one rule (:meth:`Target.met`)."""
        value = {"sqnr": r.sqnr_db, "cosine": r.cosine if r.cosine is not None else 0.0, "agree": r.agreement}.get(
            target.kind, fp32_acc - r.drop_pp.points / 100)
        return target.met(1.0 if target.kind == "agree" else fp32_acc, value)   # FP32 agrees with itself

    within = [r for r in ok if meets(r)]
    measured = [r for r in within if not r.simulated]
    simulated = [r.config for r in within if r.simulated]
    unmeasured = (f"; {', '.join(simulated)} also meet the target but ran simulated (no real INT8 engine here, e.g. "
                  f"TensorRT absent): their speed is not measured, so they are not ranked" if simulated else "")
    wanted = (f"loses at most {allowed:g} pp of {doc.metric}" if drop_kind else f"meets the target: {target.describe()}")
    if not measured:
        return Recommendation(None, target.text, f"no measured engine {wanted}" + unmeasured, allowed)
    best = min(measured, key=lambda r: r.latency_ms.p50)
    noisy = drop_kind and best.drop_pp.ci95[1] > allowed
    how = (f"losing at most {allowed:g} pp ({best.drop_pp.points:+.2f} pp)" if drop_kind else
           f"meeting {target.describe()} (SQNR {best.sqnr_db:.1f} dB, cosine "
           f"{best.cosine if best.cosine is not None else float('nan'):.5f}, agreement {best.agreement * 100:.1f}%)")
    return Recommendation(best.config, target.text,
                          f"fastest measured engine at batch {best.latency_ms.batch} ({best.latency_ms.p50:.2f} ms p50) among engines {how}"
                          + ("; the 95% interval reaches past the target: evaluate on more images to be sure" if noisy else "")
                          + unmeasured, allowed)
