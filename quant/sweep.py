"""Mixed-precision planner: which layers must stay FP16 for INT8 to keep accuracy, at the least cost.

1. **Target** (``parse_target``): ``0.5%`` = at most 0.5 pp of top-1 lost vs FP32; ``0.5%rel`` = at
   most 0.5 % of FP32's top-1, relative; ``agree:99%`` = at least 99 % top-1 agreement with FP32 (for
   unlabelled data; labelled targets fall back to it without labels, and say so).
2. **Sensitivity** (``QuantSim``): INT8 simulated by fake quantization with the calibrated ranges, on
   the FP32 graph, with TensorRT's placement (layer inputs per-tensor, weights per-channel, residual
   inputs). Two views per quantizable layer, on a proxy subset, reusing one FP32 pass: *alone INT8*
   (output SQNR when only that layer is INT8) and *regain* (SQNR gained when only that layer stays
   FP16 in an otherwise INT8 model). The regain view ranks the search.
3. **Search** (``greedy_search``, a pure function of an evaluation oracle): add layers to FP16 in
   ranking order, verifying the whole mixed model on the evaluation images after each step, until
   the target holds; then prune every FP16 layer whose return to INT8 keeps the target. Every step is
   kept, and the cheapest plan that meets the target is the result; a time budget returns the best
   plan found so far, marked partial.
4. **Objective** (``--objective``): ``latency`` (default) costs a plan by its latency (``planner.latency``:
   TensorRT's per-layer times where TensorRT runs, else a roofline of the target GPU; labelled estimated): the ranking is SQNR regained per
   microsecond added, pruning returns the dearest FP16 layers to INT8 first, and the record keeps the
   Pareto front of accuracy vs estimated latency of every evaluated plan. ``layers`` costs a plan by its
   number of FP16 layers (ranking by regain alone).

During the search FP16 layers are simulated in FP32 (FP16's error is orders of magnitude below
INT8's); the chosen plan is then rebuilt as a real engine and measured (``validate``).
"""

from __future__ import annotations
import time
from pathlib import Path

import torch

from ..core import metrics
from ..core.cache import TrtCache
from ..core.errors import ConfigError
from ..core.fileio import OutputSet, check_output_dir
from ..core.gpus import resolve_gpu
from ..core.records import (
    DataRef,
    FrontPoint,
    LatencyEstimate,
    ModelRef,
    SearchRecord,
    SearchStep,
    SensitivityRow,
    Sweep,
    TargetRef,
    Validation,
    document_text,
)
from ..core.runtime import installed_trt_version, resolve_device
from ..core.targets import FIDELITY_KINDS, Target, parse_target
from ..core.types import resize_rows
from ..datasets.sources import open_capped
from ..reports.sweep_render import sweep_report_texts
from . import distributed
from .artifacts.plan import LayerPrecision, PrecisionPlan, preset_plan
from .artifacts.qdq import build_qdq_model
from .artifacts.ranges import load_ranges
from .artifacts.trtexec import layer_precisions_flag, trtexec_commands, trtexec_shapes
from .engines import registry
from .graph.inputs import check_input_shape, check_preset_fits, data_inputs
from .graph.onnx_graph import run_batched
from .planner.latency import LayerTimesModel, RooflineModel, latency_order
from .planner.search import Step, greedy_search, pareto_front, plan_from_search
from .graph.compiled import compile_enabled
from .planner.simulate import QuantSim
from .recover import RecoverySettings, describe, first_images, recover
from .settings import DEFAULT_MAX_IMAGES, CalibrationConfig, SweepSettings
from .auto_method import AutoPass
from .statistics import cache_header, ranges_from_stats, statistics


def check_latency_model(settings: SweepSettings, device: torch.device) -> None:
    """``--latency-model tensorrt`` where it cannot run: refused before any work."""
    has_trt = installed_trt_version() is not None
    if settings.latency_model == "tensorrt" and (device.type != "cuda" or not has_trt):
        raise ConfigError("TensorRT's layer times need TensorRT and a CUDA GPU", subject="--latency-model tensorrt",
                          got=f"device {device}, TensorRT {'installed' if has_trt else 'not installed'}",
                          hint="use --latency-model roofline (an estimate for --target-gpu)")


