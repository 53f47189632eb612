"""The ONNX graph as the single source of truth for tensor names: ``OnnxGraph`` (inputs, outputs,
the tensors TensorRT may quantize) and ``run_batched`` (any runner over rows in batches, fixed batch honoured)."""

from __future__ import annotations
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from ...core.errors import ModelError
from ...core.types import resize_rows

log = logging.getLogger(__name__)

Observer = Callable[[str, torch.Tensor], None]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: tuple            # ints, or strings for symbolic dims
    elem_type: int


def _materialize_identity_constants(g: onnx.GraphProto) -> int:
    """``Identity(initializer)`` nodes become initializers of the same (output) name, in place.

    The TorchScript exporter stores parameters with equal values (e.g. the zero biases of a freshly
    initialised network) once and reads the copies through Identity nodes; every pass here treats
    weights as initializers, so a weight behind an Identity would be taken for an activation. Tensor
    names do not change, so caches and Q/DQ models still match the file."""
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    keep, count = [], 0
    for n in g.node:
        if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            g.initializer.append(t)
            inits[t.name] = t
            count += 1
        else:
            keep.append(n)
    if count:
        del g.node[:]
        g.node.extend(keep)
        log.debug("%d Identity copies of initializers made initializers", count)
    return count


class OnnxGraph:
    """A loaded, checked ONNX model and the names of its calibratable tensors."""

    def __init__(self, model: onnx.ModelProto, path: Path | None = None):
        self.model = model
        self.path = path
        g = model.graph
        _materialize_identity_constants(g)
        init_names = {i.name for i in g.initializer}
        self.inputs = []
        for vi in g.input:
            if vi.name in init_names:
                continue
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
            self.inputs.append(GraphInput(vi.name, dims, t.elem_type))
        if not self.inputs:
            raise ModelError("ONNX model has no inputs", subject=str(path or "model"))
        self.outputs = [o.name for o in g.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.calibration_tensors = self._calibration_tensors(init_names)

    @classmethod
    def load(cls, path: str | Path, *, flag: str = "--onnx") -> "OnnxGraph":
        path = Path(path)
        subject = f"{flag} {path}" if flag.startswith("-") else str(path)
        if not path.is_file():
            raise ModelError("ONNX file not found", subject=subject, hint="check the path")
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
        except Exception as err:  # onnx raises DecodeError, ValidationError, ...: all mean "not a valid model"
            raise ModelError("invalid ONNX model", subject=subject, got=f"{type(err).__name__}: {err}"[:400],
                             expected="a valid ONNX ModelProto", hint="re-export the model; check it with onnx.checker") from err
        if not model.graph.node:
            raise ModelError("ONNX model has no nodes", subject=subject)
        return cls(model, path)

    def fingerprint(self) -> str:
        """sha256 of the graph (structure + weights), independent of producer metadata."""
        return hashlib.sha256(self.model.graph.SerializeToString(deterministic=True)).hexdigest()

    def _calibration_tensors(self, init_names: set[str]) -> list[str]:
        """Graph inputs and data-dependent float node outputs, in execution order."""
        types = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
                types[vi.name] = vi.type.tensor_type.elem_type
        except Exception as err:  # shape inference is best effort; runtime dtype check still filters
            log.debug("shape inference failed: %s", err)
        dynamic = {i.name for i in self.inputs}
        names = [i.name for i in self.inputs if i.elem_type in _FLOAT_TYPES]
        for node in self.model.graph.node:
            if node.op_type == "Constant" or not any(i in dynamic for i in node.input if i):
                continue
            for o in node.output:
                if not o:
                    continue
                dynamic.add(o)
                if node.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
                    continue
                if types.get(o, onnx.TensorProto.UNDEFINED) in _FLOAT_TYPES | {onnx.TensorProto.UNDEFINED}:
                    names.append(o)          # unknown type: the executors check the dtype at run time
        return names

    def input_shape(self) -> tuple:
        return self.inputs[0].shape

    @property
    def fixed_batch(self) -> int | None:
        """The batch the model's input fixes (e.g. 1 for an export without a dynamic batch), else None."""
        dims = self.inputs[0].shape
        return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def run_batched(run, rows, n: int, batch: int, fixed: int | None = None) -> np.ndarray:
    """``run`` over ``rows(lo, hi)`` for ``lo`` in ``range(0, n, batch)``, concatenated. With ``fixed`` (a
    model's fixed batch, or a caller's one input shape) every call gets exactly that many rows: the last
    chunk is padded by repeating its images and the padding's outputs are dropped. A ``run`` returning a
    tuple (every output) gives a tuple of concatenated outputs."""
    if fixed is not None:
        batch = fixed
    outs = []
    for lo in range(0, n, batch):
        chunk = rows(lo, min(lo + batch, n))
        k = len(chunk)
        if fixed is not None and k < fixed:
            chunk = resize_rows(chunk, fixed)
        out = run(chunk)
        outs.append(tuple(np.asarray(o)[:k] for o in out) if isinstance(out, tuple) else np.asarray(out)[:k])
    if outs and isinstance(outs[0], tuple):       # a run that returns every output: concatenated per output
        return tuple(np.concatenate(parts) for parts in zip(*outs))
    return np.concatenate(outs)
