"""Divergence debugger: where, tensor by tensor, the INT8 (or mixed) model leaves FP32, and why.

The quantizers are exactly the shipped Q/DQ model's (:func:`.placement.place_quantizers`, simulated by
:class:`.sweep.QuantSim` with the calibrated ranges). Each batch is run once through the quantized
model by :class:`.graph.TorchGraphExecutor`, and node by node alongside it (its ``tap``) the FP32
model: both models' tensors exist at once only at the current node, so memory stays at about twice
the widest cut of the graph. For every float tensor a node computes, in graph order, with ``ref`` the
FP32 model's tensor and sums over every analysed image:

- **SQNR** ``10 log10(sum ref^2 / sum (q - ref)^2)`` in dB (``inf``: identical; ``-inf``: a zero tensor
  that the quantized model makes non-zero) with ``q`` the quantized model's tensor: the error
  accumulated up to this tensor. **Cosine**: the mean over images of ``<ref_i, q_i> / (|ref_i| |q_i|)``
  (1 where a norm is 0), for tensors whose first dimension is the batch, else over the whole tensor.
- **added** (local): the same SQNR for the node run on FP32's inputs with *its own* quantizers only
  (its activation inputs and its weight, as placed for it): the error this node adds by itself.
  ``inf`` for a node without quantizers of its own (FP16/FP32 layers, Clip, Flatten, ...).
- **inherited**: the node run on the quantized model's inputs *without* its own quantizers: the error
  that reaches it from upstream (for a node without quantizers of its own, the SQNR itself; for a
  node whose inputs are all FP32's, e.g. the first convolution, ``inf``).
- **weight** / **activation**: ``added`` with only its weight quantizer / only its activation-input
  quantizers (None where it has no such quantizer): which of the two the added error comes from.

For small errors the noise powers add: ``10^(-sqnr/10) ~ 10^(-added/10) + 10^(-inherited/10)``.

**Jump criterion.** A node *jumps* when the error it adds by itself is large and larger than what it
inherits: ``added < jump_db`` (default 20 dB: a noise power 1 % of the signal's; an INT8 layer with a
well-chosen range adds 30-45 dB) **and** ``added < inherited`` (its own quantization, not upstream's,
dominates its output's error). The *first jump* is the first such node in graph order; none when no
node qualifies. Its cause is ``weight`` or ``activation`` when one of the two alone accounts for at
least 90 % of the added noise power, else both.

**Suggestion.** The quantized layers ranked by their added SQNR (lowest first; a residual Add's or a
pooling node's quantizer counts for the INT8 layer that makes it exist: the layer the Add is fused
into, the layer feeding the pool), the worst ``worst`` kept FP16 in a copy of the plan. Like the
sweep, FP16 is simulated in FP32 (its error is orders of magnitude below INT8's); the suggested
plan's output SQNR is measured on the same images.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core import metrics
from ..core.errors import DataError, ModelError, PlanError
from ..core.fileio import OutputSet, check_output_dir, contains_marker, json_format
from ..core.numerics import fake_quant
from ..core.records import (DEBUG_FORMAT, DataRef, Debug, DebugJump, DebugSuggestion, LayerChoice, ModelRef,
                            PlanSummary, TensorDivergence, document_text)
from ..core.runtime import resolve_device
from ..core.types import RangeSet, concat_rows, feeds
from ..datasets.sources import open_capped
from ..reports.debug_render import debug_html
from .artifacts.placement import ACTIVATION_OPS, Placement, Quantizer
from .artifacts.plan import PLAN_FORMAT, LayerPrecision, PrecisionPlan, resolve_plan
from .artifacts.ranges import load_ranges
from .artifacts.trtexec import layer_precisions_flag
from .graph.inputs import check_input_shape, check_preset_fits, data_inputs
from .graph.interpreter import unsupported_ops
from .graph.onnx_graph import OnnxGraph
from .planner.simulate import QuantSim
from .settings import DEFAULT_DEBUG_IMAGES, CalibrationConfig, DebugSettings
from .auto_method import AutoPass
from .statistics import ranges_from_stats, statistics

log = logging.getLogger(__name__)

CAUSE_SHARE = 0.9                     # one quantizer kind "causes" the added error at >= 90 % of its noise power


def debug_outputs() -> dict:
    """The files debug writes into ``--out`` and their same-kind tests (anything else there needs --force)."""
    return {"debug.json": json_format(DEBUG_FORMAT), "debug.html": contains_marker("<title>trtquant debug</title>"),
            "plan.json": json_format(PLAN_FORMAT)}


# ---- the analysis -----------------------------------------------------------------------------------

@dataclass
class _Sums:
    """Running sums of one tensor over the analysed images (noise powers by view, cosines)."""
    node: str
    op: str
    signal: float = 0.0
    total: float = 0.0
    added: float = 0.0
    inherited: float = 0.0
    weight: float | None = None
    activation: float | None = None
    cosine: float = 0.0
    count: int = 0


def sqnr_from_powers(signal: float, noise: float) -> float:
    """:func:`..core.metrics.sqnr_db` from powers summed over batches: ``10 log10(signal / noise)`` dB; ``inf`` without noise, ``-inf`` for noise on a zero signal."""
    if noise <= 0:
        return math.inf
    return -math.inf if signal <= 0 else 10.0 * math.log10(signal / noise)


def _norms(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Euclidean norm of each of ``rows`` slices of ``t`` (float64; float32 reduction, relative error ~1e-6)."""
    return torch.linalg.vector_norm(t.float().reshape(rows, -1), dim=1).double()


