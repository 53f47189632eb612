"""The planner's search: greedy FP16 fallback in sensitivity order with bisection, and the plan it yields."""

from __future__ import annotations
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ...core.targets import Target
from ..artifacts.plan import LayerPrecision, PrecisionPlan, quantizable_nodes
from ..graph.onnx_graph import OnnxGraph


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
                  prune_order: Sequence[str] | None = None, clock: Callable[[], float] = time.perf_counter,
                  fmt: Callable[[float], str] = lambda v: f"{v * 100:.2f}%") -> SearchResult:
    """Greedy FP16 selection in ``order`` with whole-model verification, then pruning.

    ``evaluate(fp16_set) -> metric`` measures the mixed model; ``meets(metric)`` is the target; ``cost(fp16)``
    is what the plan costs (default: its number of FP16 layers). Pruning tries the FP16 layers in
    ``prune_order`` (default: the reverse of ``order``, least sensitive first). The result is the cheapest
    evaluated plan that meets the target (fewer FP16 layers on a tie).
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
    chosen = list(fp16)
    for layer in ([n for n in prune_order if n in chosen] if prune_order is not None else reversed(chosen)):
        if over_budget():
            res.partial = True
            break
        trial = [x for x in fp16 if x != layer]
        if measure(trial, f"- {layer} back to INT8"):
            fp16 = trial
        else:
            res.path[-1] = Step(res.path[-1].fp16, res.path[-1].accuracy, res.path[-1].cost, False,
                                f"- {layer} back to INT8 (kept FP16)")
    best = min((s for s in res.path if s.met), key=lambda s: (s.cost, len(s.fp16)))
    res.fp16 = best.fp16
    res.note = f"{len(res.fp16)} layer(s) in FP16 meet the target"
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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(metric, cost)`` that no other point beats on both (a higher or equal metric at a
    lower or equal cost, one of them strictly), by increasing cost; of equal points the first is kept."""
    front = []
    for i, (m, c) in enumerate(points):
        dominated = any((m2 >= m and c2 <= c and (m2 > m or c2 < c)) or ((m2, c2) == (m, c) and j < i)
                        for j, (m2, c2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))
