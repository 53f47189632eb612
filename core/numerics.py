"""Numerics reference: INT8 fake quantization (the test oracle for every backend).

Symmetric, zero-point 0, ONNX ``QuantizeLinear`` semantics (what TensorRT's explicit quantization
executes): ``q = saturate(round_half_to_even(x / scale))`` into ``[-128, 127]``, ``x' = q * scale``,
with ``scale = amax / 127``.
"""

from __future__ import annotations

import torch

from .fake_quant_cuda import fake_quant_cuda

QMIN, QMAX = -128, 127


def fake_quant(x: torch.Tensor, scale: float | torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float arithmetic (no int8 round trip). ``out``: written in place
    (the same values, no temporaries; for a scalar ``scale`` and ``out`` of ``x``'s shape and dtype)."""
    if isinstance(scale, float) and x.is_cuda:      # one fused kernel on the GPU, the same values
        y = fake_quant_cuda(x, scale, float(QMIN), float(QMAX), out)
        if y is not None:
            return y
        # CUDA divides by a host scalar as a product with its reciprocal (one ulp off at times, which moves
        # values at rounding ties); by a device tensor it divides, as the CPU and ONNX Runtime do
        if x.dtype == torch.float32:
            scale = torch.tensor(scale, dtype=torch.float32, device=x.device)
    if out is not None:
        return torch.div(x, scale, out=out).round_().clamp_(QMIN, QMAX).mul_(scale)
    return torch.clamp(torch.round(x / scale), QMIN, QMAX) * scale
