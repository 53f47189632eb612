"""The planner's simulator: fake quantization of any subset of layers on the FP32 graph with exactly the
quantizers the shipped Q/DQ model has (one placement rule: :func:`..artifacts.placement.place_quantizers`)."""

from __future__ import annotations

import numpy as np
import torch

from ...core.numerics import fake_quant
from ...core.types import RangeSet, feeds
from ..artifacts.placement import Placement, Quantizer, fake_quant_weight, place_quantizers
from ..artifacts.plan import quantizable_nodes
from ..artifacts.qdq import check_ranges
from ..graph.interpreter import TorchGraphExecutor
from ..graph.onnx_graph import OnnxGraph, run_batched


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

    def set_constant(self, name: str, value: torch.Tensor) -> None:
        """Replace a weight or bias of the simulated graph (accuracy recovery changes layers one by one); a
        weight's fake quantization is recomputed from the new values, with the same per-channel rule."""
        self.ex.consts[name] = value.to(self.ex.device)
        for key in [k for k in self._weights if k[0] == name]:
            del self._weights[key]

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
        out = self.ex.run(fed, edges=self.edges(int8))
        return tuple(out.values())

    def _batched(self, x: np.ndarray, int8: set[str], batch: int, every: bool):
        dev = self.ex.device

        def run(chunk):
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
