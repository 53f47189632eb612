"""What a run targets: the engine backends, and the accuracy-target grammar shared by ``evaluate --target-drop`` and ``sweep --target-drop``.

Accepted forms (case and spaces ignored)::

    0.5%  or 0.5      at most 0.5 percentage points of top-1 below FP32 (0 <= value <= 100)
    0.5%rel           at most 0.5 % of FP32's top-1 (relative; 0 <= value <= 100)
    agree:99%         agree with FP32's top-1 on at least 99 % of images (0 < value <= 100)
    sqnr:30dB         the outputs' SQNR against FP32's outputs at least 30 dB (any model: no labels needed)
    cosine:0.999      the outputs' mean cosine similarity to FP32's at least 0.999
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError

BACKENDS = ("onnxruntime", "openvino", "torch", "tensorrt")

TARGET_FORMS = ("0.5% (percentage points of top-1), 0.5%rel (relative to FP32's top-1), agree:99% (agreement with FP32), "
                "sqnr:30dB (output SQNR vs FP32) or cosine:0.999 (mean output cosine vs FP32)")

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
FIDELITY_KINDS = ("sqnr", "cosine")      # measured on the outputs against FP32: no labels needed


@dataclass(frozen=True)
class Target:
    """An accuracy target. Drop kinds (``abs``, ``rel``) and ``agree`` compare a fraction in [0, 1] with
    FP32's; fidelity kinds compare the outputs' SQNR (dB) or mean cosine with FP32's outputs."""

    kind: str       # abs | rel | agree | sqnr | cosine
    value: float    # pp (abs), percent of FP32 (rel), minimum agreement % (agree), minimum dB (sqnr), minimum cosine
    text: str

    def describe(self) -> str:
        if self.kind == "abs":
            return f"lose at most {self.value:g} percentage points of top-1 vs FP32"
        if self.kind == "rel":
            return f"lose at most {self.value:g}% of FP32's top-1 (relative)"
        if self.kind == "agree":
            return f"agree with FP32's top-1 on at least {self.value:g}% of images"
        if self.kind == "sqnr":
            return f"outputs within {self.value:g} dB SQNR of FP32's (at least)"
        return f"outputs' mean cosine similarity to FP32's at least {self.value:g}"

    @property
    def metric_name(self) -> str:
        return {"sqnr": "SQNR dB vs FP32", "cosine": "mean cosine vs FP32"}.get(self.kind, "")

    def format(self, metric: float | None) -> str:
        """A metric value as the target's kind reads it: 81.25% | 31.2 dB | 0.99912."""
        if metric is None:
            return "n/a"
        if self.kind == "sqnr":
            return f"{metric:.1f} dB"
        if self.kind == "cosine":
            return f"{metric:.5f}"
        return f"{metric * 100:.2f}%"

    def allowed_drop(self, fp32_acc: float) -> float:
        """Allowed drop in pp of the metric (accuracy or agreement); drop and agreement kinds only."""
        if self.kind == "abs":
            return self.value
        if self.kind == "rel":
            return fp32_acc * 100 * self.value / 100
        if self.kind == "agree":
            return 100 - self.value
        raise ValueError(f"a {self.kind} target has no drop")

    def met(self, fp32_metric: float, metric: float, margin_pp: float = 0.0) -> bool:
        """``metric`` meets the target (drop kinds with ``margin_pp`` percentage points to spare: search
        tighter than you validate). Fidelity kinds: ``metric`` is the SQNR in dB or the mean cosine."""
        if self.kind in FIDELITY_KINDS:
            return metric >= self.value
        return (fp32_metric - metric) * 100 + margin_pp <= self.allowed_drop(fp32_metric) + 1e-9


_BOUNDED_FORMS = (   # kind, pattern, upper bound (lower: > 0), error, accepted form
    ("sqnr", rf"sqnr:{_NUM}(?:db)?", 200.0, "invalid SQNR target", "sqnr:D dB with 0 < D <= 200"),
    ("cosine", rf"cos(?:ine)?:{_NUM}", 1.0, "invalid cosine target", "cosine:C with 0 < C <= 1"),
    ("agree", rf"(?:agree:{_NUM}%?|{_NUM}%agree)", 100.0, "invalid agreement target", "agree:P% with 0 < P <= 100"),
)


def parse_target(text: str, *, flag: str = "--target-drop") -> Target:
    """Parse and range-check a target; errors name ``flag`` and list the accepted forms."""
    t = str(text).strip().lower().replace(" ", "")
    for kind, pattern, upper, what, expected in _BOUNDED_FORMS:
        m = re.fullmatch(pattern, t)
        if m:
            v = float(next(g for g in m.groups() if g is not None))
            if not (math.isfinite(v) and 0 < v <= upper):
                raise ConfigError(what, subject=flag, got=repr(text), expected=expected)
            return Target(kind, v, str(text))
    m = re.fullmatch(rf"{_NUM}(%)?(rel)?", t)
    if not m:
        raise ConfigError("invalid target", subject=flag, got=repr(text), expected=TARGET_FORMS)
    v = float(m.group(1))
    if not (math.isfinite(v) and 0 <= v <= 100):
        raise ConfigError("target out of range", subject=flag, got=repr(text),
                          expected="a drop between 0 and 100 (percentage points, or percent with 'rel')")
    return Target("rel" if m.group(3) else "abs", v, str(text))
