"""The engine interface every backend implements: ``Engine.run`` and what it is (``EngineInfo``)."""

from __future__ import annotations

import numpy as np

from ...core.records import EngineInfo
from ...core.runtime import cpu_int8_instructions
from ...core.types import feeds

__all__ = ["Engine", "EngineInfo", "cpu_engine_fields", "float_feeds"]


class Engine:
    info: EngineInfo

    def run(self, images: np.ndarray) -> np.ndarray:   # pragma: no cover - interface
        """The model's first output (what classification metrics read)."""
        raise NotImplementedError

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every model output, in the graph's output order. Backends that bind only the first output
        (TensorRT here) return that one; evaluate then reports fidelity for it alone."""
        return (self.run(images),)


def float_feeds(names, images) -> dict[str, np.ndarray]:
    """The engine's feed: contiguous float32 per input name (one array feeds a single-input model;
    :class:`Inputs` feed a model with several inputs by name)."""
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds(names, images).items()}


def cpu_engine_fields(backend: str, precision: str) -> tuple[dict, str]:
    """A CPU engine's :class:`EngineInfo` fields (its description is written once it is built) and the
    CPU's integer instructions as the description names them."""
    fields = dict(backend=backend, precision=precision, device="cpu", simulated=False, description="")
    return fields, ", ".join(cpu_int8_instructions()) or "none detected"
