"""``--method auto``: the pass that measures every candidate range on the layers each tensor feeds.

The objective ``E_t(a)`` and the choice are defined in :mod:`..calibrators.auto` (pure); this module
runs the graph. One pass of the PyTorch interpreter over the first ``Auto.images`` calibration images
observes, for every INT8 layer ``l`` of the all-INT8 placement
(:func:`.artifacts.placement.place_quantizers`), its FP32 inputs and its FP32 output ``f_l(x; W_l)``;
the layer is then re-run once per distinct candidate amax of each quantized input, with that input
fake-quantized (:func:`..core.numerics.fake_quant`, scale ``fp32(a) / 127`` exactly as shipped) and its
weight fake-quantized per channel as shipped (:func:`.artifacts.placement.fake_quant_weight`), and the
squared output error is accumulated in float64. A quantized tensor that no INT8 layer reads (a residual-Add or pooling input) is measured against itself;
a tensor no quantizer reads is judged from its histogram, without the pass. Nothing but the tensors a
layer still needs is kept (memory ~ the graph's widest cut, as in the statistics pass).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..calibrators.auto import LAYER_OUTPUT, TENSOR, TENSOR_HISTOGRAM, Auto, choose, chosen_counts, histogram_errors
from ..core.errors import ConfigError, DataError
from ..core.numerics import fake_quant
from ..core.types import CalibrationStats, Inputs, MethodChoice, TensorRange
from .artifacts.placement import Placement, fake_quant_weight, place_quantizers
from .artifacts.plan import quantizable_nodes
from .graph.interpreter import OPS, TorchGraphExecutor
from .graph.onnx_graph import OnnxGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class AutoPass:
    """What the auto pass runs on: the model the statistics belong to and its calibration images
    (``source``: a re-iterable image source; its first images are used)."""

    graph: OnnxGraph
    source: object
    device: torch.device = torch.device("cpu")
    batch_size: int = 32
    workers: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class _Layer:
    """One INT8 layer as the pass re-runs it: its interpreter entry, quantized weight and what it reads."""

    name: str
    op: str
    attrs: dict
    inputs: tuple[str, ...]
    output: str
    weight: torch.Tensor | None                   # the per-channel fake-quantized weight (input 1), if any
    quantized: tuple[tuple[str, tuple[int, ...]], ...]   # (tensor, the input indices reading it)


def all_int8(graph: OnnxGraph) -> Placement:
    """The placement of the all-INT8 plan (what ``int8:auto`` ships): the quantizers auto chooses for."""
    return place_quantizers(graph, quantizable_nodes(graph))


def layer_consumers(p: Placement) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """``tensor -> ((INT8 layer, input indices), ...)`` for every activation ``p`` quantizes; empty for one
    quantized only where no INT8 layer reads it (residual-Add, pooling inputs)."""
    out: dict[str, dict[str, list[int]]] = {}
    for q in p.activations():
        by_node = out.setdefault(q.tensor, {})
        for node, idx in q.consumers:
            if node in p.int8_nodes:
                by_node.setdefault(node, []).append(idx)
    return {t: tuple((n, tuple(ix)) for n, ix in by_node.items()) for t, by_node in out.items()}


def _scale(tensor: str, amax: float) -> float:
    return TensorRange(tensor, amax).scale         # fp32(amax) / 127: the scale the cache and Q/DQ ship


class _ErrorPass:
    """Accumulates ``sum_b ||f_l(Q_a(x)) - f_l(x)||^2`` per (tensor, layer, distinct amax) and
    ``sum_b ||f_l(x)||^2`` per layer; or, for a tensor without INT8 layers, its own error and energy."""

    def __init__(self, ex: TorchGraphExecutor, amaxes: Mapping[str, Sequence[float]], placement: Placement):
        self.ex = ex
        dev = ex.device
        self.scales = {t: [_scale(t, a) for a in sorted(set(am))] for t, am in amaxes.items()}
        self.index = {t: {a: k for k, a in enumerate(sorted(set(am)))} for t, am in amaxes.items()}
        entries = {node.name: (node, a, inputs) for node, a, inputs in ex.nodes}
        consumers = layer_consumers(placement)
        weight_axis = {q.consumers[0][0]: q.axis for q in placement.weights()}
        reads: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for t in amaxes:
            for node, idxs in consumers[t]:
                reads.setdefault(node, []).append((t, idxs))
        self.layers: dict[str, _Layer] = {}
        for name, quantized in reads.items():
            node, attrs, inputs = entries[name]
            w = None
            if name in weight_axis and inputs[1] in ex.consts:
                w = fake_quant_weight(ex.consts[inputs[1]], weight_axis[name])
            self.layers[name] = _Layer(name, node.op_type, attrs, tuple(inputs), node.output[0], w, tuple(quantized))
        self.own = [t for t in amaxes if not consumers[t]]
        self.by_output = {}
        for layer in self.layers.values():
            self.by_output.setdefault(layer.output, []).append(layer)
        # the activation inputs each layer reads when it is re-run: kept from their production to its output
        self.needed: dict[str, int] = {}
        for layer in self.layers.values():
            for n in layer.inputs:
                if n and n not in ex.consts:
                    self.needed[n] = self.needed.get(n, 0) + 1
        self.watch = set(self.own) | set(self.needed) | set(self.by_output)
        z = lambda k: torch.zeros(k, dtype=torch.float64, device=dev)   # noqa: E731
        self.sse = {(t, layer.name): z(len(self.scales[t]))
                    for layer in self.layers.values() for t, _ in layer.quantized}
        self.energy = {name: z(1) for name in self.layers}
        self.own_sse = {t: z(len(self.scales[t])) for t in self.own}
        self.own_energy = {t: z(1) for t in self.own}
        self.seen: set[str] = set()
        self._store: dict[str, torch.Tensor] = {}
        self._uses: dict[str, int] = {}
        self._buf: torch.Tensor | None = None        # the fake-quantized input, rewritten in place

    def _quantized(self, x: torch.Tensor, s: float) -> torch.Tensor:
        if self._buf is None or self._buf.numel() < x.numel() or self._buf.device != x.device:
            self._buf = torch.empty(x.numel(), dtype=torch.float32, device=x.device)
        return fake_quant(x, s, out=self._buf[:x.numel()].view(x.shape))

    def run(self, feeds: Mapping[str, torch.Tensor]) -> None:
        self._store, self._uses = {}, dict(self.needed)
        self.ex.run(feeds, observe=self.observe, watch=self.watch)
        self._store = {}

    def observe(self, name: str, v: torch.Tensor) -> None:
        self.seen.add(name)
        if v.dtype != torch.float32:
            v = v.float()
        if name in self.own_sse:
            acc = self.own_sse[name]
            for k, s in enumerate(self.scales[name]):
                acc[k] += _sq_norm(self._quantized(v, s).sub_(v))
            self.own_energy[name] += _sq_norm(v)
        if name in self.needed:
            self._store[name] = v
        for layer in self.by_output.get(name, ()):
            self._layer(layer, v)

    def _layer(self, layer: _Layer, y: torch.Tensor) -> None:
        args = [self._store[n] if n in self._store else (self.ex.consts[n] if n else None) for n in layer.inputs]
        if layer.weight is not None:
            args[1] = layer.weight
        fn = OPS[layer.op]
        for t, idxs in layer.quantized:
            acc = self.sse[(t, layer.name)]
            for k, s in enumerate(self.scales[t]):
                a = list(args)
                xq = self._quantized(args[idxs[0]], s)
                for i in idxs:
                    a[i] = xq
                while a and a[-1] is None:
                    a.pop()
                acc[k] += _sq_norm(fn(*a, **layer.attrs).sub_(y))
        self.energy[layer.name] += _sq_norm(y)
        for n in layer.inputs:                       # free what no other layer of this batch still reads
            if n in self._uses:
                self._uses[n] -= 1
                if self._uses[n] == 0:
                    self._store.pop(n, None)

    def errors(self, amaxes: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
        """``E_t(a)`` for every candidate of every tensor, aligned with ``amaxes[t]``."""
        def ratio(sse: torch.Tensor, energy: torch.Tensor) -> np.ndarray:
            e = float(energy.item())
            return sse.cpu().numpy() / (e if e > 0 else 1.0)

        distinct: dict[str, np.ndarray] = {t: ratio(self.own_sse[t], self.own_energy[t]) for t in self.own}
        for layer in self.layers.values():
            for t, _ in layer.quantized:
                r = ratio(self.sse[(t, layer.name)], self.energy[layer.name])
                distinct[t] = distinct[t] + r if t in distinct else r
        return {t: np.array([distinct[t][self.index[t][a]] for a in am]) for t, am in amaxes.items()}


def _sq_norm(d: torch.Tensor) -> torch.Tensor:
    """``||d||^2`` in one read of ``d`` (float32 reduction, accumulated across batches in float64)."""
    return torch.linalg.vector_norm(d.reshape(-1)).double().square()


def _batches(run: AutoPass, limit: int) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """The first ``limit`` calibration items as ``(model-ready device tensors by input name, rows)`` (a
    model's fixed batch is fed whole: a short last batch is left out, as in the statistics pass)."""
    fixed = run.graph.fixed_batch
    size = fixed or min(run.batch_size, limit)
    taken = 0
    for b in run.source.batches(size, workers=run.workers, progress=False, pixels=True):
        images = b.images[:limit - taken] if fixed is None else b.images
        if fixed is not None and len(images) != fixed:
            continue
        if isinstance(images, Inputs):          # several inputs, model-ready: a tensor per input name
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v)).to(run.device) for k, v in images.arrays.items()}
        else:
            x = torch.from_numpy(np.ascontiguousarray(images)).to(run.device)
            if x.dtype == torch.uint8:
                x = run.source.preprocess.normalize_torch(x)
            feeds = {run.graph.inputs[0].name: x}
        taken += len(images)
        yield feeds, len(images)
        if taken >= limit:
            return


