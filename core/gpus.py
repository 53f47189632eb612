"""The GPUs whose latency the planner can estimate: dense tensor-core peaks and memory bandwidth, from vendor
datasheets (no sparsity), and which one ``--target-gpu auto`` means."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class GpuSpec:
    """A target GPU's dense tensor-core peaks and memory bandwidth (vendor datasheets, no sparsity)."""
    key: str
    name: str
    int8_tops: float
    fp16_tflops: float
    bandwidth_gbs: float
    pattern: str            # matches torch.cuda.get_device_name() of this GPU

    @property
    def describe(self) -> str:
        return (f"{self.name}: INT8 {self.int8_tops:g} TOPS, FP16 {self.fp16_tflops:g} TFLOPS (dense tensor cores), "
                f"{self.bandwidth_gbs:g} GB/s")


GPUS: dict[str, GpuSpec] = {g.key: g for g in (
    GpuSpec("h200", "NVIDIA H200 SXM", 1979, 989.5, 4800, r"\bH200\b"),
    GpuSpec("h100-sxm", "NVIDIA H100 SXM", 1979, 989.5, 3350, r"\bH100\b(?!.*PCIe)"),
    GpuSpec("h100-pcie", "NVIDIA H100 PCIe", 1513, 756, 2000, r"\bH100\b.*PCIe"),
    GpuSpec("a100", "NVIDIA A100 SXM 80GB", 624, 312, 2039, r"\bA100\b"),
    GpuSpec("l40s", "NVIDIA L40S", 733, 362, 864, r"\bL40S\b"),
    GpuSpec("l4", "NVIDIA L4", 242, 121, 300, r"\bL4\b"),
    GpuSpec("a10", "NVIDIA A10", 250, 125, 600, r"\bA10\b"),
    GpuSpec("t4", "NVIDIA T4", 130, 65, 320, r"\bT4\b"),
    GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090", 660.6, 330.3, 1008, r"\bRTX 4090\b"),
    GpuSpec("orin", "NVIDIA Jetson AGX Orin 64GB (GPU)", 85, 42.5, 204.8, r"\bOrin\b"),
)}
"""The GPUs the roofline knows (``--target-gpu``). Figures: NVIDIA's product datasheets (H200/H100/A100/L40S/L4/
A10/T4), the Ada whitepaper (RTX 4090, FP16 with FP16 accumulation) and the Jetson AGX Orin datasheet (GPU
tensor cores); halved where a datasheet gives only the sparse figure."""

FALLBACK_GPU = "h100-sxm"
"""The target of ``--target-gpu auto`` when no known CUDA GPU is present."""


def resolve_gpu(name: str, local: str | None) -> tuple[GpuSpec, str]:
    """The :class:`GpuSpec` of ``--target-gpu`` and why: ``auto`` is the ``local`` CUDA GPU (its device name, None
    without one) when it is in the table, else :data:`FALLBACK_GPU`."""
    check_gpu_name(name)
    if name != "auto":
        return GPUS[name], "chosen with --target-gpu"
    if local:
        for g in GPUS.values():
            if re.search(g.pattern, local):
                return g, f"the local GPU ({local})"
        return GPUS[FALLBACK_GPU], f"the local GPU ({local}) is not in the table: {FALLBACK_GPU} assumed"
    return GPUS[FALLBACK_GPU], f"no CUDA GPU here: {FALLBACK_GPU} assumed (--target-gpu names yours)"


def check_gpu_name(name: str) -> None:
    if name != "auto" and name not in GPUS:
        raise ConfigError("unknown target GPU", subject="--target-gpu", got=repr(name),
                          expected=f"auto or one of {', '.join(GPUS)}")
