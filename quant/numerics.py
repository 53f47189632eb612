"""Numerics reference: INT8 quantize / dequantize / fake-quant (the test oracle for every backend).

Symmetric, zero-point 0, ONNX ``QuantizeLinear`` semantics (what TensorRT's explicit quantization
executes): ``q = saturate(round_half_to_even(x / scale))`` into ``[-128, 127]``, ``x' = q * scale``,
with ``scale = amax / 127``.
"""

from __future__ import annotations

import numpy as np
import torch

QMIN, QMAX = -128, 127


def scale_from_amax(amax: float) -> float:
    return float(np.float32(amax) / np.float32(127.0))


def quantize(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), QMIN, QMAX).to(torch.int8)


def dequantize(q: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale


def fake_quant(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float arithmetic (no int8 round trip)."""
    return torch.clamp(torch.round(x / scale), QMIN, QMAX) * scale


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(sum ref^2 / sum (ref - approx)^2)."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)
