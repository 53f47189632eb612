"""Accuracy metrics, paired bootstrap confidence intervals and the Pareto front."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the ``k`` highest logits? (labels < 0 count as wrong)."""
    top = np.argpartition(-logits, kth=min(k, logits.shape[1]) - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1) & (labels >= 0)


def agreement(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: same top-1 class as the reference engine (bool); for a dense output (N, C, H, W, ...),
    e.g. a segmentation, the fraction of positions whose class along axis 1 agrees (float)."""
    same = logits.argmax(1) == reference.argmax(1)
    return same if same.ndim == 1 else same.reshape(len(same), -1).mean(1)


def _f64(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)


def _sqnr(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB; +inf for no noise."""
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))


def sqnr_db(reference, approx) -> float:
    """Signal-to-quantization-noise ratio, 10 log10(sum ref^2 / sum (ref - approx)^2), in dB (NumPy or torch)."""
    ref, approx = _f64(reference), _f64(approx)
    return _sqnr(float((ref ** 2).sum()), float(((ref - approx) ** 2).sum()))


def sample_cosine(reference: np.ndarray, approx: np.ndarray) -> np.ndarray:
    """Per sample (axis 0): the cosine similarity of its output (flattened); 1 where either is all zero."""
    a = reference.astype(np.float64).reshape(len(reference), -1)
    b = approx.astype(np.float64).reshape(len(approx), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def mean_cosine(reference: np.ndarray, approx: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of each sample's output (flattened)."""
    return float(np.mean(sample_cosine(reference, approx)))


FIDELITY_TERMS = ("signal", "noise", "cosine", "max_abs")
"""The columns of :func:`fidelity_terms`: per sample sum ref^2, sum (ref - approx)^2, cosine, max |ref - approx|."""


def fidelity_terms(reference, approx) -> np.ndarray:
    """Per sample (axis 0) of one output, float64 rows ``(n, 4)`` of :data:`FIDELITY_TERMS`.

    Every fidelity summary is a function of these rows (:func:`fidelity_from_terms`), and each row
    depends on its sample alone, so the rows of image shards concatenated in image order summarise to
    exactly the numbers of one pass over every image (a sum of per-shard dB, or of per-shard energies in
    another order, would not)."""
    ref, app = _f64(reference), _f64(approx)
    if ref.shape != app.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {app.shape}")
    r, e = ref.reshape(len(ref), -1), (ref - app).reshape(len(ref), -1)
    return np.stack([(r ** 2).sum(1), (e ** 2).sum(1), sample_cosine(ref, app),
                     np.abs(e).max(1, initial=0.0)], axis=1)


def fidelity_from_terms(terms: np.ndarray) -> dict[str, float]:
    """The fidelity of one output over every sample, from its :func:`fidelity_terms` rows:
    SQNR = 10 log10(sum signal / sum noise) dB, cosine = the mean per-sample cosine, max |error| = the
    largest per-sample one, relative L2 error = sqrt(sum noise / sum signal)."""
    terms = np.asarray(terms, dtype=np.float64).reshape(-1, len(FIDELITY_TERMS))
    signal, noise = float(terms[:, 0].sum()), float(terms[:, 1].sum())
    norm, err = float(np.sqrt(signal)), float(np.sqrt(noise))
    return {"sqnr_db": _sqnr(signal, noise), "cosine": float(np.mean(terms[:, 2])),
            "max_abs": float(terms[:, 3].max(initial=0.0)),
            "rel_error": err / norm if norm > 0 else (0.0 if err == 0 else float("inf"))}


def output_fidelity(reference: np.ndarray, approx: np.ndarray) -> dict[str, float]:
    """One output against its reference: SQNR (dB), mean per-sample cosine, max |error|, relative L2 error."""
    return fidelity_from_terms(fidelity_terms(reference, approx))


@dataclass(frozen=True)
class ImageScores:
    """One engine's scores per image against the FP32 reference, in image order (what evaluate and sweep
    reduce: every number they report is a mean of per-image values or a function of per-image energies).
    Shards of images give the scores of their images; :meth:`concat` in image order gives exactly the
    scores, hence the summaries, of one pass over every image."""

    agreement: np.ndarray                 # bool: top-1 agrees with FP32; float for a dense output: agreeing fraction
    fidelity: tuple[np.ndarray, ...]      # per output compared: fidelity_terms rows
    top1: np.ndarray | None = None        # bool: the label is the top-1 class (labelled data)
    top5: np.ndarray | None = None        # bool: the label is among the 5 highest

    def __len__(self) -> int:
        return len(self.agreement)

    @staticmethod
    def concat(parts: Sequence["ImageScores | None"]) -> "ImageScores | None":
        """The scores of consecutive image shards, in order (None: a shard without images)."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None

        def cat(get):
            return None if get(parts[0]) is None else np.concatenate([get(p) for p in parts])
        return ImageScores(cat(lambda p: p.agreement),
                           tuple(np.concatenate(f) for f in zip(*(p.fidelity for p in parts))),
                           cat(lambda p: p.top1), cat(lambda p: p.top5))


def image_scores(reference_outputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                 labels: np.ndarray | None = None) -> ImageScores:
    """Per image: agreement of the first output with the reference's, fidelity terms of every output
    given (paired with the reference's), and top-1/top-5 correctness when ``labels`` are given."""
    logits, ref = outputs[0], reference_outputs[0]
    return ImageScores(agreement(logits, ref), tuple(fidelity_terms(r, o) for r, o in zip(reference_outputs, outputs)),
                       None if labels is None else topk_correct(logits, labels, 1),
                       None if labels is None else topk_correct(logits, labels, 5))


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


# ---- a user's metric: --metric module:function ------------------------------------------------------

class MetricError(ConfigError):
    """The user's --metric cannot be imported, raises, or returns something that is not a number."""


def load_user_metric(spec: str, flag: str = "--metric"):
    """``module:function`` (an importable module, or a ``path/to/file.py``) -> the function.

    It is called as ``function(fp32_outputs, outputs, labels)``: two tuples of arrays (every model
    output, in graph order, over every evaluated image) and the int64 labels or None, and returns one
    number, higher is better (e.g. a detector's mAP)."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name.isidentifier():
        raise MetricError("not a metric function", subject=f"{flag} {spec}", expected="MODULE:FUNCTION or FILE.py:FUNCTION",
                          hint="e.g. --metric mymetrics:map50 (mymetrics.py on PYTHONPATH or in the current folder)")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise MetricError("metric file not found", subject=f"{flag} {spec}", got=module_name)
            mspec = importlib.util.spec_from_file_location(f"trtquant_user_metric_{abs(hash(module_name))}", module_name)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except MetricError:
        raise
    except Exception as err:   # the user's module: any error while importing it
        raise MetricError("cannot import the metric module", subject=f"{flag} {spec}",
                          got=f"{type(err).__name__}: {err}"[:300],
                          hint="check the module name and that it imports on its own") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise MetricError("the metric module has no such function", subject=f"{flag} {spec}",
                          got=f"{module_name} defines no callable {func_name!r}",
                          expected="a function (fp32_outputs, outputs, labels) -> float")
    return fn


def call_user_metric(fn, spec: str, fp32_outputs, outputs, labels, flag: str = "--metric") -> float:
    """The user's metric on one engine's outputs: a finite float, or a clear error naming the flag."""
    try:
        value = fn(tuple(fp32_outputs), tuple(outputs), labels)
    except Exception as err:   # the user's code: any error it raises
        raise MetricError("the metric function raised an error", subject=f"{flag} {spec}",
                          got=f"{type(err).__name__}: {err}"[:300],
                          hint="it is called as f(fp32_outputs, outputs, labels) with tuples of numpy arrays") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(float(value)):
        raise MetricError("the metric function did not return a number", subject=f"{flag} {spec}",
                          got=repr(value)[:80], expected="one finite number, higher is better")
    return float(value)
