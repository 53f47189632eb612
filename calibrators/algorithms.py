"""Range algorithms: pure functions of a |x| histogram -> amax.

Each algorithm is a small frozen config dataclass registered in ``ALGORITHMS``; ``compute(hist)``
returns the amax (clipping threshold) for symmetric INT8 with scale = amax / 127. All candidate
thresholds are evaluated at once with NumPy (no Python loop per candidate).

Notation for a histogram: counts ``b_k`` of ``|x|`` in bins ``[k w, (k+1) w)``, ``k = 0..N-1``,
recorded maximum ``m = max |x|``. Every algorithm's result is clipped to ``m`` (a threshold past the
largest value seen only wastes resolution), so ``amax <= m`` always holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import ClassVar

import numpy as np

from ..core.errors import ConfigError
from ..core.types import TensorHistogram


def _finish(hist: TensorHistogram, amax: float) -> float:
    return float(min(amax, hist.amax))


@dataclass(frozen=True)
class MinMax:
    """``amax = m = max |x|`` over the whole calibration set (TensorRT ``MinMaxCalibration``)."""

    name: ClassVar[str] = "minmax"
    trt_algorithm: ClassVar[str] = "MinMaxCalibration"

    def compute(self, hist: TensorHistogram) -> float:
        return float(hist.amax)

    def settings(self) -> dict:
        return {}


@dataclass(frozen=True)
class Entropy:
    """pytorch-quantization's entropy search (``_compute_amax_entropy``).

    Not TensorRT's own EntropyCalibration2, which is closed source (its cache header is what we write).

    With ``b_0`` replaced by ``b_1`` (the reference's zero-spike suppression), for each candidate
    ``i in {start_bin, start_bin + stride, ..., N}``:

    - reference ``P_i``: ``p_j = b_j`` for ``j < i-1`` and ``p_{i-1} = b_{i-1} + sum_{k >= i} b_k``
      (the clipped mass folded into the last kept bin);
    - candidate ``Q_i``: bins ``j < i`` merged into ``L = 2^(bits-1)`` groups
      ``g(j) = floor(j L / i)``; each group's mass is spread evenly over its *non-zero* bins
      (``q_j = S_g / n_g`` where ``b_j != 0``, ``q_j = 0`` where ``b_j = 0``);
    - ``KL(P_i || Q_i) = sum_j p_j/|P| log((p_j/|P|) / (q_j/|Q|))`` (``+inf`` if some
      ``p_j > 0`` has ``q_j = 0``).

    ``amax = i* w`` with ``i*`` the *last* minimiser of the divergence (ties go to the larger
    threshold, as in the reference). Closed form used here, evaluated for all ``i`` at once::

        KL_i = (sum_j p_j log p_j - sum_g S_g log(S_g / n_g) - T_i log q_{i-1}) / |P| - log|P| + log|Q_i|

    with ``T_i`` the tail mass and ``|Q_i| = sum_{j<i} b_j``.
    """

    num_bits: int = 8
    start_bin: int = 128
    stride: int = 1

    name: ClassVar[str] = "entropy"
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"

    def __post_init__(self):
        if not 2 <= self.num_bits <= 16:
            raise ConfigError("invalid entropy setting", subject="num_bits", got=str(self.num_bits),
                              expected="2..16")
        if self.start_bin < (1 << (self.num_bits - 1)):
            raise ConfigError("invalid entropy setting", subject="start_bin", got=str(self.start_bin),
                              expected=f">= {1 << (self.num_bits - 1)} (the number of quantized levels)")
        if self.stride < 1:
            raise ConfigError("invalid entropy setting", subject="stride", got=str(self.stride), expected=">= 1")

    def settings(self) -> dict:
        return asdict(self)

    def divergences(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """KL divergence for every candidate threshold bin ``i``; returns ``(i, KL_i)``."""
        b = np.asarray(counts, dtype=np.float64).copy()
        n = len(b)
        levels = 1 << (self.num_bits - 1)
        cands = np.arange(self.start_bin, n + 1, self.stride, dtype=np.int64)
        if len(cands) == 0:
            return cands, np.zeros(0)
        b[0] = b[1]
        cb = np.concatenate([[0.0], np.cumsum(b)])
        cnz = np.concatenate([[0], np.cumsum(b != 0)])
        with np.errstate(divide="ignore", invalid="ignore"):
            blogb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)
        cbl = np.concatenate([[0.0], np.cumsum(blogb)])
        total = cb[n]

        g = np.arange(levels + 1, dtype=np.int64)
        bounds = -((-g[None, :] * cands[:, None]) // levels)  # ceil(g i / L): first bin of group g
        s = cb[bounds[:, 1:]] - cb[bounds[:, :-1]]             # group masses S_g, shape (C, L)
        nz = cnz[bounds[:, 1:]] - cnz[bounds[:, :-1]]          # non-zero bins per group n_g
        with np.errstate(divide="ignore", invalid="ignore"):
            group_term = np.where(s > 0, s * np.log(s / np.maximum(nz, 1)), 0.0).sum(axis=1)
            tail = total - cb[cands]
            tail = np.where(tail > 0, tail, 0.0)
            last = b[cands - 1]
            # bin i-1 always falls in the last group because i >= start_bin >= L
            q_last = np.where(last > 0, s[:, -1] / np.maximum(nz[:, -1], 1), 0.0)
            p_last = last + tail
            plogp = cbl[cands - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
            tail_term = np.where(tail > 0, tail * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
            q_total = cb[cands]
            kl = (plogp - group_term - tail_term) / total - math.log(total) + np.log(q_total)
        impossible = ((tail > 0) & (q_last == 0)) | (q_total <= 0)
        kl = np.where(impossible, np.inf, kl)
        return cands, kl

    def compute(self, hist: TensorHistogram) -> float:
        if hist.bin_width == 0 or hist.amax == 0:
            return 0.0
        if hist.counts.sum() == 0 or hist.num_bins < 2:
            return float(hist.amax)
        cands, kl = self.divergences(hist.counts)
        if len(cands) == 0 or not np.isfinite(kl).any():
            return float(hist.amax)
        best = len(kl) - 1 - int(np.argmin(kl[::-1]))
        return _finish(hist, float(cands[best]) * hist.bin_width)


@dataclass(frozen=True)
class Percentile:
    """Smallest threshold that keeps ``percentile`` % of all values unclipped.

    ``amax = (k* + 1) w`` with ``k* = min{k : sum_{j<=k} b_j >= percentile/100 * sum_j b_j}``: the right
    edge of the bin where the cumulative count reaches the percentile (the reference returns the left
    edge, which clips part of that bin; the right edge makes ``percentile=100`` equal ``max |x|``).
    """

    percentile: float = 99.99

    name: ClassVar[str] = "percentile"
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"

    def __post_init__(self):
        if not (0 < self.percentile <= 100):
            raise ConfigError("invalid percentile", subject="--percentile", got=str(self.percentile),
                              expected="0 < p <= 100", hint="e.g. 99.9, 99.99 or 99.999")

    def settings(self) -> dict:
        return asdict(self)

    def compute(self, hist: TensorHistogram) -> float:
        if hist.bin_width == 0 or hist.amax == 0:
            return 0.0
        counts = np.asarray(hist.counts, dtype=np.float64)
        cdf = np.cumsum(counts)
        k = int(np.searchsorted(cdf, self.percentile / 100.0 * cdf[-1], side="left"))
        k = min(k, len(counts) - 1)
        return _finish(hist, (k + 1) * hist.bin_width)


@dataclass(frozen=True)
class MSE:
    """Threshold minimising the expected squared quantization error of the histogram.

    With bin centres ``c_k = (k + 1/2) w`` and ``Q_a(c) = clip(round(c 127 / a), -127, 127) a / 127``::

        amax = argmin_{a in {c_i : i >= start_bin}} sum_k b_k (Q_a(c_k) - c_k)^2

    (the objective of NVIDIA's reference ``_compute_amax_mse``; its first minimiser is taken).
    """

    num_bits: int = 8
    start_bin: int = 128
    stride: int = 1

    name: ClassVar[str] = "mse"
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"

    def __post_init__(self):
        if not 2 <= self.num_bits <= 16 or self.start_bin < 0 or self.stride < 1:
            raise ConfigError("invalid mse setting", got=str(asdict(self)),
                              expected="2 <= num_bits <= 16, start_bin >= 0, stride >= 1")

    def settings(self) -> dict:
        return asdict(self)

    def errors(self, counts: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
        counts = np.asarray(counts, dtype=np.float64)
        n = len(counts)
        centers = (np.arange(n, dtype=np.float64) + 0.5) * width
        idx = np.arange(self.start_bin, n, self.stride)
        if len(idx) == 0:
            return idx, np.zeros(0)
        qmax = float((1 << (self.num_bits - 1)) - 1)
        nzk = np.nonzero(counts)[0]             # only occupied bins contribute
        c, w = centers[nzk], counts[nzk]
        out = np.empty(len(idx))
        chunk = max(1, (1 << 22) // max(len(nzk), 1))
        for s in range(0, len(idx), chunk):     # chunks bound memory; each chunk is fully vectorized
            a = centers[idx[s:s + chunk]][:, None]
            q = np.clip(np.round(c[None, :] * (qmax / a)), -qmax, qmax) * (a / qmax)
            out[s:s + chunk] = ((q - c[None, :]) ** 2 * w[None, :]).sum(axis=1)
        return idx, out / n

    def compute(self, hist: TensorHistogram) -> float:
        if hist.bin_width == 0 or hist.amax == 0:
            return 0.0
        idx, err = self.errors(hist.counts, hist.bin_width)
        if len(idx) == 0:
            return float(hist.amax)
        best = int(idx[int(np.argmin(err))])
        return _finish(hist, (best + 0.5) * hist.bin_width)


ALGORITHMS: dict[str, type] = {cls.name: cls for cls in (Entropy, MinMax, Percentile, MSE)}


def make_algorithm(name: str, **settings):
    """Build a registered algorithm by name; unknown names list the valid ones."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ConfigError("unknown calibration method", subject="--method", got=repr(name),
                          expected="one of " + ", ".join(sorted(ALGORITHMS))) from None
    return cls(**settings)