def _rows(t: torch.Tensor, images: int) -> int:
    """Per image when the tensor's first dimension is the batch, else the whole tensor as one row."""
    return images if t.dim() > 0 and t.shape[0] == images else 1


def _cosines(norm_ref: torch.Tensor, norm_q: torch.Tensor, norm_err: torch.Tensor) -> float:
    """Sum of per-row cosines from the norms of ``ref``, ``q`` and ``q - ref``: ``1 - cos = (|d|^2 -
    (|a| - |b|)^2) / (2 |a| |b|)``, which keeps a cosine near 1 exact to ~1e-6 |d|/|b| where the dot product
    over the norms would lose digits (1 where a norm is 0, as :func:`..core.metrics.mean_cosine`)."""
    den = 2 * norm_ref * norm_q
    gap = (norm_err ** 2 - (norm_ref - norm_q) ** 2) / torch.where(den > 0, den, torch.ones_like(den))
    return float(torch.where(den > 0, 1 - gap, torch.ones_like(den)).clamp(-1.0, 1.0).sum())


def owner_layers(graph: OnnxGraph, placement: Placement) -> dict[str, str]:
    """Node with quantizers of its own -> the INT8 layer whose FP16 choice removes them: itself, the layer
    a residual Add is fused into, the INT8 layer feeding a pool (through element-wise activations)."""
    fused = dict(placement.fused_adds)
    producer = {o: n for n in graph.model.graph.node for o in n.output}
    owners: dict[str, str] = {}
    for q in placement.quantizers:
        for node, _ in q.consumers:
            if node in placement.int8_nodes:
                owners[node] = node
            elif node in fused:
                owners[node] = fused[node]
            else:
                p = producer.get(q.tensor)
                while p is not None and p.op_type in ACTIVATION_OPS:
                    p = producer.get(p.input[0])
                if p is not None and p.name in placement.int8_nodes:
                    owners[node] = p.name
    return owners


def _describe(q: Quantizer) -> str:
    return f"{q.reason} {q.tensor}" if q.kind == "activation" else f"weight {q.tensor} (per-channel, axis {q.axis})"


@dataclass(frozen=True)
class Analysis:
    """What :func:`analyse` measured: per-tensor rows in graph order, and FP32's first output."""
    rows: tuple[TensorDivergence, ...]
    reference: np.ndarray                # the FP32 model's first output over the analysed images
    quantized: np.ndarray                # the debugged model's


