"""Compiled forwards of the ONNX interpreter: ``torch.compile`` over :class:`.TorchGraphExecutor`'s nodes.

The interpreter runs ~100 nodes one by one from Python, and fake quantization adds four elementwise
kernels (divide, round, clamp, multiply) per quantized tensor. :class:`CompiledGraph` turns the
executor's node list into one plain Python function (a closure over the nodes, their attributes and
the shape arithmetic) and hands it to ``torch.compile``: inductor fuses the convolutions' epilogues
(bias + ReLU6) with the fake quantization that follows them into one kernel, and the Python loop
disappears.

Fake quantization is *tensor-driven*, so one compiled graph serves every INT8 plan: each quantizer
slot (a consumer's input) reads ``where(flags[i], fake_quant(v, scales[t]), v)`` with ``flags`` a
boolean tensor input, and the weights a consumer reads (FP32 or fake-quantized) are inputs too. Changing
the plan, or a weight (accuracy recovery), changes input values only: no recompilation.

Shapes are static (``dynamic=False``): one compilation per input shape (the batch size; a last partial
batch is a second one), and the graph's shape arithmetic (``Shape -> Gather -> Concat -> Reshape``) is
evaluated once per shape on the real shapes, then baked in as constants. The seconds spent compiling
are counted apart (:attr:`CompiledGraph.compile_s`). The function is traced whole (``fullgraph=True``);
an operator that breaks the graph is logged and the graph compiled in pieces. When compilation fails (no C compiler for the CPU
backend, an operator inductor cannot lower, ...) the failure is logged once and :meth:`CompiledGraph.run`
answers ``None``: the caller runs the interpreter instead; a user's run never fails because of it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import types
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ...core.defaults import COMPILE_CHOICES, DEFAULT_COMPILE
from ...core.errors import ConfigError, QuantError
from ...core.numerics import fake_quant
from ...core.runtime import strict_fp32
from .interpreter import OPS, TorchGraphExecutor, _ints, _softmax

log = logging.getLogger(__name__)

__all__ = ["COMPILE_CHOICES", "DEFAULT_COMPILE", "CUDA_ENGINE_MODE", "ActivationSlot", "CompiledGraph", "WeightSlot",
           "compile_enabled"]

CUDA_ENGINE_MODE = "max-autotune-no-cudagraphs"
"""The inductor mode of a compiled engine on CUDA (the engine captures its own CUDA graph around it)."""

# inputs the interpreter reads as Python integers (shapes, axes, pads): baked as lists when constant
_INT_SLOTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,), "Expand": (1,),
    "Split": (1,), "ReduceMean": (1,), "Pad": (1,), "ConstantOfShape": (0,)}

_serial = 0


def _passed(v: torch.Tensor) -> bool:
    """A constant handed to the compiled function as an input (weights: their values may change); the
    small integer tensors the interpreter keeps on the CPU are baked in instead."""
    return v.is_floating_point() or v.numel() > 64 or v.device.type != "cpu"


def compile_enabled(choice: str, device: torch.device | str) -> bool:
    """Whether ``--compile CHOICE`` compiles on ``device`` (auto: on CUDA only)."""
    if choice not in COMPILE_CHOICES:
        raise ConfigError("unknown compile choice", subject="--compile", got=repr(choice),
                          expected=" | ".join(COMPILE_CHOICES))
    return choice == "on" or (choice == "auto" and torch.device(device).type == "cuda")


@dataclass(frozen=True)
class ActivationSlot:
    """A consumer's input that may read the fake-quantized tensor: ``node``'s input ``index`` reads
    ``tensor`` (its scale: ``scales[scale_index]``; enabled by ``flags[position]``)."""
    node: str
    index: int
    tensor: str
    scale_index: int


@dataclass(frozen=True)
class WeightSlot:
    """A consumer's input whose value is given per call (the FP32 weight or its fake quantization)."""
    node: str
    index: int
    tensor: str


