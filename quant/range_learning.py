"""``--recover ranges``: every INT8 activation's amax learned end to end on calibration images.

Why: on MobileNetV2 the divergence debugger shows the error of the all-INT8 model is activation error
(each layer's weight quantization adds 34-57 dB SQNR, median 44; its activation quantization 20-56 dB,
median 35, worst at the ReLU6 outputs feeding blocks 13-16's projections), which AdaRound
and bias correction, acting on weights, reach only indirectly; each range method picks a tensor's amax from that
tensor's own statistics (``auto``: its own layer's output error), never from what the error does downstream.

What: the scales ``s_t = amax_t / 127`` of every quantized activation of the all-INT8 placement (the one
the shipped Q/DQ model and cache use) are parameters of the simulated INT8 model, whose weights stay
exactly as shipped (per-channel fake quantization); ``log s_t`` is optimised by Adam to minimise how far the
model's first output is from FP32's over the calibration images, with the rounding's gradient passed straight
through (LSQ, Esser et al. 2020: ``d/ds [clamp(round(x / s)) s] = round(x / s) - x / s`` inside the range, the
clamp bound outside). How far: for a classifier (an ``(N, classes)`` output) the KL divergence of the INT8
softmax from FP32's, because the squared error of the logits is not top-1: measured on MobileNetV2 (744
held-out images) it raised the output SQNR 15.06 -> 16.94 dB while agreement with FP32 fell 94.09 -> 93.82 %;
for any other output the squared error over FP32's energy (``1 / SQNR``).
Only the ranges change, so the output is a ranges JSON / cache like any method's; TensorRT runs them as
it runs any calibration.

Held out: the images are split (every ``HOLDOUT``-th one is kept apart); the learned ranges are kept only if
they lower the held-out objective, else the starting ranges are kept (the report says which).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from ..core.numerics import QMAX, QMIN
from ..core.types import RangeSet, TensorRange
from .graph.onnx_graph import OnnxGraph
from .planner.simulate import QuantSim

log = logging.getLogger(__name__)

HOLDOUT = 5                   # every 5th recovery image measures the learned ranges, the others teach them


@dataclass(frozen=True)
class RangeLearning:
    """What learning the ranges did (in the recovery report)."""

    tensors: int
    steps: int
    train_images: int
    held_out_images: int
    held_out_sqnr_db: tuple[float, float]         # (starting ranges, learned ranges) on the held-out images
    held_out_loss: tuple[float, float]            # the same, of the objective (KL for a classifier)
    kept: str                                     # "learned" | "starting"
    max_change: float                             # largest |log(amax_learned / amax_start)|
    seconds: float


def _ste_fake_quant(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    v = x / s
    q = v + (torch.round(v) - v).detach()        # round, its gradient passed straight through
    return torch.clamp(q, QMIN, QMAX) * s


def _loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """What the ranges minimise: a classifier's (``(N, classes)`` output) KL divergence of the INT8 model's
    softmax from FP32's, averaged over images; any other output's squared error over FP32's energy."""
    if out.dim() == 2 and out.shape[1] > 1:
        p = torch.softmax(ref.double(), 1)
        return (p * (torch.log_softmax(ref.double(), 1) - torch.log_softmax(out.double(), 1))).sum(1).mean()
    return ((out.double() - ref.double()) ** 2).mean() / max(float((ref.double() ** 2).mean()), 1e-30)


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float(((out.double() - ref.double()) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float((ref.double() ** 2).sum()) / noise)


def learn_ranges(graph: OnnxGraph, ranges: RangeSet, images: np.ndarray, device: torch.device, *,
                 steps: int, lr: float = 5e-3, batch: int = 32, progress: bool = True) -> tuple[RangeSet, RangeLearning]:
    """The learned ranges of ``graph`` (all-INT8, starting from ``ranges``) on ``images`` (model-ready floats)
    and what was done; the other tensors of ``ranges`` are unchanged."""
    t0 = time.perf_counter()
    sim = QuantSim(graph, ranges, device)
    placement = sim.placement(sim.layers)
    tensors = placement.activation_tensors()
    ex = sim.ex                                   # its weights; run under autograd from here on
    ex.grad = True
    name_in, fixed = graph.inputs[0].name, graph.fixed_batch
    step = fixed or batch
    held = np.arange(len(images)) % HOLDOUT == HOLDOUT - 1 if len(images) >= 2 * HOLDOUT else np.zeros(len(images), bool)
    train, test = images[~held], images[held]
    if fixed is not None:
        train, test = train[:len(train) // fixed * fixed], test[:len(test) // fixed * fixed]
    if len(train) == 0:
        return ranges, RangeLearning(len(tensors), 0, 0, 0, (float("nan"),) * 2, (float("nan"),) * 2, "starting",
                                     0.0, 0.0)

    weights = {q.tensor: sim._weight(q) for q in placement.weights()}      # as shipped (per channel)
    start = torch.tensor([sim.scales[t] for t in tensors], dtype=torch.float32, device=ex.device)
    log_s = torch.nn.Parameter(start.log().clone())
    index = {t: i for i, t in enumerate(tensors)}

    def edges():
        s = log_s.exp()
        memo: dict[str, torch.Tensor] = {}
        out: dict[str, dict[int, object]] = {}
        for q in placement.quantizers:
            if q.kind == "weight":
                fn = lambda v, w=weights[q.tensor]: w                               # noqa: E731
            else:
                def fn(v, t=q.tensor):
                    if t not in memo:
                        memo[t] = _ste_fake_quant(v, s[index[t]])
                    return memo[t]
            for node, idx in q.consumers:
                out.setdefault(node, {})[idx] = fn
        return out

    def chunks(x: np.ndarray):
        return [torch.from_numpy(np.ascontiguousarray(x[i:i + step])).to(ex.device) for i in range(0, len(x), step)]

    first = graph.outputs[0]
    train_x, test_x = chunks(train), chunks(test)
    with torch.no_grad():                       # (ordinary tensors: inference-mode ones cannot join autograd)
        train_ref = [ex.run({name_in: x})[first] for x in train_x]
        test_ref = [ex.run({name_in: x})[first] for x in test_x]

    def held_out() -> tuple[float, float]:
        """(the loss, SQNR dB) of the held-out images."""
        if not test_x:
            return float("nan"), float("nan")
        with torch.no_grad():
            outs = torch.cat([ex.run({name_in: x}, edges=edges())[first] for x in test_x])
        ref = torch.cat(test_ref)
        return float(_loss(outs, ref)), _sqnr_db(ref, outs)

    loss0, before = held_out()
    opt = torch.optim.Adam([log_s], lr=lr)
    rng = np.random.default_rng(0)
    order: list[int] = []
    bar = tqdm(range(steps), desc="recover ranges", unit="step", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    for _ in bar:
        if not order:
            order = list(rng.permutation(len(train_x)))
        j = order.pop()
        out = ex.run({name_in: train_x[j]}, edges=edges())[first]
        loss = _loss(out, train_ref[j])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix_str(f"loss {float(loss.detach()):.4g}")
    bar.close()
    loss1, after = held_out()
    keep = not test_x or loss1 < loss0
    learned = (log_s.detach().exp() * QMAX).double().cpu().numpy()
    new = dict(ranges.ranges)
    if keep:
        for t, a in zip(tensors, learned):
            new[t] = TensorRange(t, float(np.float32(a)))
    change = float(np.abs(np.log(learned / (start.double().cpu().numpy() * QMAX))).max()) if tensors else 0.0
    report = RangeLearning(len(tensors), steps, len(train), len(test), (before, after), (loss0, loss1),
                           "learned" if keep else "starting", change, time.perf_counter() - t0)
    log.info("learned ranges: %d tensors, %d steps, held-out loss %.4g -> %.4g, SQNR %.2f -> %.2f dB (%s kept)",
             len(tensors), steps, loss0, loss1, before, after, report.kept)
    if not keep:
        return ranges, report
    # a learned tensor's ``auto`` choice no longer describes its amax: dropped (the starting ranges are in the report's
    # numbers only as the held-out SQNR they gave)
    return replace(ranges, ranges=new, method=f"{ranges.method}+learned",
                   methods={k: v for k, v in ranges.methods.items() if k not in index}), report