def analyse(sim: QuantSim, int8: set[str], chunks, *, progress: bool = True) -> Analysis:
    """Every float tensor's SQNR, cosine, added/inherited and weight/activation SQNRs (the module
    docstring) over ``chunks`` (batches of model input as float32 arrays), with ``int8`` quantized."""
    ex, graph = sim.ex, sim.graph
    placement = sim.placement(int8)
    own: dict[str, list[tuple[int, str, object]]] = {}        # node -> (input index, kind, fake-quant)
    described: dict[str, list[str]] = {}
    for q in placement.quantizers:
        if q.kind == "weight":
            fn = (lambda v, w=sim._weight(q): w)                  # noqa: E731
        else:
            fn = (lambda v, s=sim.scales[q.tensor]: fake_quant(v, s))   # noqa: E731
        for node, idx in q.consumers:
            own.setdefault(node, []).append((idx, q.kind, fn))
            described.setdefault(node, []).append(_describe(q))
    owners = owner_layers(graph, placement)
    last_use: dict[str, int] = {}
    for i, (_, _, inputs) in enumerate(ex.nodes):
        for name in inputs:
            if name:
                last_use[name] = i
    keep = set(graph.outputs)
    sums: dict[str, _Sums] = {}
    refs, quants = [], []
    names = [gi.name for gi in graph.inputs]

    def quantized_args(args: list, mine, kind: str | None) -> list:
        args = list(args)
        for idx, k, fn in mine:
            if kind is None or k == kind:
                args[idx] = fn(args[idx])
        return args

    bar = tqdm(total=len(chunks) * len(ex.nodes), unit="node", desc="debug", file=sys.stderr, disable=not progress)
    with bar:
        for chunk in chunks:
            fed = {k: torch.from_numpy(v).to(ex.device) for k, v in feeds(names, chunk).items()}
            images = len(chunk)
            shadow: dict[str, torch.Tensor] = dict(fed)           # the FP32 model's live tensors

            def tap(i: int, given: list, outs: tuple) -> None:
                node, _, inputs = ex.nodes[i]
                ref_args = [None if not n else (shadow[n] if n in shadow else ex.consts[n]) for n in inputs]
                ref = ex.run_node(i, ref_args)
                mine = own.get(node.name)
                views: dict[str, tuple] = {}
                if mine:
                    views["added"] = ex.run_node(i, quantized_args(ref_args, mine, None))
                    kinds = {k for _, k, _ in mine}
                    for kind in ("weight", "activation"):
                        if kind in kinds:
                            views[kind] = (views["added"] if len(kinds) == 1
                                           else ex.run_node(i, quantized_args(ref_args, mine, kind)))
                    views["inherited"] = ex.run_node(i, given)
                for j, name in enumerate(node.output):
                    if not name:
                        continue
                    r, q = ref[j], outs[j]
                    shadow[name] = r
                    if not r.is_floating_point() or r.numel() == 0:
                        continue
                    s = sums.get(name)
                    if s is None:
                        s = sums[name] = _Sums(node.name, node.op_type)
                    rows = _rows(r, images)

                    def power(v, rows=rows, r=r) -> float:
                        return float((_norms(v - r, rows) ** 2).sum())

                    norm_ref, norm_q, norm_err = _norms(r, rows), _norms(q, rows), _norms(q - r, rows)
                    total = float((norm_err ** 2).sum())
                    s.signal += float((norm_ref ** 2).sum())
                    s.total += total
                    s.inherited += power(views["inherited"][j]) if mine else total
                    if mine:
                        s.added += power(views["added"][j])
                    for kind in ("weight", "activation"):
                        if kind in views:
                            setattr(s, kind, (getattr(s, kind) or 0.0) + power(views[kind][j]))
                    s.cosine += _cosines(norm_ref, norm_q, norm_err)
                    s.count += rows
                    if name not in last_use and name not in keep:      # read by nobody: done with it
                        shadow.pop(name, None)
                for name in inputs:
                    if name and last_use.get(name) == i and name not in keep:
                        shadow.pop(name, None)
                bar.update(1)

            out = ex.run(fed, edges=sim.edges(int8), tap=tap)
            first = graph.outputs[0]
            refs.append(shadow[first].float().cpu().numpy())
            quants.append(out[first].float().cpu().numpy())
    rows = []
    for name, s in sums.items():
        rows.append(TensorDivergence(
            tensor=name, node=s.node, op=s.op, sqnr_db=sqnr_from_powers(s.signal, s.total),
            cosine=s.cosine / s.count if s.count else 1.0,
            added_sqnr_db=sqnr_from_powers(s.signal, s.added), inherited_sqnr_db=sqnr_from_powers(s.signal, s.inherited),
            weight_sqnr_db=None if s.weight is None else sqnr_from_powers(s.signal, s.weight),
            activation_sqnr_db=None if s.activation is None else sqnr_from_powers(s.signal, s.activation),
            quantizers=tuple(described.get(s.node, ())), layer=owners.get(s.node)))
    return Analysis(tuple(rows), np.concatenate(refs), np.concatenate(quants))


# ---- reading the analysis ---------------------------------------------------------------------------

def _cause(row: TensorDivergence) -> str:
    """Which quantizer kind accounts for the added noise (>= CAUSE_SHARE of its power), else both."""
    def noise(db):
        return 0.0 if db is None or db == math.inf else 10 ** (-db / 10)
    w, a = noise(row.weight_sqnr_db), noise(row.activation_sqnr_db)
    if w + a == 0:
        return "weight and activation"
    if w >= CAUSE_SHARE * (w + a):
        return "weight"
    if a >= CAUSE_SHARE * (w + a):
        return "activation"
    return "weight and activation"


