"""Accuracy metrics, paired bootstrap confidence intervals and the Pareto front."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the ``k`` highest logits? (labels < 0 count as wrong)."""
    top = np.argpartition(-logits, kth=min(k, logits.shape[1]) - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1) & (labels >= 0)


def agreement(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: same top-1 class as the reference engine."""
    return logits.argmax(1) == reference.argmax(1)


def _f64(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)


def sqnr_db(reference, approx) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(sum ref^2 / sum (ref - approx)^2), in dB (NumPy or torch)."""
    ref, approx = _f64(reference), _f64(approx)
    noise = float(((ref - approx) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise))


def mean_cosine(reference: np.ndarray, approx: np.ndarray) -> float:
    a, b = reference.astype(np.float64), approx.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)))


@dataclass(frozen=True)
class Drop:
    """Accuracy drop in percentage points (reference minus candidate) with a 95% bootstrap interval."""

    points: float
    lo: float
    hi: float

    @property
    def within_noise(self) -> bool:
        return self.lo <= 0.0 <= self.hi


def paired_bootstrap_drop(ref_correct: np.ndarray, cand_correct: np.ndarray, *, samples: int = 2000,
                          seed: int = 0) -> Drop:
    """Drop = acc(ref) - acc(cand) in pp; 95% percentile interval from resampling *images* (paired:
    the same resampled images for both engines, which is what makes small differences detectable)."""
    ref = np.asarray(ref_correct, dtype=np.float64)
    cand = np.asarray(cand_correct, dtype=np.float64)
    n = len(ref)
    if n == 0:
        return Drop(0.0, 0.0, 0.0)
    diff = ref - cand
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    boot = diff[idx].mean(axis=1) * 100
    return Drop(points=float(diff.mean() * 100), lo=float(np.percentile(boot, 2.5)), hi=float(np.percentile(boot, 97.5)))


def pareto_front(latency: list[float], accuracy: list[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy),
    sorted by latency."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], -accuracy[i]))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front
