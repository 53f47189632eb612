"""The planner's simulator: fake quantization of any subset of layers on the FP32 graph with exactly the
quantizers the shipped Q/DQ model has (one placement rule: :func:`..artifacts.placement.place_quantizers`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ...core.numerics import fake_quant
from ...core.types import RangeSet, feeds
from ..artifacts.placement import Placement, Quantizer, fake_quant_weight, place_quantizers
from ..artifacts.plan import quantizable_nodes
from ..artifacts.qdq import check_ranges
from ..graph.compiled import ActivationSlot, CompiledGraph, WeightSlot
from ..graph.interpreter import TorchGraphExecutor
from ..graph.onnx_graph import OnnxGraph, run_batched

log = logging.getLogger(__name__)


class QuantSim:
    """Fake-quantize any subset of layers on the FP32 graph, fast, with exactly the quantizers that
    :func:`.placement.place_quantizers` gives the shipped Q/DQ model (same tensors, same consumers,
    same scales).

    ``compile=True``: :meth:`run_all` runs one ``torch.compile``'d graph (:mod:`..graph.compiled`) for
    every plan: each quantizer edge of the all-INT8 placement is a slot switched by a flag tensor, so a
    new plan changes input values, not the compiled code (a plan with an edge outside those slots
    rebuilds it once, with the union). :meth:`edges` and the interpreter stay what debug and recovery
    step through; a failed compilation falls back to them (logged)."""

    def __init__(self, graph: OnnxGraph, ranges: RangeSet, device: torch.device, compile: bool = False,
                 compile_mode: str | None = None):
        self.graph = graph
        self.ranges = ranges
        self.ex = TorchGraphExecutor(graph, device, unsupported_hint="sweep simulates the plans with PyTorch, so it "
                                                                     "needs a model of the operators it supports")
        self.layers = quantizable_nodes(graph)
        self.scales = {n: r.scale for n, r in ranges.ranges.items()}
        self._placements: dict[frozenset, Placement] = {}
        self._weights: dict[tuple[str, int], torch.Tensor] = {}
        self.placement(self.layers)           # checks the ranges cover every quantized tensor, up front
        self.compile, self.compile_mode = compile, compile_mode
        self.compiled: CompiledGraph | None = None
        self._act_slots: dict[tuple[str, int], str] = {}          # edge -> tensor
        self._weight_slots: dict[tuple[str, int], Quantizer] = {}  # edge -> its weight quantizer
        self._plan_inputs: dict[frozenset, tuple] = {}
        self._compile_s_before = 0.0

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling (every rebuild and input shape; 0 when not compiled)."""
        return self._compile_s_before + (self.compiled.compile_s if self.compiled is not None else 0.0)

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

    def set_constant(self, name: str, value: torch.Tensor) -> None:
        """Replace a weight or bias of the simulated graph (accuracy recovery changes layers one by one); a
        weight's fake quantization is recomputed from the new values, with the same per-channel rule."""
        self.ex.consts[name] = value.to(self.ex.device)
        for key in [k for k in self._weights if k[0] == name]:
            del self._weights[key]
        self._plan_inputs.clear()

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

    def run_all(self, x: torch.Tensor | dict, int8: set[str]) -> tuple[torch.Tensor, ...]:
        """Every output of the graph, in its output order, with ``int8`` layers quantized (``x``: the one
        input's tensor, or a tensor per input name)."""
        fed = x if isinstance(x, dict) else {self.graph.inputs[0].name: x}
        if self.compile:
            out = self._run_compiled(fed, int8)
            if out is not None:
                return tuple(out.values())
            self.compile = False                  # logged by CompiledGraph: the interpreter from now on
        out = self.ex.run(fed, edges=self.edges(int8))
        return tuple(out.values())

    def _slots_cover(self, p: Placement) -> bool:
        """Whether every quantizer edge of ``p`` has its slot (an edge reads one tensor whatever the plan: only
        which edges are quantized varies; a weight shared by two layers may have other consumers in ``p``)."""
        for q in p.quantizers:
            for edge in q.consumers:
                if q.kind == "weight":
                    slot = self._weight_slots.get(edge)
                    if slot is None or (slot.tensor, slot.axis) != (q.tensor, q.axis):
                        return False
                elif self._act_slots.get(edge) != q.tensor:
                    return False
        return True

    def _rebuild(self, p: Placement) -> None:
        """Slots for every edge of the all-INT8 placement, those already built and ``p``'s; a new graph."""
        for pl in (self.placement(self.layers), p):
            for q in pl.quantizers:
                for edge in q.consumers:
                    if q.kind == "weight":
                        self._weight_slots[edge] = q
                    else:
                        self._act_slots[edge] = q.tensor
        if self.compiled is not None:
            self._compile_s_before += self.compiled.compile_s
            log.info("a plan quantizes an edge outside the compiled slots: compiling again with the union")
        tensors = sorted(set(self._act_slots.values()))
        index = {t: i for i, t in enumerate(tensors)}
        self._scales = torch.tensor([self.scales[t] for t in tensors], dtype=torch.float32, device=self.ex.device)
        self.compiled = CompiledGraph(
            self.ex, activations=[ActivationSlot(n, i, t, index[t]) for (n, i), t in self._act_slots.items()],
            weights=[WeightSlot(n, i, q.tensor) for (n, i), q in self._weight_slots.items()],
            mode=self.compile_mode, label="the quantization simulator")
        self._plan_inputs.clear()

    def _run_compiled(self, fed: dict, int8) -> dict | None:
        key = frozenset(int8)
        if key not in self._plan_inputs:
            p = self.placement(key)
            if self.compiled is None or not self._slots_cover(p):
                self._rebuild(p)
            edges = p.edges()
            flags = torch.tensor([edge in edges for edge in self._act_slots], dtype=torch.bool, device=self.ex.device)
            weights = [self._weight(q) if edge in edges else self.ex.consts[q.tensor]
                       for edge, q in self._weight_slots.items()]
            self._plan_inputs[key] = (flags, weights)
        flags, weights = self._plan_inputs[key]
        return self.compiled.run(fed, weights=weights, flags=flags, scales=self._scales)

    def resident(self, x):
        """``x`` copied once to the simulator's CUDA device where it fits in a quarter of the free memory (a
        sweep's many passes over the same images then copy nothing from the host); else ``x`` itself."""
        dev = self.ex.device
        if (dev.type != "cuda" or not isinstance(x, np.ndarray) or self.graph.fixed_batch is not None
                or len(self.graph.inputs) != 1):
            return x
        free, _ = torch.cuda.mem_get_info(dev)
        return torch.from_numpy(x).to(dev) if x.nbytes <= free // 4 else x

    def _batched(self, x: np.ndarray | torch.Tensor, int8: set[str], batch: int, every: bool):
        dev = self.ex.device

        def run(chunk):
            if isinstance(chunk, torch.Tensor):            # resident on the device (:meth:`resident`)
                outs = self.run_all({self.graph.inputs[0].name: chunk}, int8)
            else:
                fed = feeds([gi.name for gi in self.graph.inputs], chunk)
                outs = self.run_all({k: torch.from_numpy(v).to(dev) for k, v in fed.items()}, int8)
            host = tuple(o.float().cpu().numpy() for o in (outs if every else outs[:1]))
            return host if every else host[0]
        return run_batched(run, lambda lo, hi: x[lo:hi], len(x), batch, self.graph.fixed_batch)

    def logits(self, x: np.ndarray, int8: set[str], batch: int = 64) -> np.ndarray:
        """The first output over ``x``, in batches."""
        return self._batched(x, int8, batch, every=False)

    def outputs(self, x: np.ndarray, int8: set[str], batch: int = 64) -> tuple[np.ndarray, ...]:
        """Every output over ``x``, in batches (what a user's metric reads)."""
        return self._batched(x, int8, batch, every=True)
