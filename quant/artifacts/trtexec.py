"""The ``trtexec`` lines that build the engine we evaluated: input shapes, precision flags and
``--layerPrecisions`` for a plan."""

from __future__ import annotations

import shlex
from pathlib import Path

from ...core.errors import ConfigError
from ...core.types import feeds
from .plan import PrecisionPlan


def trtexec_shapes(graph, example=None) -> str:
    """``trtexec --shapes`` for every model input (``name:1x3x224x224,aux:1x5``): static dims as exported,
    dynamic ones from the data's ``example`` (an array, or :class:`Inputs` for several inputs); the batch is
    1 for a dynamic batch, else the model's fixed batch."""
    shapes = {} if example is None else {k: v.shape for k, v in feeds([gi.name for gi in graph.inputs], example).items()}
    parts = []
    for gi in graph.inputs:
        dims = []
        ex = shapes.get(gi.name)
        for i, d in enumerate(gi.shape[1:], 1):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif ex is not None and len(ex) == len(gi.shape):
                dims.append(int(ex[i]))
            else:
                raise ConfigError("the model input has a dynamic dimension besides the batch",
                                  subject=f"model input {gi.name!r}", got=str(tuple(gi.shape)),
                                  expected="static dims, or data that fixes them",
                                  hint="export the model with static C/H/W, or run evaluate/sweep on data of that size")
        parts.append(f"{gi.name}:" + "x".join(str(d) for d in (graph.fixed_batch or 1, *dims)))
    return ",".join(parts)


def trtexec_commands(onnx_path: Path, plan: PrecisionPlan, qdq_path: Path | None, shapes: str) -> list[str]:
    """``trtexec`` lines for the plan.

    Strongly typed (TensorRT 10/11) the Q/DQ nodes and Casts carry the precisions. Weakly typed
    (8.x/9.x) Casts pin nothing and ``--fp16`` lets any layer run in FP16, so the plan's FP16/FP32
    layers are pinned with ``--precisionConstraints=obey --layerPrecisions=...`` and ``--fp16`` is
    given only when the plan has FP16 layers. ``--noTF32`` keeps FP32 layers in FP32.
    """
    common = f"--shapes={shapes} --saveEngine=model.engine"
    has_fp16 = plan.default == "fp16" or bool(plan.nodes("fp16"))
    tf32 = " --noTF32" if plan.default == "fp32" or plan.nodes("fp32") else ""
    pins = [(n, lp.precision) for n, lp in plan.layers.items() if lp.precision in ("fp16", "fp32")]
    obey = ""
    if pins:
        spec = ",".join(f"{n}:{p}" for n, p in pins)
        obey = f" --precisionConstraints=obey {shlex.quote('--layerPrecisions=' + spec)}"
    fp16 = " --fp16" if has_fp16 else ""
    if qdq_path is not None:
        int8 = " --int8" if plan.nodes("int8") else ""
        return [f"trtexec --onnx={qdq_path} --stronglyTyped{tf32} {common}   # TensorRT 10/11: precisions from Q/DQ and Casts",
                f"trtexec --onnx={qdq_path}{int8}{fp16}{tf32}{obey} {common}   # TensorRT 8.x/9.x (weakly typed)"]
    return [f"trtexec --onnx={onnx_path}{fp16}{tf32}{obey} {common}"]


def layer_precisions_flag(plan: PrecisionPlan) -> str:
    """trtexec's ``--layerPrecisions`` value for the FP16 layers (TensorRT <= 10, implicit INT8)."""
    return ",".join(f"{n}:fp16" for n in plan.nodes("fp16"))