def latency_model(settings: SweepSettings, graph, ranges, x, device: torch.device, ctx=distributed.SINGLE):
    """``(model, kind, gpu, why)``: the latency model of ``--latency-model``: TensorRT's measured per-layer times
    (``tensorrt``; ``auto`` where TensorRT is installed and the device is a CUDA GPU), else the roofline of
    ``--target-gpu``."""
    has_trt = installed_trt_version() is not None
    use_trt = settings.latency_model == "tensorrt" or (settings.latency_model == "auto" and has_trt
                                                       and device.type == "cuda")
    if not use_trt:
        gpu, why = resolve_gpu(settings.target_gpu, torch.cuda.get_device_name(device) if device.type == "cuda" else None)
        return RooflineModel(graph, x[:1], gpu, batch=settings.latency_batch), "roofline", gpu.key, why
    check_latency_model(settings, device)
    example = resize_rows(x[:1], settings.latency_batch)
    times = distributed.on_root(ctx, lambda: {         # rank 0's times, for every rank
        p: registry.build("tensorrt", graph, preset_plan(p, graph), ranges, device=settings.device,
                          example=example).layer_times(example) for p in ("int8", "fp16")})
    local = torch.cuda.get_device_name(device)
    return (LayerTimesModel(graph, times["int8"], times["fp16"], gpu=local, batch=settings.latency_batch),
            "tensorrt-layers", local, "measured here with TensorRT's profiler")


