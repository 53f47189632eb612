"""The engine interface every backend implements: ``Engine.run`` and what it is (``EngineInfo``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class EngineInfo:
    backend: str
    precision: str
    device: str
    simulated: bool
    description: str
    integer_kernels: Mapping[str, int] = field(default_factory=dict)


class Engine:
    info: EngineInfo

    def run(self, images: np.ndarray) -> np.ndarray:   # pragma: no cover - interface
        raise NotImplementedError
