"""``--method auto``: per tensor, the range among several algorithms' that quantizes the model best.

``auto`` is not a histogram algorithm: its *candidates* are pure functions of the histogram (the
registered algorithms of :mod:`.algorithms`), but its *choice* needs the layers the tensor feeds,
measured by one extra pass over a few calibration batches (``quant/auto_method.py``). This module
holds the pure part: the candidates, the objective's definition and the argmin.

For a tensor ``t`` with histogram ``H`` the candidates are ``a_k = A_k(H)`` for
``A_k in (entropy, minmax, mse, percentile p for p in percentiles)`` (in this order). With
``Q_a(x) = clip(round(x / s), -128, 127) s``, ``s = fp32(a) / 127`` (the shipped scale, ``core.numerics``),
calibration batches ``b`` and ``L(t)`` the INT8 layers that read ``t`` (``quant.artifacts.placement``)::

    E_t(a) = sum_{l in L(t)}  sum_b || f_l(Q_a(x_b); Q_w(W_l)) - f_l(x_b; W_l) ||^2  /  sum_b || f_l(x_b; W_l) ||^2

where ``f_l`` is layer ``l`` (its bias in float), ``Q_w`` its per-channel weight quantization as
shipped (``max|W_c| / 127``) and any other activation input of ``l`` stays FP32. A quantized tensor
that feeds no INT8 layer (a residual-Add or pooling input) is judged by its own error
``E_t(a) = sum_b ||Q_a(x_b) - x_b||^2 / sum_b ||x_b||^2``; a tensor no quantizer of the Q/DQ model reads
(its range serves only implicit-INT8 TensorRT) by the same own error computed from its histogram
(:func:`histogram_errors`, no pass). The choice is ``a* = argmin_k E_t(a_k)``; ties (two methods
giving one amax) go to the earlier candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import numpy as np

from ..core.errors import ConfigError
from ..core.types import MethodChoice, RangeCandidate, TensorHistogram
from .algorithms import ALGORITHMS, MSE, Entropy, MinMax, Percentile, make_algorithm

LAYER_OUTPUT, TENSOR, TENSOR_HISTOGRAM = "layer output", "tensor", "tensor (histogram)"
"""The objectives of ``E_t`` (see the module docstring)."""


@dataclass(frozen=True)
class Auto:
    """The per-tensor choice among ``entropy``, ``minmax``, ``mse`` and ``percentile`` at each of
    ``percentiles``, by ``E_t`` (module docstring) measured on ``images`` calibration images.

    The cache is served through TensorRT's entropy calibrator, so its header says ``EntropyCalibration2``.
    """

    percentiles: tuple[float, ...] = (99.9, 99.99, 99.999)
    images: int = 64

    name: ClassVar[str] = "auto"
    trt_algorithm: ClassVar[str] = "EntropyCalibration2"

    def __post_init__(self):
        if not self.percentiles:
            raise ConfigError("invalid auto setting", subject="percentiles", got="none",
                              expected="at least one percentile, e.g. 99.9, 99.99, 99.999")
        for p in self.percentiles:
            Percentile(p)                    # validates 0 < p <= 100
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ConfigError("invalid image count", subject="--auto-images", got=repr(self.images),
                              expected="an integer >= 1 (calibration images of the auto pass)")

    def algorithms(self) -> tuple:
        """The candidate algorithms, in tie-break order."""
        return (Entropy(), MinMax(), MSE(), *(Percentile(float(p)) for p in self.percentiles))

    def candidates(self, hist: TensorHistogram) -> tuple[RangeCandidate, ...]:
        """Every candidate's amax for one tensor (pure functions of its histogram; errors not yet measured)."""
        return tuple(RangeCandidate(a.name, a.settings(), a.compute(hist)) for a in self.algorithms())

    def settings(self) -> dict:
        return {"candidates": [RangeCandidate(a.name, a.settings(), 0.0).label for a in self.algorithms()],
                "percentiles": [float(p) for p in self.percentiles], "images": self.images}