def measure_errors(run: AutoPass, amaxes: Mapping[str, Sequence[float]], images: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], int]:
    """``E_t(a)`` (see :mod:`..calibrators.auto`) for every tensor of ``amaxes`` (tensors the all-INT8
    placement quantizes) and each of its amaxes, on the first ``images`` calibration images.
    Returns ``(errors aligned with amaxes, the INT8 layers each tensor feeds, images used)``."""
    placement = all_int8(run.graph)
    consumers = layer_consumers(placement)
    stray = [t for t in amaxes if t not in consumers]
    if stray:
        raise ConfigError("auto: tensors no quantizer reads have no pass to measure them", subject=", ".join(stray[:5]),
                          hint="their own error comes from the histogram (calibrators.auto.histogram_errors)")
    ex = TorchGraphExecutor(run.graph, run.device,
                            unsupported_hint="--method auto re-runs the INT8 layers with PyTorch: pick one method "
                                             "(--method entropy | mse | percentile | minmax) for this model")
    p = _ErrorPass(ex, amaxes, placement)
    used = 0
    total = min(images, len(run.source)) if hasattr(run.source, "__len__") else images
    with tqdm(total=total, unit="img", desc="auto: layer errors", file=sys.stderr, disable=not run.progress,
              dynamic_ncols=True) as bar:
        for feeds, rows in _batches(run, images):
            p.run(feeds)
            used += rows
            bar.update(rows)
    if used == 0:
        raise DataError("no images for the auto pass", subject=getattr(run.source, "name", "data"),
                        expected=f"at least {run.graph.fixed_batch or 1} readable image(s)",
                        hint="calibrate on more images, or pick one method (--method entropy)")
    missing = [t for t in amaxes if t not in p.seen]
    if missing:
        raise ConfigError("the auto pass never computed tensors of the statistics", subject=", ".join(missing[:5]),
                          hint="the statistics are from another model: calibrate this model again")
    return p.errors(amaxes), {t: tuple(n for n, _ in consumers[t]) for t in amaxes}, used


