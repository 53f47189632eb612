"""INT8 fake quantization of a CUDA float32 tensor in one read and one write (Triton).

:func:`.numerics.fake_quant` in PyTorch eager is four kernels (divide, round, clamp, multiply), each reading
and writing the whole tensor: in the quantization simulator they cost more than the convolutions they sit
between. This kernel computes the same ``clamp(round_half_even(x / scale), QMIN, QMAX) * scale`` per element,
with the division correctly rounded (``div_rn``: ONNX ``QuantizeLinear``'s ``x / y_scale``, what the CPU path
and ONNX Runtime compute; PyTorch's CUDA division by a host scalar multiplies by its reciprocal instead, which
puts a value one ulp from a rounding tie on the other side of it), NaN propagated as ``torch.clamp`` does.

Used by :func:`.numerics.fake_quant` for a float32 CUDA tensor (contiguous or channels-last) and a Python
``float`` scale, outside ``torch.compile`` tracing; anything else, or no Triton, takes the PyTorch path.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

BLOCK = 4096


@functools.lru_cache(maxsize=1)
def _kernel():
    try:
        import triton
        import triton.language as tl
        from triton.language.extra import libdevice
    except Exception as err:          # no Triton (CPU-only wheels) or another API: the PyTorch path
        log.debug("no Triton fake-quant kernel: %s", err)
        return None

    @triton.jit
    def fake_quant_kernel(x_ptr, y_ptr, n, scale, QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        q = libdevice.rint(libdevice.div_rn(x, scale))
        q = tl.minimum(tl.maximum(q, QMIN, propagate_nan=tl.PropagateNan.ALL), QMAX, propagate_nan=tl.PropagateNan.ALL)
        tl.store(y_ptr + offs, q * scale, mask=mask)

    def launch(x: torch.Tensor, scale: float, out: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:
        n = x.numel()
        if n:
            fake_quant_kernel[(triton.cdiv(n, BLOCK),)](x, out, n, scale, QMIN=qmin, QMAX=qmax, BLOCK=BLOCK,
                                                        num_warps=8)
        return out
    return launch


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def fake_quant_cuda(x: torch.Tensor, scale: float, qmin: float, qmax: float,
                    out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The fused kernel's result, or None where it does not apply (the caller takes the PyTorch path)."""
    if not (x.is_cuda and x.dtype == torch.float32 and _dense(x)) or torch.compiler.is_compiling():
        return None
    if out is not None and (out.dtype != x.dtype or out.device != x.device or out.shape != x.shape
                            or out.stride() != x.stride()):
        return None
    if not _usable(x.device.index if x.device.index is not None else torch.cuda.current_device(), qmin, qmax):
        return None
    return _kernel()(x, scale, torch.empty_like(x) if out is None else out, qmin, qmax)


@functools.lru_cache(maxsize=None)
def _usable(device_index: int, qmin: float, qmax: float) -> bool:
    """Compile and check the kernel once per device against the CPU's division and rounding (values at rounding
    ties, one ulp either side of them, saturation, NaN and -0.0): a kernel that fails or differs is never used."""
    k = _kernel()
    if k is None:
        return False
    scale = 0.0472440943                  # 6 / 127 in float32
    s32 = torch.tensor(scale, dtype=torch.float32)
    ties = (torch.arange(-140, 140, dtype=torch.float32) + 0.5) * s32
    x = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1),
                   torch.tensor([float("nan"), -0.0, 0.0, 1e30, -1e30, float("inf")]),
                   torch.linspace(-7, 7, 10_001)])
    ref = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    try:
        with torch.cuda.device(device_index):
            got = k(x.cuda(), scale, torch.empty_like(x.cuda()), qmin, qmax).cpu()
    except Exception as err:   # Triton cannot compile for this GPU, another launcher API, ...: never fail
        log.warning("the Triton fake-quant kernel is not usable here (%s: %s): using PyTorch's ops",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return False
    nan = torch.isnan(ref)
    if not (torch.equal(torch.isnan(got), nan) and torch.equal(got[~nan].view(torch.int32), ref[~nan].view(torch.int32))):
        log.warning("the Triton fake-quant kernel disagrees with the CPU's fake quantization: using PyTorch's ops")
        return False
    return True
