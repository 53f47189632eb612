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
   the target holds; then prune every FP16 layer whose return to INT8 keeps the target. Cost = number
   of FP16 layers (or a per-layer cost). Every step is kept: the path is the accuracy/cost front.
   A time budget returns the best plan found so far, marked partial.

During the search FP16 layers are simulated in FP32 (FP16's error is orders of magnitude below
INT8's); the chosen plan is then rebuilt as a real engine and measured (``validate``).
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..core import metrics
from ..core.targets import FIDELITY_KINDS, Target, parse_target
from ..core.errors import ConfigError
from .graph import OnnxGraph, TorchGraphExecutor, run_batched
from ..core.numerics import fake_quant
from .plan import LayerPrecision, PrecisionPlan, quantizable_nodes
from .placement import Placement, Quantizer, fake_quant_weight, place_quantizers
from .qdq import check_ranges
from ..core.types import RangeSet
from . import backends
from .build import trtexec_commands, trtexec_input
from ..core.runtime import resolve_device
from ..core.cache import TrtCache
from .cache_tools import load_ranges
from .calibrate import CalibrationConfig, DEFAULT_MAX_IMAGES, _cache_header, _check_input_shape, check_preset_fits, open_capped, ranges_from_stats, statistics
from ..core.fileio import OutputSet, check_output_dir
from ..core.records import (DataRef, ModelRef, SearchRecord, SearchStep, SensitivityRow, Sweep, TargetRef, Validation,
                            document_text)
from .models import DataSpec, ModelSpec
from .auto_method import AutoPass
from .qdq import build_qdq_model
from ..reports.sweep_render import sweep_report_texts


class QuantSim:
    """Fake-quantize any subset of layers on the FP32 graph, fast, with exactly the quantizers that
    :func:`.placement.place_quantizers` gives the shipped Q/DQ model (same tensors, same consumers,
    same scales)."""

    def __init__(self, graph: OnnxGraph, ranges: RangeSet, device: torch.device):
        self.graph = graph
        self.ranges = ranges
        self.ex = TorchGraphExecutor(graph, device, unsupported_hint="sweep simulates the plans with PyTorch, so it "
                                                                     "needs a model of the operators it supports")
        self.layers = quantizable_nodes(graph)
        self.scales = {n: r.scale for n, r in ranges.ranges.items()}
        self._placements: dict[frozenset, Placement] = {}
        self._weights: dict[tuple[str, int], torch.Tensor] = {}
        self.placement(self.layers)           # checks the ranges cover every quantized tensor, up front

    def placement(self, int8) -> Placement:
        key = frozenset(int8)
        if key not in self._placements:
            p = place_quantizers(self.graph, key)
            check_ranges(self.graph, self.ranges, p.activation_tensors())
            self._placements[key] = p
        return self._placements[key]

    def _weight(self, q: Quantizer) -> torch.Tensor:
        key = (q.tensor, q.axis)
        if key not in self._weights:
            self._weights[key] = fake_quant_weight(self.ex.consts[q.tensor], q.axis)
        return self._weights[key]

    def edges(self, int8) -> dict:
        """Per-consumer replacements for one forward (``memo`` shares a tensor's fake-quant between its consumers)."""
        memo: dict[str, torch.Tensor] = {}
        edges: dict[str, dict[int, object]] = {}
        for q in self.placement(int8).quantizers:
            if q.kind == "weight":
                wq = self._weight(q)
                fn = lambda v, wq=wq: wq                                     # noqa: E731
            else:
                def fn(v, t=q.tensor, s=self.scales[q.tensor]):
                    if t not in memo:
                        memo[t] = fake_quant(v, s)
                    return memo[t]
            for node, idx in q.consumers:
                edges.setdefault(node, {})[idx] = fn
        return edges

    def run(self, x: torch.Tensor, int8: set[str]) -> torch.Tensor:
        return self.run_all(x, int8)[0]

    def run_all(self, x: torch.Tensor, int8: set[str]) -> tuple[torch.Tensor, ...]:
        """Every output of the graph, in its output order, with ``int8`` layers quantized."""
        out = self.ex.run({self.graph.inputs[0].name: x}, edges=self.edges(int8))
        return tuple(out.values())

    def _batched(self, x: np.ndarray, int8: set[str], batch: int, every: bool):
        dev = self.ex.device

        def run(chunk):
            outs = self.run_all(torch.from_numpy(chunk).to(dev), int8)
            host = tuple(o.float().cpu().numpy() for o in (outs if every else outs[:1]))
            return host if every else host[0]
        return run_batched(run, lambda lo, hi: x[lo:hi], len(x), batch, self.graph.fixed_batch)

    def logits(self, x: np.ndarray, int8: set[str], batch: int = 64) -> np.ndarray:
        """The first output over ``x``, in batches."""
        return self._batched(x, int8, batch, every=False)

    def outputs(self, x: np.ndarray, int8: set[str], batch: int = 64) -> tuple[np.ndarray, ...]:
        """Every output over ``x``, in batches (what a user's metric reads)."""
        return self._batched(x, int8, batch, every=True)


@dataclass(frozen=True)
class Step:
    fp16: tuple[str, ...]
    accuracy: float          # metric (top-1 or agreement), fraction
    cost: float
    met: bool
    action: str


@dataclass
class SearchResult:
    fp16: tuple[str, ...]
    met: bool
    path: list[Step] = field(default_factory=list)
    evaluations: int = 0
    partial: bool = False
    note: str = ""


def greedy_search(order: Sequence[str], evaluate: Callable[[frozenset], float], meets: Callable[[float], bool], *,
                  cost: Callable[[Sequence[str]], float] | None = None, time_budget_s: float | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  fmt: Callable[[float], str] = lambda v: f"{v * 100:.2f}%") -> SearchResult:
    """Greedy FP16 selection in ``order`` with whole-model verification, then pruning.

    ``evaluate(fp16_set) -> metric`` measures the mixed model; ``meets(metric)`` is the target.
    """
    cost = cost or (lambda layers: float(len(layers)))
    start = clock()
    res = SearchResult(fp16=(), met=False)

    def over_budget() -> bool:
        return time_budget_s is not None and clock() - start > time_budget_s

    def measure(layers: list[str], action: str) -> bool:
        acc = evaluate(frozenset(layers))
        res.evaluations += 1
        ok = meets(acc)
        res.path.append(Step(tuple(layers), acc, cost(layers), ok, action))
        return ok

    fp16: list[str] = []
    if measure(fp16, "all INT8"):
        res.met, res.note = True, "the target is met with every quantizable layer in INT8"
        return res
    for layer in order:
        if over_budget():
            res.partial = True
            break
        fp16.append(layer)
        if measure(fp16, f"+ {layer} FP16"):
            res.met = True
            break
    if not res.met:
        res.fp16 = tuple(fp16)
        best = max(res.path, key=lambda s: s.accuracy)
        res.note = ("time budget spent before the target was met" if res.partial else
                    f"target not met even with all {len(fp16)} ranked layers in FP16 (best metric "
                    f"{fmt(best.accuracy)})")
        return res
    # prune: return to INT8 every FP16 layer that turns out unnecessary (least sensitive first)
    for layer in reversed(list(fp16)):
        if over_budget():
            res.partial = True
            break
        trial = [x for x in fp16 if x != layer]
        if measure(trial, f"- {layer} back to INT8"):
            fp16 = trial
        else:
            res.path[-1] = Step(res.path[-1].fp16, res.path[-1].accuracy, res.path[-1].cost, False,
                                f"- {layer} back to INT8 (kept FP16)")
    res.fp16 = tuple(fp16)
    res.note = f"{len(fp16)} layer(s) in FP16 meet the target"
    return res


def plan_from_search(graph: OnnxGraph, fp16: Sequence[str], sensitivity: dict[str, float], target: Target,
                     name: str = "sweep") -> PrecisionPlan:
    layers = {}
    rank = {n: i + 1 for i, n in enumerate(sorted(sensitivity, key=lambda k: -sensitivity[k]))}
    for n in quantizable_nodes(graph):
        s = sensitivity.get(n)
        if n in fp16:
            layers[n] = LayerPrecision(n, "fp16", f"kept FP16 for target '{target.text}' (sensitivity rank {rank.get(n)})", s)
        else:
            layers[n] = LayerPrecision(n, "int8", "INT8 within the target", s)
    return PrecisionPlan(name, layers, default="fp32", meta={"target": target.text, "target_meaning": target.describe()})


def layer_precisions_flag(plan: PrecisionPlan) -> str:
    """trtexec's ``--layerPrecisions`` value for the FP16 layers (TensorRT <= 10, implicit INT8)."""
    return ",".join(f"{n}:fp16" for n in plan.nodes("fp16"))


@dataclass(frozen=True)
class SweepSettings(ModelSpec, DataSpec):
    """Every sweep setting (model and data: the shared specs; num_images counts evaluation images)."""

    target: str = "0.5%"
    calib_images: int = 256
    method: str = "entropy"
    ranges: str | None = None            # ranges JSON / cache / Q/DQ ONNX instead of calibrating
    proxy_images: int = 64               # sensitivity ranking subset
    time_budget_s: float | None = None
    device: str = "auto"
    validate_backend: str = "onnxruntime"
    trt_version: str | None = None
    margin_pp: float = 0.0               # the search must beat the target by this much (validation noise)
    metric: str | None = None            # a user metric MODULE:FUNCTION: the target judges it (core.metrics)


def sweep(settings: SweepSettings, out, *, progress: bool = True) -> Sweep:
    """Sensitivity pass + search + outputs + validation; returns the sweep record (also ``sweep.json``)."""
    t_start = time.perf_counter()
    target = parse_target(settings.target)
    out = Path(out)
    check_output_dir(out)
    user_metric = metrics.load_user_metric(settings.metric) if settings.metric else None   # before any work
    if user_metric is not None and target.kind not in ("abs", "rel"):
        raise ConfigError("a --metric is judged by a drop target", subject=f"--target-drop {target.text}",
                          expected="a drop of your metric, e.g. 0.5% (absolute, of a metric in [0, 1]) or rel:1%",
                          hint="fidelity and agreement targets do not read --metric")
    device = resolve_device(settings.device)
    rm = settings.resolve()
    graph = rm.graph
    pre = rm.preprocess()

    def subset(limit, seed):
        return open_capped(settings.data, preprocess=pre, limit=limit, seed=seed, data_dir=settings.data_dir)

    source = subset(settings.num_images if settings.num_images is not None else DEFAULT_MAX_IMAGES, settings.seed)
    check_preset_fits(graph, rm.preset, source)
    batches = list(source.batches(64, progress=progress))
    x = np.concatenate([b.images for b in batches])
    _check_input_shape(graph, x[:1], source.name,
                       hint="use data of the model's input size (sweep preprocesses with the model's own preset)")
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    labelled = labels is not None and bool((labels >= 0).any())
    notes = []
    if not labelled and target.kind in ("abs", "rel") and user_metric is None:
        target = Target("agree", 100 - target.allowed_drop(1.0), target.text)
        notes.append(f"no labels: the target is read as agreement with FP32 ({target.describe()})")
    if settings.ranges:
        ranges, _, _ = load_ranges(settings.ranges)
        calib_note = f"ranges from {settings.ranges}"
    else:
        cfg = CalibrationConfig(**settings.model_spec(), data=settings.data, data_dir=settings.data_dir,
                                method=settings.method, device=settings.device)
        calib_source = subset(settings.calib_images, settings.seed + 1)
        stats = statistics(graph, calib_source, cfg, device, progress=progress)
        ranges = ranges_from_stats(stats, cfg, auto_pass=AutoPass(graph, calib_source, device, progress=progress))
        calib_note = f"{settings.method} ranges from {stats.num_images} calibration images"

    sim = QuantSim(graph, ranges, device)
    all_int8 = set(sim.layers)
    # the FP32 pass, once: every output where the user's metric reads them, else the first
    evaluate_plan = sim.outputs if user_metric is not None else sim.logits   # what the search runs
    ref_outputs = sim.outputs(x, set()) if user_metric is not None else None
    ref = ref_outputs[0] if ref_outputs is not None else sim.logits(x, set())
    by_top1 = labelled and target.kind in ("abs", "rel")    # agreement and fidelity targets need no labels
    if user_metric is not None:
        user_labels = labels if labelled else None

        def metric(outputs):
            return metrics.call_user_metric(user_metric, settings.metric, ref_outputs, outputs, user_labels)

        fp32_metric = metric(ref_outputs)
    elif target.kind == "sqnr":
        fp32_metric = None                                      # FP32 against itself: no noise

        def metric(logits):
            return min(float(metrics.sqnr_db(ref, logits)), 300.0)     # identical outputs: "inf" capped for JSON
    elif target.kind == "cosine":
        fp32_metric = 1.0

        def metric(logits):
            return float(metrics.mean_cosine(ref, logits))
    else:
        fp32_metric = float(metrics.topk_correct(ref, labels, 1).mean()) if by_top1 else 1.0

        def metric(logits):
            return (float(metrics.topk_correct(logits, labels, 1).mean()) if by_top1
                    else float(metrics.agreement(logits, ref).mean()))

    # sensitivity on the proxy subset: one FP32 pass (ref) reused, two views per layer
    t_sens = time.perf_counter()
    xp, refp = x[:settings.proxy_images], ref[:settings.proxy_images]
    base_sqnr = metrics.sqnr_db(refp, sim.logits(xp, all_int8))
    alone, regain, partial_rank = {}, {}, False
    for layer in sim.layers:
        if settings.time_budget_s is not None and time.perf_counter() - t_start > settings.time_budget_s:
            partial_rank = True
            break
        alone[layer] = metrics.sqnr_db(refp, sim.logits(xp, {layer}))
        regain[layer] = metrics.sqnr_db(refp, sim.logits(xp, all_int8 - {layer})) - base_sqnr
    sens_s = time.perf_counter() - t_sens
    if partial_rank:
        notes.append(f"time budget spent during the sensitivity pass: {len(regain)} of {len(sim.layers)} layers ranked")
    order = sorted(regain, key=lambda k: -regain[k])

    t_search = time.perf_counter()
    remaining = None if settings.time_budget_s is None else max(0.0, settings.time_budget_s - (time.perf_counter() - t_start))
    if settings.margin_pp < 0:
        raise ConfigError("invalid margin", subject="--margin", got=str(settings.margin_pp), expected=">= 0 pp")
    if settings.margin_pp:
        notes.append(f"searched with a margin of {settings.margin_pp:g} pp below the target")
    result = greedy_search(order, lambda fp16: metric(evaluate_plan(x, all_int8 - set(fp16))),
                           lambda acc: target.met(fp32_metric, acc, settings.margin_pp), time_budget_s=remaining,
                           fmt=target.format)
    search_s = time.perf_counter() - t_search
    plan = plan_from_search(graph, result.fp16, regain, target, name=f"sweep-{rm.name}")
    final_sim = result.path[-1].accuracy if result.path else float("nan")
    for s in reversed(result.path):
        if s.fp16 == result.fp16:
            final_sim = s.accuracy
            break

    # the outputs, made in memory here and written together after the validation
    qdq, _ = build_qdq_model(graph, ranges, plan)
    version, algo = _cache_header(CalibrationConfig(trt_version=settings.trt_version))
    cache_text = TrtCache.from_ranges(ranges, algorithm=algo, version=version).to_text()
    flag = layer_precisions_flag(plan)
    trt_lines = trtexec_commands(rm.onnx_path, plan, out / "model_qdq.onnx", *trtexec_input(graph, x.shape))
    trt_lines.append(f"trtexec --onnx={rm.onnx_path} --int8 --fp16 --calib={out / 'calib.bin'} "
                     f"--precisionConstraints=obey" + (f" --layerPrecisions={flag}" if flag else "")
                     + "   # TensorRT <= 10, implicit INT8 with the calibration cache")

    # validation: the chosen plan as a real engine
    vnote = None
    try:
        vplan = plan
        if settings.validate_backend == "onnxruntime" and plan.nodes("fp16"):
            vplan = PrecisionPlan(plan.name, {n: LayerPrecision(n, "fp32" if lp.precision == "fp16" else lp.precision,
                                                                lp.reason, lp.sensitivity)
                                              for n, lp in plan.layers.items()}, default="fp32")
            vnote = "ONNX Runtime's CPU provider has no FP16 kernels: FP16 layers measured in FP32"
        engine = backends.build(settings.validate_backend, graph, vplan, ranges, device=settings.device)
        run = engine.run_all if user_metric is not None else engine.run
        measured = metric(run_batched(run, lambda lo, hi: x[lo:hi], len(x), 64, graph.fixed_batch))
        validation = Validation(settings.validate_backend, "ok", measured, engine.info.description,
                                engine.info.simulated, target.met(fp32_metric, measured), note=vnote)
        if not validation.meets_target:
            notes.append(f"the real engine measures {target.format(measured)} against {target.format(final_sim)} "
                         f"simulated and misses the target" + ("" if target.kind in FIDELITY_KINDS else
                         f": on {len(x)} images one flip is {100 / len(x):.2f} pp; use more images or search with --margin"))
    except metrics.MetricError:
        raise                     # the user's metric failed on the engine's outputs: their input, exit 2
    except Exception as err:  # validation must not lose the plan: report why it failed
        validation = Validation(settings.validate_backend, "failed", note=vnote,
                                reason=f"{type(err).__name__}: {err}"[:400])

    doc = Sweep(
        model=ModelRef(rm.name, graph.fingerprint()),
        data=DataRef(source.name, source.fingerprint(), int(len(x)), labelled),
        target=TargetRef(target.text, target.kind, target.value, target.describe()),
        metric=(f"metric {settings.metric}" if user_metric is not None else
                target.metric_name or ("top-1" if by_top1 else "agreement with FP32 top-1")), fp32_metric=fp32_metric,
        calibration=calib_note, layers=len(sim.layers), notes=tuple(notes + ([result.note] if result.note else [])),
        sensitivity=tuple([SensitivityRow(n, regain.get(n), alone.get(n)) for n in order]
                          + [SensitivityRow(n) for n in sim.layers if n not in regain]),
        all_int8_sqnr_db=float(base_sqnr), ranking_partial=partial_rank,
        search=SearchRecord(result.met, result.partial, result.evaluations, tuple(result.fp16), final_sim,
                            tuple(SearchStep(s.fp16, s.accuracy, s.cost, s.met, s.action) for s in result.path)),
        validation=validation, trtexec=tuple(trt_lines),
        timings={"sensitivity_s": sens_s, "search_s": search_s, "total_s": time.perf_counter() - t_start},
        files={k: str(out / k) for k in ("plan.json", "model_qdq.onnx", "calib.bin", "sweep.json", "sweep.md", "sweep.html")})
    # every output together, after everything above succeeded (an error or Ctrl-C leaves the earlier set);
    # the CLI checked the paths and their kinds before any work
    out.mkdir(exist_ok=True)
    with OutputSet(force=True) as outputs:
        for name, data in (("plan.json", plan.to_json()), ("model_qdq.onnx", qdq.SerializeToString()),
                           ("calib.bin", cache_text), ("sweep.json", document_text(doc)), *sweep_report_texts(doc).items()):
            outputs.add(out / name, flag="--out")
            outputs.stage(out / name, data)
        outputs.commit()
    return doc