def choose_ranges(stats: CalibrationStats, auto: Auto, run: AutoPass) -> tuple[dict[str, MethodChoice], int]:
    """Per tensor of ``stats`` (all but all-zero ones), the candidate that minimises ``E_t``: measured by the
    pass for the tensors the Q/DQ model quantizes, from the histogram for the others. Also returns the
    number of images the pass ran on."""
    if run.graph.fingerprint() != stats.model_fingerprint:
        raise ConfigError("statistics are from another model", subject="--method auto",
                          got=f"model fingerprint {stats.model_fingerprint[:12]}",
                          expected=run.graph.fingerprint()[:12],
                          hint="pass the model the statistics were collected on (--onnx MODEL.onnx or --model NAME)")
    t0 = time.perf_counter()
    hists = [h for h in stats.histograms.values() if h.amax > 0]
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:   # NumPy releases the GIL
        cands = dict(zip((h.name for h in hists), pool.map(auto.candidates, hists)))
    t1 = time.perf_counter()
    quantized = set(all_int8(run.graph).activation_tensors())
    errors, consumers, used = measure_errors(run, {t: [c.amax for c in cs] for t, cs in cands.items()
                                                   if t in quantized}, auto.images)
    choices = {}
    for t, cs in cands.items():
        if t in errors:
            choices[t] = choose(cs, errors[t], objective=LAYER_OUTPUT if consumers[t] else TENSOR,
                                consumers=consumers[t])
        else:
            choices[t] = choose(cs, histogram_errors(stats.histograms[t], [c.amax for c in cs]),
                                objective=TENSOR_HISTOGRAM)
    log.info("auto: candidates %.2f s, layer errors on %d image(s) %.2f s; chosen: %s", t1 - t0, used,
             time.perf_counter() - t1, ", ".join(f"{k} {v}" for k, v in chosen_counts(choices.values()).items()))
    return choices, used