class CompiledGraph:
    """``torch.compile`` of an executor's graph with optional fake-quant slots (see the module docstring).

    ``run(feeds, weights=..., flags=..., scales=...)``: the graph's outputs by name, or ``None`` when
    compiling failed (then, and from then on, the caller runs the interpreter)."""

    def __init__(self, ex: TorchGraphExecutor, *, activations: Sequence[ActivationSlot] = (),
                 weights: Sequence[WeightSlot] = (), mode: str | None = None, label: str = "graph",
                 backend: str = "inductor"):
        self.ex = ex
        self.activations = tuple(activations)
        self.weights = tuple(weights)
        self.mode = None if mode in (None, "default") else mode
        self.label = label
        self.backend = backend                    # "eager"/"aot_eager": the tracing without code generation
        self.failed = False
        self.compile_s = 0.0                      # seconds spent in first calls (compiling), all shapes
        self.compiles = 0
        self._fns: dict[tuple, object] = {}
        self._none: tuple[torch.Tensor, torch.Tensor] | None = None      # no slots: empty flags and scales
        self._partial = False                     # True once the graph did not trace whole (fullgraph=False)
        self._static_nodes = self._find_static_nodes()

    # -- building ----------------------------------------------------------------------------------
    def _find_static_nodes(self) -> set[int]:
        """Nodes whose outputs depend on the input shapes only (Shape and the arithmetic on it)."""
        static_names: set[str] = set()
        out = set()
        for i, (node, _, inputs) in enumerate(self.ex.nodes):
            names = [n for n in inputs if n]
            if node.op_type == "Shape" or (names and all(n in self.ex.consts or n in static_names for n in names)):
                out.add(i)
                static_names.update(n for n in node.output if n)
        return out

    def _static_values(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs of the shape-only nodes for these input shapes (one interpreted forward)."""
        if not self._static_nodes:
            return {}
        values: dict[str, torch.Tensor] = {}

        def tap(i, _inputs, outs):
            if i in self._static_nodes:
                node = self.ex.nodes[i][0]
                values.update((n, v) for n, v in zip(node.output, outs) if n)
        self.ex.run(feeds, tap=tap)
        return values

    def _const_inputs(self, static: dict) -> list[str]:
        """The constants the compiled function takes as inputs: those some node reads other than through a
        weight slot (a weight slot's FP32 value must not alias a constant input: dynamo guards on aliasing,
        and a plan that quantizes the weight would then compile a second graph)."""
        slots = {(s.node, s.index) for s in self.weights}
        read = {name for i, (node, _, inputs) in enumerate(self.ex.nodes) if i not in self._static_nodes
                for j, name in enumerate(inputs) if name and (node.name, j) not in slots}
        return [k for k, v in self.ex.consts.items() if k in read and k not in static and _passed(v)]

    def _build(self, static: dict[str, torch.Tensor], const_names: list[str], input_names: list[str]):
        ex = self.ex
        by_node: dict[str, list] = {}
        for k, s in enumerate(self.activations):
            by_node.setdefault(s.node, []).append(("a", s.index, k, s.scale_index))
        for k, s in enumerate(self.weights):
            by_node.setdefault(s.node, []).append(("w", s.index, k, 0))
        steps = []
        for i, (node, a, inputs) in enumerate(ex.nodes):
            if i in self._static_nodes:
                continue
            int_slots = _INT_SLOTS.get(node.op_type, ())
            getters = []
            weight_slots = {j for kind, j, _, _ in by_node.get(node.name, ()) if kind == "w"}
            for j, name in enumerate(inputs):
                if not name or j in weight_slots:         # absent, or given per call
                    getters.append(("none", None))
                    continue
                fixed = static.get(name)
                if fixed is None and name in ex.consts and not _passed(ex.consts[name]):
                    fixed = ex.consts[name]                 # a small integer constant (shape, axes)
                if fixed is None:
                    getters.append(("env", name))
                else:
                    lit = _ints(fixed) if j in int_slots and not fixed.is_floating_point() else fixed
                    getters.append(("lit", lit))
            steps.append((node.op_type, tuple(node.output), a, tuple(getters), tuple(by_node.get(node.name, ()))))
        outputs = tuple(ex.graph.outputs)
        opset = ex.graph.opset

        def forward(inputs, consts, weights, flags, scales):
            env = dict(zip(const_names, consts))
            env.update(zip(input_names, inputs))
            memo = {}
            for op, outs, a, getters, slots in steps:
                args = [env[v] if kind == "env" else v for kind, v in getters]
                for kind, j, k, t in slots:
                    if kind == "w":
                        args[j] = weights[k]
                    else:
                        if t not in memo:
                            memo[t] = fake_quant(args[j], scales[t])
                        args[j] = torch.where(flags[k], memo[t], args[j])
                while args and args[-1] is None:
                    args.pop()
                out = _softmax(args[0], opset, **a) if op == "Softmax" else OPS[op](*args, **a)
                for name, val in zip(outs, out if isinstance(out, (tuple, list)) else (out,)):
                    if name:
                        env[name] = val
            return tuple(env[o] for o in outputs)

        # a code object of its own: dynamo's cache (and its recompile limit) is per code object
        global _serial
        _serial += 1
        code = forward.__code__.replace(co_name=f"trtquant_forward_{_serial}")
        fn = types.FunctionType(code, forward.__globals__, code.co_name, None, forward.__closure__)
        # one graph or an error: a graph break inside the node loop would make dynamo skip the whole frame and
        # compile each operator function alone (slower than the interpreter); run() then retries without it
        full = not self._partial
        if self.backend != "inductor":
            return torch.compile(fn, backend=self.backend, dynamic=False, fullgraph=full)
        return torch.compile(fn, mode=self.mode, dynamic=False, fullgraph=full)

    # -- running -----------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, torch.Tensor], *, weights: Sequence[torch.Tensor] = (),
            flags: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
        """The outputs by name (``weights``: one tensor per weight slot; ``flags``: bool per activation
        slot; ``scales``: float32 per scale index), or ``None`` when compiling failed."""
        if self.failed:
            return None
        ex = self.ex
        fed = {gi.name: feeds[gi.name].to(ex.device) for gi in ex.graph.inputs if gi.name in feeds}
        if len(fed) != len(ex.graph.inputs):
            return None                                   # the interpreter names the missing input
        names = list(fed)
        key = tuple((tuple(v.shape), v.dtype) for v in fed.values())
        if flags is None or scales is None:
            if self._none is None:
                self._none = (torch.zeros(0, dtype=torch.bool, device=ex.device),
                              torch.zeros(0, dtype=torch.float32, device=ex.device))
            flags = self._none[0] if flags is None else flags
            scales = self._none[1] if scales is None else scales
        fresh = key not in self._fns
        t0 = time.perf_counter()
        while True:
            try:
                outs = self._call(key, fed, names, weights, flags, scales, fresh)
                break
            except QuantError:
                raise                           # the interpreter's own error (a bad input): it names the cause
            except Exception as err:            # noqa: BLE001 - any compiler failure: the interpreter runs instead
                if not fresh:
                    raise
                self._fns.pop(key, None)
                what = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                if not self._partial and _is_graph_break(err):
                    self._partial = True
                    log.warning("the graph of %s does not trace into one torch.compile graph (%s); compiling "
                                "it in pieces", self.label, what)
                    continue
                self.failed = True
                log.warning("torch.compile of %s failed (%s); running the interpreter instead", self.label, what)
                return None
        if fresh:
            took = time.perf_counter() - t0
            self.compile_s += took
            self.compiles += 1
            log.info("compiled %s for input shapes %s in %.1f s (mode %s)", self.label,
                     [tuple(v.shape) for v in fed.values()], took, self.mode or "default")
        return dict(zip(ex.graph.outputs, outs))

    def _call(self, key, fed, names, weights, flags, scales, fresh: bool):
        """One forward of the compiled function for ``key`` (built first when ``fresh``)."""
        ex = self.ex
        with torch.inference_mode(), (contextlib.nullcontext() if ex.allow_tf32 else strict_fp32()):
            if fresh:
                static = self._static_values(fed)
                const_names = self._const_inputs(static)
                self._fns[key] = (self._build(static, const_names, names), const_names)
            fn, const_names = self._fns[key]
            outs = fn([fed[n] for n in names], [ex.consts[k] for k in const_names], list(weights), flags, scales)
            if fresh and ex.device.type == "cuda":
                torch.cuda.synchronize(ex.device)
        return outs

def _is_graph_break(err: Exception) -> bool:
    """Whether ``err`` is dynamo refusing a graph break under ``fullgraph=True`` (not a compiler failure)."""
    from torch._dynamo import exc

    return isinstance(err, (exc.Unsupported, getattr(exc, "UserError", exc.Unsupported)))
