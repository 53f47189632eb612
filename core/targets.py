"""What a run targets: the engine backends, and the accuracy-target grammar shared by ``evaluate --target-drop`` and ``sweep --target-drop``.

Accepted forms (case and spaces ignored)::

    0.5%  or 0.5      at most 0.5 percentage points of top-1 below FP32 (0 <= value <= 100)
    0.5%rel           at most 0.5 % of FP32's top-1 (relative; 0 <= value <= 100)
    agree:99%         agree with FP32's top-1 on at least 99 % of images (0 < value <= 100)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConfigError

BACKENDS = ("onnxruntime", "openvino", "torch", "tensorrt")

TARGET_FORMS = "0.5% (pp of top-1), 0.5%rel (relative to FP32's top-1) or agree:99% (agreement with FP32)"

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class ParsedTarget:
    kind: str       # abs | rel | agree
    value: float
    text: str


def parse_target(text: str, *, flag: str = "--target-drop") -> ParsedTarget:
    """Parse and range-check a target; errors name ``flag`` and list the accepted forms."""
    t = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(rf"(?:agree:{_NUM}%?|{_NUM}%agree)", t)
    if m:
        v = float(m.group(1) or m.group(2))
        if not (math.isfinite(v) and 0 < v <= 100):
            raise ConfigError("invalid agreement target", subject=flag, got=repr(text),
                              expected="agree:P% with 0 < P <= 100")
        return ParsedTarget("agree", v, str(text))
    m = re.fullmatch(rf"{_NUM}(%)?(rel)?", t)
    if not m:
        raise ConfigError("invalid target", subject=flag, got=repr(text), expected=TARGET_FORMS)
    v = float(m.group(1))
    if not (math.isfinite(v) and 0 <= v <= 100):
        raise ConfigError("target out of range", subject=flag, got=repr(text),
                          expected="a drop between 0 and 100 (percentage points, or percent with 'rel')")
    return ParsedTarget("rel" if m.group(3) else "abs", v, str(text))
