"""The engine interface every backend implements: ``Engine.run`` and what it is (``EngineInfo``)."""

from __future__ import annotations

import numpy as np

from ...core.records import EngineInfo
from ...core.runtime import cpu_int8_instructions

__all__ = ["Engine", "EngineInfo", "cpu_engine_fields"]


class Engine:
    info: EngineInfo

    def run(self, images: np.ndarray) -> np.ndarray:   # pragma: no cover - interface
        """The model's first output (what classification metrics read)."""
        raise NotImplementedError

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every model output, in the graph's output order. Backends that bind only the first output
        (TensorRT here) return that one; evaluate then reports fidelity for it alone."""
        return (self.run(images),)


def cpu_engine_fields(backend: str, precision: str) -> tuple[dict, str]:
    """A CPU engine's :class:`EngineInfo` fields (its description is written once it is built) and the
    CPU's integer instructions as the description names them."""
    fields = dict(backend=backend, precision=precision, device="cpu", simulated=False, description="")
    return fields, ", ".join(cpu_int8_instructions()) or "none detected"
