"""Fused GPU statistics kernel (Triton): min, max and the signed histogram of a tensor in one read.

``torch.histc`` on CUDA privatises the histogram in shared memory and increments it with one atomic
per element; activations are concentrated in a few bins (after ReLU half of them are exactly zero),
so those atomics serialise and histc runs far below memory bandwidth. This kernel reads each
element once, reduces min/max in registers, counts exact zeros with a block reduction (one atomic
per block instead of one per element) and sends only the non-zero values to per-bin atomics, spread
over ``COPIES`` private copies of the histogram to cut contention further (measured on an H100 for
MobileNetV2 batch 256: 64 copies 51 ms vs 8 copies 91 ms vs torch.histc 79 ms for all 101 tensors;
still per-element atomics, so the pass costs about 2x a forward: a shared-memory kernel with warp
aggregation would be the next step).

Bin semantics equal ``torch.histc(x, 2 * bins, -hi, hi)``: ``v`` goes to ``floor((v + hi) * 2 bins /
(2 hi))``, ``v == hi`` to the last bin, values outside ``[-hi, hi]`` are not counted.

Used only when Triton imports and the tensor is on a CUDA device; everything else uses histc.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

COPIES = 64


@functools.lru_cache(maxsize=1)
def _kernel():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def stats_kernel(x_ptr, n, lo_edge, span, nbins2, nbins2_f, hist_ptr, aux_ptr,
                     BLOCK: tl.constexpr, ITERS: tl.constexpr, COPIES_: tl.constexpr):
        pid = tl.program_id(0)
        base = pid.to(tl.int64) * BLOCK * ITERS
        copy = (pid % COPIES_) * nbins2
        zero_bin = nbins2 // 2                         # v = 0 -> bin `bins`
        vmin = tl.full([BLOCK], float("inf"), tl.float32)
        vmax = tl.full([BLOCK], float("-inf"), tl.float32)
        zeros = tl.zeros([BLOCK], tl.int32)
        nans = tl.zeros([BLOCK], tl.int32)
        for i in range(ITERS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            nans += (mask & (x != x)).to(tl.int32)
            vmin = tl.minimum(vmin, tl.where(mask, x, float("inf")))
            vmax = tl.maximum(vmax, tl.where(mask, x, float("-inf")))
            is_zero = mask & (x == 0.0)
            zeros += is_zero.to(tl.int32)
            pos = tl.math.div_rn((x - lo_edge) * nbins2_f, span)   # histc's formula, IEEE division
            b = pos.to(tl.int32)
            b = tl.where(b >= nbins2, nbins2 - 1, b)       # x == hi -> last bin, as histc
            ok = mask & (x != 0.0) & (pos >= 0.0) & (pos <= nbins2)
            tl.atomic_add(hist_ptr + copy + b, 1, mask=ok)
        tl.atomic_add(hist_ptr + copy + zero_bin, tl.sum(zeros, axis=0))
        tl.atomic_min(aux_ptr + 0, tl.min(vmin, axis=0))
        tl.atomic_max(aux_ptr + 1, tl.max(vmax, axis=0))
        tl.atomic_add(aux_ptr.to(tl.pointer_type(tl.int32)) + 2, tl.sum(nans, axis=0))

    return stats_kernel


def available(t: torch.Tensor) -> bool:
    return t.is_cuda and t.dtype == torch.float32 and _kernel() is not None


def lohi_and_histogram(y: torch.Tensor, bins: int, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One read of ``y``: ``(tensor([min, max]) with NaN if y holds NaN, int32 histogram)``.

    The histogram is over ``[-hi, hi]`` in ``2 * bins`` bins, like ``torch.histc(y, 2 * bins, -hi, hi)``.
    """
    kernel = _kernel()
    x = y.reshape(-1)
    if not x.is_contiguous():
        x = x.contiguous()
    n = x.numel()
    nb2 = 2 * bins
    aux = torch.tensor([float("inf"), float("-inf"), 0.0], device=y.device, dtype=torch.float32)  # slot 2: NaN count (int32 bits)
    hist = torch.zeros(COPIES * nb2, dtype=torch.int32, device=y.device)
    block, iters = 1024, 16
    grid = (-(-n // (block * iters)),)
    kernel[grid](x, n, -hi, 2 * hi, nb2, float(nb2), hist, aux, BLOCK=block, ITERS=iters, COPIES_=COPIES, num_warps=8)
    nan_count = aux[2:3].view(torch.int32)
    lohi = torch.where(nan_count > 0, torch.full_like(aux[:2], float("nan")), aux[:2])
    return lohi, hist.view(COPIES, nb2).sum(0, dtype=torch.int32)