def sweep(settings: SweepSettings, out, *, progress: bool = True, recovery: RecoverySettings | None = None) -> Sweep:
    """Sensitivity pass + search + outputs + validation; returns the sweep record (also ``sweep.json``). With
    ``recovery`` steps the base is the recovered model (:func:`.recover.recover`, with its shipped ranges), written
    to ``OUT/model.onnx``: the plan, cache and Q/DQ model are its."""
    t_start = time.perf_counter()
    recovering = recovery is not None and bool(recovery.steps)
    if recovering and settings.ranges:
        raise ConfigError("--recover recalibrates the recovered model", subject="--recover with --ranges",
                          hint="drop --ranges: the ranges are measured on the recovered model (CLE changes them)")
    target = parse_target(settings.target)
    out = Path(out)
    check_output_dir(out)
    user_metric = metrics.load_user_metric(settings.metric) if settings.metric else None   # before any work
    if user_metric is not None and target.kind not in ("abs", "rel"):
        raise ConfigError("a --metric is judged by a drop target", subject=f"--target-drop {target.text}",
                          expected="a drop of your metric, e.g. 0.5% (absolute, of a metric in [0, 1]) or rel:1%",
                          hint="fidelity and agreement targets do not read --metric")
    ctx = distributed.join(settings.device)     # several processes under torchrun: each takes a shard of the images
    progress = progress and ctx.is_root
    device = resolve_device(settings.device)
    check_latency_model(settings, device)
    rm = settings.resolve()
    graph = rm.graph
    pre = rm.preprocess()

    def subset(limit, seed):
        return open_capped(settings.data, preprocess=pre, limit=limit, seed=seed, data_dir=settings.data_dir,
                           inputs=data_inputs(graph))

    t_load = time.perf_counter()
    source = subset(settings.num_images if settings.num_images is not None else DEFAULT_MAX_IMAGES, settings.seed)
    check_preset_fits(graph, rm.preset, source)
    shard = distributed.load_images(ctx, source, graph.fixed_batch or 64, batch_size=64, progress=progress)
    load_s = time.perf_counter() - t_load
    x = shard.images                              # this rank's rows shard.lo..hi of every image (all of them alone)
    check_input_shape(graph, x[:1], source.name,
                       hint="use data of the model's input size (sweep preprocesses with the model's own preset)")
    labels = shard.labels
    labelled = labels is not None and bool((labels >= 0).any())
    notes = []
    if not labelled and target.kind in ("abs", "rel") and user_metric is None:
        target = Target("agree", 100 - target.allowed_drop(1.0), target.text)
        notes.append(f"no labels: the target is read as agreement with FP32 ({target.describe()})")
    t_calib = time.perf_counter()
    if settings.ranges:
        ranges, _, _ = load_ranges(settings.ranges)
        calib_note = f"ranges from {settings.ranges}"
    else:
        cfg = CalibrationConfig(**settings.model_spec(), data=settings.data, data_dir=settings.data_dir,
                                method=settings.method, device=settings.device)
        calib = subset(settings.calib_images, settings.seed + 1)
        stats = distributed.on_root(ctx, lambda: statistics(graph, calib, cfg, device, progress=progress))
        ranges = distributed.on_root(ctx, lambda: ranges_from_stats(     # rank 0's, for every rank
            stats, cfg, auto_pass=AutoPass(graph, calib, device, progress=progress)))
        calib_note = f"{settings.method} ranges from {stats.num_images} calibration images"
        if recovering:          # the recovered model is the base of everything below
            base = graph
            rec = recover(graph, recovery, ranges_of=lambda g: ranges if g is base else ranges_from_stats(
                              statistics(g, calib, cfg, device, progress=progress), cfg,
                              auto_pass=AutoPass(g, calib, device, progress=progress)),
                          images=lambda: first_images(calib, recovery.images_needed, base.fixed_batch or 32),
                          device=device, progress=progress)
            graph = rec.graph
            ranges = rec.shipped_ranges(lambda g: ranges_from_stats(statistics(g, calib, cfg, device, progress=progress),
                                                                    cfg, auto_pass=AutoPass(g, calib, device,
                                                                                            progress=progress)))
            calib_note += f", of the model recovered by {'+'.join(recovery.steps)} ({describe(rec.report)})"

    calib_s = time.perf_counter() - t_calib
    t_fp32 = time.perf_counter()
    sim = QuantSim(graph, ranges, device, compile=compile_enabled(settings.compile, device))
    all_int8 = set(sim.layers)
    xs = sim.resident(x)                          # on the GPU once, where it fits: every pass below reads it there

    def evaluate_plan(int8) -> tuple | None:     # what the search runs: this rank's outputs of a plan (None: no images)
        return distributed.together(ctx, lambda: (sim.outputs(xs, int8) if user_metric is not None else
                                                  (sim.logits(xs, int8),)) if len(x) else None)

    # the FP32 pass, once: every output where the user's metric reads them, else the first
    ref_outputs = evaluate_plan(set())
    ref = None if ref_outputs is None else ref_outputs[0]
    by_top1 = labelled and target.kind in ("abs", "rel")    # agreement and fidelity targets need no labels

    def scores(outputs):
        """Every image's scores of a plan (each rank's shard gathered in image order)."""
        return distributed.gather_scores(ctx, lambda: None if outputs is None else metrics.image_scores(
            ref_outputs, outputs[:1], shard.local_labels if by_top1 else None))

    # metric(this rank's outputs) -> the same number on every rank, that of one process over every image
    if user_metric is not None:
        user_labels = labels if labelled else None
        ref_every = distributed.gather_outputs(ctx, ref_outputs, len(graph.outputs))

        def metric(outputs):                    # once, on rank 0, with every image's outputs
            every = distributed.gather_outputs(ctx, outputs, len(graph.outputs))
            return distributed.on_root(ctx, lambda: metrics.call_user_metric(user_metric, settings.metric, ref_every,
                                                                             every, user_labels))

        fp32_metric = metric(ref_outputs)
    elif target.kind == "sqnr":
        fp32_metric = None                                      # FP32 against itself: no noise

        def metric(outputs):
            sqnr = metrics.fidelity_from_terms(scores(outputs).fidelity[0])["sqnr_db"]
            return min(float(sqnr), 300.0)                      # identical outputs: "inf" capped for JSON
    elif target.kind == "cosine":
        fp32_metric = 1.0

        def metric(outputs):
            return float(metrics.fidelity_from_terms(scores(outputs).fidelity[0])["cosine"])
    else:
        def metric(outputs):
            s = scores(outputs)
            return float(s.top1.mean()) if by_top1 else float(s.agreement.mean())

        fp32_metric = metric(ref_outputs) if by_top1 else 1.0

    fp32_s = time.perf_counter() - t_fp32
    # sensitivity on the proxy subset: one FP32 pass (ref) reused, two views per layer
    t_sens = time.perf_counter()
    xp, refp = distributed.head_rows(ctx, shard, x, settings.proxy_images), distributed.head_rows(
        ctx, shard, ref, settings.proxy_images)               # the first images, on every rank
    # one process: the proxy images are the first rows of the resident set (no second copy on the device)
    xps = xs[:len(xp)] if not ctx.distributed and isinstance(xs, torch.Tensor) else sim.resident(xp)
    base_sqnr = metrics.sqnr_db(refp, sim.logits(xps, all_int8))

    def rank_layers():                          # the layers are shared out between the ranks
        alone, regain, partial_rank = {}, {}, False
        for i in distributed.shard_range(len(sim.layers), 1, ctx.rank, ctx.world_size):
            layer = sim.layers[i]
            if settings.time_budget_s is not None and time.perf_counter() - t_start > settings.time_budget_s:
                partial_rank = True
                break
            alone[layer] = metrics.sqnr_db(refp, sim.logits(xps, {layer}))
            regain[layer] = metrics.sqnr_db(refp, sim.logits(xps, all_int8 - {layer})) - base_sqnr
        return alone, regain, partial_rank
    ranked = distributed.exchange(ctx, rank_layers)
    alone = {n: a[n] for n in sim.layers for a, _, _ in ranked if n in a}        # in layer order, as one process
    regain = {n: r[n] for n in sim.layers for _, r, _ in ranked if n in r}
    partial_rank = any(p for _, _, p in ranked)
    sens_s = time.perf_counter() - t_sens
    if partial_rank:
        notes.append(f"time budget spent during the sensitivity pass: {len(regain)} of {len(sim.layers)} layers ranked")
    t_latency = time.perf_counter()
    latency, latency_kind, gpu_key, gpu_source = latency_model(settings, graph, ranges, xp, device, ctx)
    fp16_cost = latency.fp16_costs()
    latency_s = time.perf_counter() - t_latency
    if latency_kind != "roofline":
        notes.append(f"latency costs from TensorRT's per-layer profiler: an all-INT8 and an all-FP16 engine built "
                     f"and timed in {latency_s:.1f} s (--latency-model roofline skips them)")
    latency_ms = lambda fp16: latency.estimate_fp16(fp16) * 1e3            # noqa: E731
    if settings.objective == "latency":
        order = latency_order(regain, fp16_cost)
        prune = sorted((n for n in regain if fp16_cost[n] > 0), key=lambda k: -fp16_cost[k])   # dearest first
        cost = latency_ms
    else:
        order = sorted(regain, key=lambda k: -regain[k])
        prune, cost = None, None

    t_search = time.perf_counter()
    remaining = distributed.on_root(ctx, lambda: None if settings.time_budget_s is None else
                                    max(0.0, settings.time_budget_s - (time.perf_counter() - t_start)))
    if settings.margin_pp < 0:
        raise ConfigError("invalid margin", subject="--margin", got=str(settings.margin_pp), expected=">= 0 pp")
    if settings.margin_pp:
        notes.append(f"searched with a margin of {settings.margin_pp:g} pp below the target")
    result = greedy_search(order, lambda fp16: metric(evaluate_plan(all_int8 - set(fp16))),
                           lambda acc: target.met(fp32_metric, acc, settings.margin_pp), cost=cost,
                           time_budget_s=remaining, prune_order=prune,
                           clock=distributed.clock(ctx, time.perf_counter), fmt=target.format)
    search_s = time.perf_counter() - t_search
    all_fp16 = tuple(sim.layers)
    fp16_metric = metric(ref_outputs)        # FP16 is simulated in FP32: the all-FP16 plan is the FP32 pass
    if settings.objective == "latency" and all(st.fp16 != all_fp16 for st in result.path):
        best = min((st.cost for st in result.path if st.met), default=None)
        if (best is None or latency_ms(all_fp16) < best) and target.met(fp32_metric, fp16_metric, settings.margin_pp):
            result.path.append(Step(all_fp16, fp16_metric, latency_ms(all_fp16), True,
                                    "all FP16: estimated faster than every mixed plan found"))
            result.fp16, result.met = all_fp16, True
            result.note = ("every layer in FP16 is estimated faster than every plan with INT8 layers that meets the "
                           "target (on this GPU and batch, INT8's savings do not pay for its reformats)")
    plan = plan_from_search(graph, result.fp16, regain, target, name=f"sweep-{rm.name}")
    steps = tuple(SearchStep(st.fp16, st.accuracy, st.cost, st.met, st.action, latency_ms(st.fp16))
                  for st in result.path)
    # the Pareto front of accuracy vs estimated latency: the evaluated plans and the all-FP16 model
    points = [(st.metric, st.latency_ms) for st in steps]
    labels = [(st.action, len(st.fp16), i) for i, st in enumerate(steps)]
    if all(st.fp16 != all_fp16 for st in steps):
        points.append((fp16_metric, latency_ms(all_fp16)))
        labels.append(("all FP16 (simulated as FP32)", len(all_fp16), None))
    chosen = next((i for i, st in enumerate(steps) if st.fp16 == result.fp16 and st.met), None)
    front = tuple(FrontPoint(labels[i][0], labels[i][1], points[i][0], points[i][1], labels[i][2], i == chosen)
                  for i in pareto_front(points))
    final_sim = result.path[-1].accuracy if result.path else float("nan")
    for s in reversed(result.path):
        if s.fp16 == result.fp16:
            final_sim = s.accuracy
            break

    # the outputs, made in memory here and written together after the validation
    qdq, _ = build_qdq_model(graph, ranges, plan)
    version, algo = cache_header(CalibrationConfig(trt_version=settings.trt_version))
    cache_text = TrtCache.from_ranges(ranges, algorithm=algo, version=version).to_text()
    flag = layer_precisions_flag(plan)
    onnx_path = out / "model.onnx" if recovering else rm.onnx_path    # TensorRT builds from the recovered model
    trt_lines = trtexec_commands(onnx_path, plan, out / "model_qdq.onnx", trtexec_shapes(graph, xp))
    trt_lines.append(f"trtexec --onnx={onnx_path} --int8 --fp16 --calib={out / 'calib.bin'} "
                     f"--precisionConstraints=obey" + (f" --layerPrecisions={flag}" if flag else "")
                     + "   # TensorRT <= 10, implicit INT8 with the calibration cache")

    # validation: the chosen plan as a real engine
    t_valid = time.perf_counter()
    vnote = None
    try:
        vplan = plan
        if settings.validate_backend == "onnxruntime" and plan.nodes("fp16"):
            vplan = PrecisionPlan(plan.name, {n: LayerPrecision(n, "fp32" if lp.precision == "fp16" else lp.precision,
                                                                lp.reason, lp.sensitivity)
                                              for n, lp in plan.layers.items()}, default="fp32")
            vnote = "ONNX Runtime's CPU provider has no FP16 kernels: FP16 layers measured in FP32"

        def build_and_run():                    # every rank its shard
            engine = registry.build(settings.validate_backend, graph, vplan, ranges, device=settings.device,
                                    example=xp[:1], compile=settings.compile)
            run = engine.run_all if user_metric is not None else (lambda c: (engine.run(c),))
            return engine, (run_batched(run, lambda lo, hi: x[lo:hi], len(x), 64, graph.fixed_batch) if len(x) else None)
        engine, local = distributed.together(ctx, build_and_run)
        measured = metric(local)
        validation = Validation(settings.validate_backend, "ok", measured, engine.info.description,
                                engine.info.simulated, target.met(fp32_metric, measured), note=vnote)
        if not validation.meets_target:
            notes.append(f"the real engine measures {target.format(measured)} against {target.format(final_sim)} "
                         f"simulated and misses the target" + ("" if target.kind in FIDELITY_KINDS else
                         f": on {shard.count} images one flip is {100 / shard.count:.2f} pp; use more images or search with --margin"))
    except metrics.MetricError:
        raise                     # the user's metric failed on the engine's outputs: their input, exit 2
    except Exception as err:  # validation must not lose the plan: report why it failed
        validation = Validation(settings.validate_backend, "failed", note=vnote,
                                reason=f"{type(err).__name__}: {err}"[:400])
    validation_s = time.perf_counter() - t_valid
    if sim.compile_s:                             # --compile: apart from the search's seconds
        notes.append(f"torch.compile of the simulator: {sim.compile_s:.1f} s (once per batch shape; every plan "
                     f"ran on the one compiled graph)")

    doc = Sweep(
        model=ModelRef(rm.name, graph.fingerprint()),
        data=DataRef(source.name, source.fingerprint(), shard.count, labelled),
        target=TargetRef(target.text, target.kind, target.value, target.describe()),
        metric=(f"metric {settings.metric}" if user_metric is not None else
                target.metric_name or ("top-1" if by_top1 else "agreement with FP32 top-1")), fp32_metric=fp32_metric,
        calibration=calib_note, layers=len(sim.layers), notes=tuple(notes + ([result.note] if result.note else [])),
        sensitivity=tuple([SensitivityRow(n, regain.get(n), alone.get(n), fp16_cost[n] * 1e3) for n in order]
                          + [SensitivityRow(n, fp16_cost_ms=fp16_cost[n] * 1e3) for n in sim.layers if n not in regain]),
        all_int8_sqnr_db=float(base_sqnr), ranking_partial=partial_rank,
        search=SearchRecord(result.met, result.partial, result.evaluations, tuple(result.fp16), final_sim, steps),
        objective=settings.objective, front=front,
        latency=LatencyEstimate(latency_kind, gpu_key, gpu_source, settings.latency_batch, latency.describe(),
                                latency_ms(()), latency_ms(sim.layers), latency_ms(result.fp16)),
        validation=validation, trtexec=tuple(trt_lines),
        timings={"load_images_s": load_s, "calibration_s": calib_s, "fp32_pass_s": fp32_s, "sensitivity_s": sens_s,
                 "latency_model_s": latency_s, "search_s": search_s, "validation_s": validation_s,
                 "total_s": time.perf_counter() - t_start},
        files={k: str(out / k) for k in ("plan.json", "model_qdq.onnx", "calib.bin", "sweep.json", "sweep.md", "sweep.html")
               + (("model.onnx",) if recovering else ())})

    def write():                                # rank 0; every rank returns its document (or raises its error)
        # every output together, after everything above succeeded (an error or Ctrl-C leaves the earlier set);
        # the CLI checked the paths and their kinds before any work
        out.mkdir(exist_ok=True)
        with OutputSet(force=True) as outputs:
            recovered = (("model.onnx", graph.model.SerializeToString()),) if recovering else ()
            for name, data in (("plan.json", plan.to_json()), ("model_qdq.onnx", qdq.SerializeToString()),
                               ("calib.bin", cache_text), ("sweep.json", document_text(doc)), *sweep_report_texts(doc).items(),
                               *recovered):
                outputs.add(out / name, flag="--out")
                outputs.stage(out / name, data)
            outputs.commit()
        return doc
    return distributed.on_root(ctx, write)