def first_jump(rows, jump_db: float) -> DebugJump | None:
    """The first row (graph order) whose node jumps: ``added < jump_db`` and ``added < inherited``."""
    for r in rows:
        if r.quantizers and r.added_sqnr_db < jump_db and r.added_sqnr_db < r.inherited_sqnr_db:
            return DebugJump(r.node, r.tensor, r.added_sqnr_db, r.inherited_sqnr_db, r.sqnr_db, _cause(r), r.layer)
    return None


def worst_layers(rows, k: int) -> list[str]:
    """The ``k`` plan layers with the lowest added SQNR (a node's quantizers count for its owner layer)."""
    out: list[str] = []
    for r in sorted((r for r in rows if r.quantizers and r.layer), key=lambda r: r.added_sqnr_db):
        if r.layer not in out and r.added_sqnr_db < math.inf:
            out.append(r.layer)
        if len(out) == k:
            break
    return out


def suggested_plan(plan: PrecisionPlan, fp16: list[str], rows) -> PrecisionPlan:
    """``plan`` with the ``fp16`` layers FP16 (the reason names their added SQNR), everything else as it was."""
    added = {}
    for r in rows:
        if r.layer in fp16:
            added[r.layer] = min(added.get(r.layer, math.inf), r.added_sqnr_db)
    layers = dict(plan.layers)
    for rank, n in enumerate(fp16, 1):
        layers[n] = LayerPrecision(n, "fp16", f"kept FP16 by debug: adds the most INT8 error (rank {rank}, "
                                              f"added SQNR {added[n]:.1f} dB)", added[n])
    return PrecisionPlan(f"{plan.name}-debug", layers, default=plan.default,
                         meta={**plan.meta, "debug": f"the {len(fp16)} layer(s) adding the most INT8 error kept FP16"})


# ---- the verb ---------------------------------------------------------------------------------------

def debug_ranges(settings: DebugSettings, graph: OnnxGraph, device: torch.device, subset,
                 progress: bool) -> tuple[RangeSet, str]:
    """The ranges as ``sweep``/``evaluate`` get them: ``--ranges FILE``, or calibrated here with ``--method``."""
    if settings.ranges:
        ranges, _, _ = load_ranges(settings.ranges)
        return ranges, f"ranges from {settings.ranges}"
    cfg = CalibrationConfig(**settings.model_spec(), data=settings.data, data_dir=settings.data_dir,
                            method=settings.method, device=settings.device)
    calib = subset(settings.calib_images, settings.seed + 1)
    stats = statistics(graph, calib, cfg, device, progress=progress)
    return (ranges_from_stats(stats, cfg, auto_pass=AutoPass(graph, calib, device, progress=progress)),
            f"{settings.method} ranges from {stats.num_images} calibration images")


def _chunks(x: np.ndarray, batch: int, fixed: int | None, notes: list[str]) -> list[np.ndarray]:
    if fixed is not None:
        if batch != fixed:
            notes.append(f"the model's input has a fixed batch of {fixed}: analysed in batches of {fixed}")
        batch = fixed
        usable = len(x) // fixed * fixed
        if usable == 0:
            raise DataError("too few images for the model's fixed batch", subject="--num-images",
                            got=f"{len(x)} image(s)", expected=f"at least {fixed}", hint="analyse more images")
        if usable < len(x):
            notes.append(f"{len(x) - usable} image(s) left out: they do not fill the model's fixed batch of {fixed}")
        x = x[:usable]
    return [x[lo:lo + batch] for lo in range(0, len(x), batch)]