def histogram_errors(hist: TensorHistogram, amaxes: Sequence[float]) -> np.ndarray:
    """A tensor's own error ``E[(Q_a(x) - x)^2] / E[x^2]`` for each ``a``, from its |x| histogram with the
    values spread uniformly within each bin (the last bin ends at the recorded maximum ``m``).

    With ``D = a / 127``, the squared error of ``u >= 0`` is ``r(u)^2``, ``r(u) = u - D round(u / D)``,
    up to ``a`` and ``(u - a)^2`` above (clipped); its antiderivative is exactly::

        G(u) = round(u/D) D^3 / 12 + r(u)^3 / 3          for u <= a
        G(u) = 127 D^3 / 12 + (u - a)^3 / 3               for u > a

    so ``E_t(a) = sum_k rho_k (G(e_{k+1}) - G(e_k)) / sum_k rho_k (e_{k+1}^3 - e_k^3) / 3`` over bin
    edges ``e_k`` with densities ``rho_k = b_k / (e_{k+1} - e_k)``. (Negative values clip at -128 D rather
    than -127 D: ignored, a half step at one end.)
    """
    counts = np.asarray(hist.counts, dtype=np.float64)
    w = float(hist.bin_width)
    if w <= 0 or hist.amax <= 0:
        return np.zeros(len(amaxes))
    edges = np.arange(len(counts) + 1, dtype=np.float64) * w
    if edges[-2] < hist.amax < edges[-1]:
        edges[-1] = float(hist.amax)            # the last bin's values lie in [e_{N-1}, m]
    a = np.asarray(amaxes, dtype=np.float64)[:, None]
    d = a / 127.0
    k = np.round(np.minimum(edges[None, :], a) / d)
    r = np.minimum(edges[None, :], a) - k * d
    g = k * d ** 3 / 12.0 + r ** 3 / 3.0 + np.maximum(edges[None, :] - a, 0.0) ** 3 / 3.0
    density = counts / np.diff(edges)                # values per unit length within each bin
    err = (np.diff(g, axis=1) * density[None, :]).sum(axis=1)
    energy = float((np.diff(edges ** 3) / 3.0 * density).sum())
    return err / (energy if energy > 0 else 1.0)


def choose(candidates: Sequence[RangeCandidate], errors: Sequence[float], *, objective: str,
           consumers: Sequence[str] = ()) -> MethodChoice:
    """``argmin_k errors[k]`` (the first minimiser: ties go to the earlier candidate), with every
    candidate's error recorded. Non-finite errors never win; if none is finite the first candidate is kept."""
    if len(candidates) != len(errors) or not candidates:
        raise ConfigError("auto: one error per candidate expected", got=f"{len(errors)} error(s) for "
                                                                        f"{len(candidates)} candidate(s)")
    best = 0
    for k, e in enumerate(errors):
        if math.isfinite(e) and (not math.isfinite(errors[best]) or e < errors[best]):
            best = k
    measured = tuple(RangeCandidate(c.method, dict(c.settings), c.amax, float(e)) for c, e in zip(candidates, errors))
    return MethodChoice(best, measured, objective, tuple(consumers))


def chosen_counts(choices: Iterable[MethodChoice]) -> dict[str, int]:
    """How many tensors each method won, most first (``cache show`` and the logs)."""
    counts: dict[str, int] = {}
    for c in choices:
        counts[c.method.label] = counts.get(c.method.label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


METHODS: tuple[str, ...] = tuple(sorted(ALGORITHMS)) + (Auto.name,)
"""Every ``--method``: the histogram algorithms, then ``auto`` (a per-tensor choice among them that
also runs the model)."""


def make_method(name: str, **settings):
    """A ``--method`` by name: a registered histogram algorithm, or :class:`Auto`."""
    if name == Auto.name:
        return Auto(**settings)
    if name not in ALGORITHMS:
        raise ConfigError("unknown calibration method", subject="--method", got=repr(name),
                          expected="one of " + ", ".join(METHODS),
                          hint="auto picks, per tensor, the best of the others for the layers it feeds")
    return make_algorithm(name, **settings)
