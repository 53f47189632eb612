"""Precision plans: per ONNX node, ``int8 | fp16 | fp32``, with a reason.

A plan names *layers* (ONNX node names, which are TensorRT layer names for an ONNX model). Presets:
``fp32`` (everything FP32), ``fp16`` (every float node FP16), ``int8`` (every quantizable node,
i.e. Conv/ConvTranspose/Gemm/MatMul with constant weights, INT8; everything else FP32). Any other
plan is a versioned JSON file (``PLAN_FORMAT``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ...core.errors import PlanError
from ...core.fileio import atomic_write_text, json_text, read_json_document
from ..graph.onnx_graph import OnnxGraph
from .placement import INT8_LAYERS, is_int8_layer

PLAN_FORMAT = "trtquant-plan/1"
PRECISIONS = ("int8", "fp16", "fp32")
PRESETS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class LayerPrecision:
    node: str
    precision: str
    reason: str = ""
    sensitivity: float | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise PlanError("unknown precision", subject=f"node {self.node!r}", got=repr(self.precision),
                            expected=" | ".join(PRECISIONS))


@dataclass(frozen=True, eq=False)
class PrecisionPlan:
    """``layers`` lists every node whose precision the plan decides; other nodes run in ``default``."""

    name: str
    layers: Mapping[str, LayerPrecision]
    default: str = "fp32"
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if self.default not in ("fp16", "fp32"):
            raise PlanError("invalid default precision", subject=f"plan {self.name!r}", got=repr(self.default),
                            expected="fp16 or fp32 (INT8 needs ranges, so it is set per layer)")

    def precision(self, node: str) -> str:
        lp = self.layers.get(node)
        return lp.precision if lp else self.default

    def nodes(self, precision: str) -> list[str]:
        return [n for n, lp in self.layers.items() if lp.precision == precision]

    def counts(self) -> dict[str, int]:
        return {p: len(self.nodes(p)) for p in PRECISIONS}

    # -- I/O -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        doc = {"format": PLAN_FORMAT, "name": self.name, "default": self.default, "meta": dict(self.meta),
               "layers": [{"node": lp.node, "precision": lp.precision, "reason": lp.reason,
                           **({"sensitivity": lp.sensitivity} if lp.sensitivity is not None else {})}
                          for lp in self.layers.values()]}
        return json_text(doc)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PrecisionPlan":
        path = Path(path)
        doc = read_json_document(path, fmt=PLAN_FORMAT, what="plan file", error=PlanError,
                                 hint="use a preset (" + ", ".join(PRESETS) + ") or a plan JSON written by trtquant")
        layers = {}
        try:
            for entry in doc["layers"]:
                lp = LayerPrecision(entry["node"], entry["precision"], entry.get("reason", ""),
                                    entry.get("sensitivity"))
                if lp.node in layers:
                    raise PlanError("node listed twice", subject=f"{path}: node {lp.node!r}")
                layers[lp.node] = lp
        except (KeyError, TypeError) as err:
            raise PlanError("bad layer entry in plan", subject=str(path), got=str(err)[:200],
                            expected='{"node": ..., "precision": "int8|fp16|fp32", "reason": ...}') from err
        return cls(name=doc.get("name", path.stem), layers=layers, default=doc.get("default", "fp32"),
                   meta=doc.get("meta", {}))

    def check(self, graph: OnnxGraph) -> None:
        """Every named node exists; INT8 only on quantizable nodes. Unknown names get close matches."""
        nodes = {n.name: n for n in graph.model.graph.node}
        unknown = [n for n in self.layers if n not in nodes]
        if unknown:
            hints = []
            for n in unknown[:5]:
                close = difflib.get_close_matches(n, list(nodes), n=2)
                hints.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
            raise PlanError("plan names nodes that are not in the model", subject=f"plan {self.name!r}",
                            got=f"{len(unknown)} unknown: " + "; ".join(hints),
                            hint="plans are keyed by ONNX node names of the model they were made for")
        quantizable = set(quantizable_nodes(graph))
        bad = [n for n in self.nodes("int8") if n not in quantizable]
        if bad:
            raise PlanError("INT8 requested for nodes that cannot be quantized", subject=f"plan {self.name!r}",
                            got=", ".join(repr(b) for b in bad[:5]),
                            expected=INT8_LAYERS)


def quantizable_nodes(graph: OnnxGraph) -> list[str]:
    """Nodes TensorRT runs as INT8 when their inputs are quantized (the placement rule's
    :func:`~.placement.is_int8_layer`): weighted Conv/Gemm/MatMul, and MatMuls of two activations."""
    inits = {i.name for i in graph.model.graph.initializer}
    consts = inits | {n.output[0] for n in graph.model.graph.node if n.op_type == "Constant"}
    return [n.name for n in graph.model.graph.node if is_int8_layer(n, consts)]


def preset_plan(name: str, graph: OnnxGraph) -> PrecisionPlan:
    if name == "fp32":
        return PrecisionPlan("fp32", {}, default="fp32")
    if name == "fp16":
        return PrecisionPlan("fp16", {}, default="fp16")
    if name == "int8":
        layers = {n: LayerPrecision(n, "int8", "preset int8: every quantizable layer") for n in quantizable_nodes(graph)}
        return PrecisionPlan("int8", layers, default="fp32")
    raise PlanError("unknown precision preset", subject="--precision", got=repr(name),
                    expected=" | ".join(PRESETS) + " | PLAN.json")


def resolve_plan(spec: str, graph: OnnxGraph) -> PrecisionPlan:
    """``--precision``: a preset name or a plan file, checked against ``graph``."""
    plan = preset_plan(spec, graph) if spec in PRESETS else PrecisionPlan.load(spec)
    plan.check(graph)
    return plan