def debug(settings: DebugSettings, out, *, progress: bool = True) -> Debug:
    """Analyse the quantized model against FP32 and write ``debug.json``, ``debug.html`` and ``plan.json``
    (the suggested plan) into ``out``, together, at the end; returns the record."""
    t_start = time.perf_counter()
    out = Path(out)
    check_output_dir(out)
    device = resolve_device(settings.device)
    rm = settings.resolve()
    graph = rm.graph
    plan = resolve_plan(settings.precision, graph)
    if not plan.nodes("int8"):
        raise PlanError("nothing to debug: the plan has no INT8 layer", subject=f"--precision {settings.precision}",
                        expected="a plan with INT8 layers", hint="debug compares quantized layers with FP32")
    int8 = set(plan.nodes("int8"))
    pre = rm.preprocess()

    def subset(limit, seed):
        return open_capped(settings.data, preprocess=pre, limit=limit, seed=seed, data_dir=settings.data_dir,
                           inputs=data_inputs(graph))

    missing = unsupported_ops(graph)
    if missing:
        raise ModelError("operators not supported by the PyTorch executor", subject=str(graph.path or "model"),
                         got=", ".join(missing), hint="debug runs the model node by node with PyTorch, so it needs a "
                                                      "model of the operators it supports")
    source = subset(settings.num_images or DEFAULT_DEBUG_IMAGES, settings.seed)
    check_preset_fits(graph, rm.preset, source)
    t_calib = time.perf_counter()
    ranges, calib_note = debug_ranges(settings, graph, device, subset, progress)
    calib_s = time.perf_counter() - t_calib
    sim = QuantSim(graph, ranges, device)          # checks the ranges cover every quantizer, before the data pass
    sim.placement(int8)
    batches = list(source.batches(settings.batch_size, progress=progress))
    x = concat_rows([b.images for b in batches])
    check_input_shape(graph, x[:1], source.name, hint="use data of the model's input size (debug preprocesses "
                                                       "with the model's own preset)")
    notes: list[str] = []
    if ranges.model_fingerprint and ranges.model_fingerprint != graph.fingerprint():
        notes.append(f"the ranges were made for another export of this graph (model fingerprint "
                     f"{ranges.model_fingerprint[:12]}, this one {graph.fingerprint()[:12]})")
    if plan.nodes("fp16"):
        notes.append(f"{len(plan.nodes('fp16'))} FP16 layer(s) of the plan simulated in FP32 (FP16's error is "
                     "orders of magnitude below INT8's)")
    chunks = _chunks(x, settings.batch_size, graph.fixed_batch, notes)
    x = concat_rows(chunks)
    log.info("debugging %s (%s) on %d images in %d batch(es); %s", rm.name, plan.name, len(x), len(chunks), calib_note)
    t_analysis = time.perf_counter()
    res = analyse(sim, int8, chunks, progress=progress)
    analysis_s = time.perf_counter() - t_analysis
    jump = first_jump(res.rows, settings.jump_db)
    log.info("analysed %d tensors in %.1f s; first jump: %s", len(res.rows), analysis_s,
             "none" if jump is None else f"{jump.node} (adds {jump.added_sqnr_db:.1f} dB, {jump.cause})")

    fp16 = worst_layers(res.rows, settings.worst)
    better = suggested_plan(plan, fp16, res.rows)
    after = sim.logits(x, int8 - set(fp16), batch=settings.batch_size) if fp16 else res.quantized
    suggestion = DebugSuggestion(tuple(fp16), layer_precisions_flag(better), metrics.sqnr_db(res.reference, res.quantized),
                                 metrics.sqnr_db(res.reference, after), "plan.json")
    criterion = (f"first node in graph order whose added SQNR (the node alone quantized, on FP32's inputs) is below "
                 f"{settings.jump_db:g} dB and below its inherited SQNR (the error it adds dominates the error it "
                 f"inherits)")
    doc = Debug(
        model=ModelRef(rm.name, graph.fingerprint(), onnx=str(rm.onnx_path)),
        data=DataRef(source.name, source.fingerprint(), int(len(x)),
                     batches[0].labels is not None and bool(any((b.labels >= 0).any() for b in batches)),
                     tuple(tuple(s) for s in source.skipped)),
        plan=PlanSummary(plan.name, plan.counts(), plan.default,
                         tuple(LayerChoice(lp.node, lp.precision, lp.reason) for lp in plan.layers.values())
                         if settings.precision.endswith(".json") else ()),
        calibration=calib_note, criterion=criterion, jump_db=float(settings.jump_db), batches=len(chunks), batch_size=len(chunks[0]),
        tensors=res.rows, first_jump=jump, suggestion=suggestion, notes=tuple(notes),
        timings={"ranges_s": calib_s, "analysis_s": analysis_s, "total_s": time.perf_counter() - t_start},
        files={k: str(out / k) for k in debug_outputs()})
    out.mkdir(exist_ok=True)
    with OutputSet(force=True) as outputs:      # the CLI checked the paths and their kinds before any work
        for name, data in (("debug.json", document_text(doc)), ("debug.html", debug_html(doc)),
                           ("plan.json", better.to_json())):
            outputs.add(out / name, flag="--out")
            outputs.stage(out / name, data)
        outputs.commit()
    return doc
