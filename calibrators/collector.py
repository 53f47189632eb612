"""Streaming statistics collector: per-tensor max |x| and a growing |x| histogram.

Memory is independent of the dataset size: per tensor one float64 count vector (``num_bins`` bins,
more only if the range grows) on the collecting device.

Histogram semantics follow NVIDIA's reference ``HistogramCalibrator`` (torch.histc path): the first
batch with a non-zero maximum ``m`` fixes ``bin_width = m / num_bins``; a later batch whose maximum
exceeds the range grows the histogram by whole bins of the same width (``ceil(m / bin_width)`` bins).

To avoid a host synchronisation per tensor, a batch is histogrammed with the ranges known *before*
it, its per-tensor maxima are fetched once at the end of the batch (one sync), and only the tensors
whose maximum fell outside their range are histogrammed again (``Pass.commit`` returns their names;
the caller re-runs the batch for just those). This happens for every tensor on the first batch and
rarely afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..core.errors import CalibrationError
from . import gpu_hist, gpu_stats
from ..core.types import TensorHistogram

# torch.histc accumulates in the input's float32: a bin count above 2**24 would stop increasing.
# Histogramming at most 2**24 elements per call keeps every per-call count exact.
_HISTC_CHUNK = 1 << 24


def _signed_histogram(y: torch.Tensor, bins: int, hi: float) -> torch.Tensor:
    """Histogram of ``y`` over ``[-hi, hi]`` in ``2 * bins`` bins.

    ``torch.histc`` puts ``v`` in bin ``floor(v / w) + bins`` (``w = hi / bins``): bin ``bins + k`` holds
    ``v in [k w, (k+1) w)`` and bin ``bins - 1 - k`` holds ``-v`` for the same ``k``, so folding the two
    halves (``fold_signed``) gives the |x| histogram from one read of ``y``, with no |y| pass.
    """
    flat = y.reshape(-1)
    if flat.numel() <= _HISTC_CHUNK:
        return torch.histc(flat, bins=2 * bins, min=-hi, max=hi)      # float32, exact below 2**24
    out = torch.zeros(2 * bins, dtype=torch.float64, device=y.device)
    for s in range(0, flat.numel(), _HISTC_CHUNK):
        out += torch.histc(flat[s:s + _HISTC_CHUNK], bins=2 * bins, min=-hi, max=hi)
    return out


def fold_signed(counts: np.ndarray) -> np.ndarray:
    """Signed histogram over [-hi, hi] (2n bins) -> |x| histogram over [0, hi] (n bins)."""
    n = len(counts) // 2
    return counts[n:] + counts[:n][::-1]


@dataclass
class _TensorState:
    width: float = 0.0                 # 0 until the first non-zero maximum
    nbins: int = 0
    hi: float = 0.0                    # right edge of the last bin (histc max)
    amax: float = 0.0
    numel: int = 0
    zeros_before_range: int = 0        # values seen while every value so far was 0
    counts: torch.Tensor | None = None  # signed histogram over [-hi, hi], 2 * nbins bins, float64


class HistogramCollector:
    """Collects max |x| and |x| histograms for a fixed set of named tensors."""

    def __init__(self, names: Sequence[str], *, num_bins: int = 2048, device: torch.device | str = "cpu",
                 histograms: bool = True):
        if num_bins < 2:
            raise ValueError("num_bins must be >= 2")
        self.with_histograms = histograms   # False: max |x| only (enough for minmax, much cheaper)
        # the fused Triton statistics kernel on CUDA tensors (TRTQUANT_FUSED_KERNEL=0: torch.histc instead)
        self.fused_kernel = os.environ.get("TRTQUANT_FUSED_KERNEL", "1") != "0"
        self.names = list(names)
        self.num_bins = num_bins
        self.device = torch.device(device)
        self._state = {n: _TensorState() for n in self.names}
        self.batches = 0
        # the batched CUDA kernel (gpu_stats.py): tensors of a pass are histogrammed in groups of about
        # `group_bytes`, on a side stream that overlaps the forward's next layers (`overlap`)
        self.group_bytes = 1 << 30
        self.overlap = True
        self.prioritize = True          # with overlap: the forward on a high-priority stream (forward_stream)
        self._side_stream: torch.cuda.Stream | None = None
        self._forward_stream: torch.cuda.Stream | None = None

    @contextlib.contextmanager
    def forward_stream(self):
        """Where the statistics overlap the forward (CUDA, ``overlap``), the forward runs on a stream of the
        highest priority: the GPU's block scheduler serves the forward's kernels first and the statistics kernel
        (on the side stream, default priority) fills the SMs they leave idle, instead of both sharing them."""
        if not (self.overlap and self.prioritize and self.device.type == "cuda" and self.with_histograms
                and self.fused_kernel):
            yield
            return
        dev = self.device if self.device.index is not None else torch.device("cuda", torch.cuda.current_device())
        if self._forward_stream is None or self._forward_stream.device != dev:
            self._forward_stream = torch.cuda.Stream(dev, priority=-100)   # clamped to the highest
        caller = torch.cuda.current_stream(dev)
        self._forward_stream.wait_stream(caller)       # the batch's input is ready
        try:
            with torch.cuda.stream(self._forward_stream):
                yield
        finally:
            caller.wait_stream(self._forward_stream)   # the caller's later work (and reuse of the input) after it

    def begin(self, only: Iterable[str] | None = None, *, batch_ids: Sequence[str] = ()) -> "Pass":
        return Pass(self, set(self.names if only is None else only), list(batch_ids))

    # -- results -------------------------------------------------------------------------
    def histograms(self) -> dict[str, TensorHistogram]:
        out = {}
        for n in self.names:
            st = self._state[n]
            if st.numel == 0:
                raise CalibrationError("no statistics collected", subject=f"tensor {n!r}",
                                       hint="the tensor was never computed; is the dataset empty?")
            if st.width == 0 or not self.with_histograms:
                counts = np.array([float(st.numel)])
            else:
                counts = fold_signed(st.counts.cpu().numpy().astype(np.float64))
                counts[0] += st.zeros_before_range
            out[n] = TensorHistogram(name=n, amax=st.amax, bin_width=st.width, counts=counts, numel=st.numel)
        return out


class Pass:
    """One forward pass over a batch: ``observe`` every tensor, then ``commit`` once."""

    def __init__(self, collector: HistogramCollector, names: set[str], batch_ids: list[str]):
        self.c = collector
        self.names = names
        self.batch_ids = batch_ids
        self._maxes: list[torch.Tensor] = []
        self._order: list[str] = []
        self._hists: list[torch.Tensor | None] = []
        self._numels: list[int] = []
        self._queue: list[tuple[int, torch.Tensor, int, float]] = []   # (slot, tensor, 2 * bins, hi) for gpu_stats
        self._queued_bytes = 0
        self._stream_used = False

    def observe(self, name: str, y: torch.Tensor) -> None:
        if name not in self.names:
            return
        y = y.detach()
        if y.dtype != torch.float32:
            y = y.float()
        st = self.c._state[name]
        self._order.append(name)
        self._numels.append(y.numel())
        if (st.width > 0 and self.c.with_histograms and self.c.fused_kernel and 0 < y.numel() < 2 ** 31
                and 2 * st.nbins <= gpu_stats.max_bins() and gpu_stats.available(y)):
            self._maxes.append(None)            # filled when the group is launched (_flush)
            self._hists.append(None)
            self._queue.append((len(self._maxes) - 1, y, 2 * st.nbins, st.hi))
            self._queued_bytes += 4 * y.numel()
            if self._queued_bytes >= self.c.group_bytes:
                self._flush()
            return
        if st.width > 0 and y.numel() and self.c.with_histograms and self.c.fused_kernel and gpu_hist.available(y):
            lohi, h = gpu_hist.lohi_and_histogram(y, st.nbins, st.hi)   # one read of y for everything
            self._maxes.append(lohi)
            self._hists.append(h)
            return
        if y.numel():
            self._maxes.append(torch.stack(torch.aminmax(y)))
        else:
            self._maxes.append(torch.zeros(2, device=y.device))
        if st.width > 0 and y.numel() and self.c.with_histograms:
            self._hists.append(_signed_histogram(y, st.nbins, st.hi))
        else:
            self._hists.append(None)

    def _flush(self) -> None:
        """Launch the batched statistics kernel over the queued tensors (on the side stream when overlapping)."""
        if not self._queue:
            return
        tensors = [q[1] for q in self._queue]
        dev = tensors[0].device
        main = torch.cuda.current_stream(dev)
        side = None
        if self.c.overlap:
            if self.c._side_stream is None or self.c._side_stream.device != dev:
                self.c._side_stream = torch.cuda.Stream(dev)
            side = self.c._side_stream
            side.wait_stream(main)               # the activations are ready
            self._stream_used = True
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            lohi, hists = gpu_stats.statistics(tensors, [q[2] for q in self._queue], [-q[3] for q in self._queue],
                                               [q[3] for q in self._queue])
        if side is not None:
            for t in tensors:                   # the forward may free them: keep them until the kernel has read them
                t.record_stream(side)
        for j, (slot, _, _, _) in enumerate(self._queue):
            self._maxes[slot] = lohi[j]
            self._hists[slot] = hists[j]
        self._queue, self._queued_bytes = [], 0

    def commit(self) -> set[str]:
        """Fold this batch in; return the tensors that must be histogrammed again with a grown range."""
        self._flush()
        if self._stream_used:
            torch.cuda.current_stream(self.c._side_stream.device).wait_stream(self.c._side_stream)
        if not self._order:
            return set()
        # the fold, queued before the sync so the GPU runs it while the host waits (one multi-tensor launch): every
        # histogram made with a range known before this batch; a tensor whose range grew takes its back below
        folded = {}
        for name, h in zip(self._order, self._hists):
            st = self.c._state[name]
            if h is not None and st.width > 0 and self.c.with_histograms:
                folded[name] = h.to(self.c.device, torch.float64)
        if folded:
            torch._foreach_add_([self.c._state[n].counts for n in folded], list(folded.values()))
        lohi = torch.stack(self._maxes).double().cpu().numpy()   # the one host sync of the batch
        maxes = np.maximum(-lohi[:, 0], lohi[:, 1]) if len(lohi) else lohi
        maxes = np.where(np.isnan(lohi).any(axis=1), np.nan, maxes) if len(lohi) else maxes
        redo = set()
        for name, m, numel in zip(self._order, maxes, self._numels):
            st = self.c._state[name]
            if not math.isfinite(m):
                where = f" (batch starting at {self.batch_ids[0]})" if self.batch_ids else ""
                raise CalibrationError("non-finite activation", subject=f"tensor {name!r}{where}",
                                       got="NaN" if math.isnan(m) else "Inf", expected="finite values",
                                       hint="check the input data and preprocessing (e.g. division by a zero std); "
                                            "TensorRT cannot calibrate a tensor holding NaN/Inf")
            m = float(m)
            if not self.c.with_histograms:
                st.amax, st.numel, st.width = max(st.amax, m), st.numel + numel, max(st.amax, m)
                continue
            if st.width == 0:
                if m == 0:
                    st.zeros_before_range += numel
                    st.numel += numel
                    continue
                st.width, st.nbins, st.hi = m / self.c.num_bins, self.c.num_bins, m
                st.counts = torch.zeros(2 * st.nbins, dtype=torch.float64, device=self.c.device)
                redo.add(name)
                continue
            if m > st.hi:
                if name in folded:                # made with the old range: the batch is histogrammed again
                    st.counts -= folded[name]
                nb = max(st.nbins, math.ceil(m / st.width))
                while nb * st.width < m:
                    nb += 1
                pad = nb - st.nbins          # the signed layout grows at both ends
                st.counts = torch.nn.functional.pad(st.counts, (pad, pad))
                st.nbins, st.hi = nb, nb * st.width
                redo.add(name)
                continue
            st.amax = max(st.amax, m)           # (its histogram was folded in above)
            st.numel += numel
        return redo


def collect_batch(collector: HistogramCollector, run: Callable[[Callable, set | None], None],
                  batch_ids: Sequence[str] = ()) -> None:
    """Fold one batch into ``collector``. ``run(observe, watch)`` runs the model on the batch, calling
    ``observe(name, tensor)`` for the tensors in ``watch`` (None: all); it is called again, for just the
    tensors whose range grew, until every histogram has the batch (the forward must be deterministic)."""
    with collector.forward_stream():
        _collect_batch(collector, run, batch_ids)


def _collect_batch(collector, run, batch_ids) -> None:
    p = collector.begin(batch_ids=batch_ids)
    run(p.observe, None)
    redo = p.commit()
    for _ in range(3):
        if not redo:
            return
        p = collector.begin(redo, batch_ids=batch_ids)
        run(p.observe, redo)
        redo = p.commit()
    raise CalibrationError("histogram range did not settle", subject=", ".join(sorted(redo))[:200],
                           hint="the model's forward pass is not deterministic")
