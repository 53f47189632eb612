"""Cache tools: read ranges from any artifact, show them, diff two, convert between formats.

Artifacts: a TensorRT calibration cache (``TRT-...`` text), a ranges JSON (``trtquant-ranges/1``),
or a Q/DQ ONNX model (activation scales of its per-tensor QuantizeLinear nodes).
"""

from __future__ import annotations
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cache import (
    DEFAULT_TRT_VERSION,
    ZERO_TENSOR_AMAX,
    TrtCache,
    looks_like_ranges_json,
    looks_like_trt_cache,
    ranges_to_json,
    trt_version_int,
)
from ..core.errors import CacheFormatError
from ..calibrators.auto import chosen_counts
from ..core.fileio import OutputSet
from ..core.types import RangeSet
from .artifacts.plan import resolve_plan
from .artifacts.qdq import build_qdq_model
from .artifacts.ranges import load_ranges, looks_like_qdq_onnx

FORMATS = ("cache", "ranges", "onnx")


def same_kind_test(to: str):
    """The file an output of format ``to`` may replace without --force."""
    return {"cache": looks_like_trt_cache, "ranges": looks_like_ranges_json, "onnx": looks_like_qdq_onnx}[to]


def show(path: str | Path) -> str:
    rs, fmt, cache = load_ranges(path)
    zero = [n for n, sc in cache.scales.items() if not sc > 0] if cache else []
    head = (f"{path}: {fmt}" + (f" ({cache.header()})" if cache else f" (method {rs.method})")
            + f", {len(set(rs.ranges) | set(zero))} tensors" + (f" ({len(zero)} with scale 0)" if zero else ""))
    width = max([len("tensor")] + [len(n) for n in list(rs.ranges) + zero])
    lines = [head, f"{'tensor':<{width}}  {'scale':>12}  {'amax':>12}"
             + (f"  {'method (auto)':<17}  {'error':>9}  objective" if rs.methods else "")]
    if rs.methods:                # --method auto: the method chosen per tensor
        counts = chosen_counts(rs.methods.values())
        lines.insert(1, "auto chose " + ", ".join(f"{k} for {v}" for k, v in counts.items()) + " tensor(s)")
    for name, r in rs.ranges.items():
        if name not in zero:
            choice = rs.methods.get(name)
            err = choice.method.error if choice is not None else None
            lines.append(f"{name:<{width}}  {r.scale:>12.6g}  {r.amax:>12.6g}"
                         + (f"  {choice.method.label:<17}  {err if err is not None else float('nan'):>9.3g}  "
                            f"{choice.objective}" if choice is not None else ""))
    for name in zero:
        lines.append(f"{name:<{width}}  {0:>12}  {0:>12}  (scale 0: an all-zero tensor; build and convert give it "
                     f"the smallest range, as calibrate does)")
    return "\n".join(lines)


@dataclass(frozen=True)
class RangeDiff:
    changed: list[tuple[str, float, float]]     # (tensor, amax a, amax b)
    missing: list[str]                          # in a, not in b
    added: list[str]                            # in b, not in a
    same: int
    headers: tuple[str, str] | None = None      # (header a, header b) when both are caches and they differ
    zero: list[str] = field(default_factory=list)  # scale 0 in a or b (no range)

    @property
    def identical(self) -> bool:
        return not (self.changed or self.missing or self.added or self.headers or self.zero)


def diff(a: str | Path, b: str | Path, *, rel_tol: float = 1e-6) -> RangeDiff:
    ra, _, ca = load_ranges(a)
    rb, _, cb = load_ranges(b)
    headers = (ca.header(), cb.header()) if ca and cb and ca.header() != cb.header() else None
    zero = sorted({n for c in (ca, cb) if c for n, sc in c.scales.items() if not sc > 0})
    changed, same = [], 0
    for name, r in ra.ranges.items():
        if name in rb.ranges:
            other = rb.ranges[name].amax
            if math.isclose(r.amax, other, rel_tol=rel_tol):
                same += 1
            else:
                changed.append((name, r.amax, other))
    return RangeDiff(changed=changed, missing=[n for n in ra.ranges if n not in rb.ranges and n not in zero],
                     added=[n for n in rb.ranges if n not in ra.ranges and n not in zero], same=same,
                     headers=headers, zero=zero)


def format_diff(d: RangeDiff, a: str, b: str, limit: int = 50) -> str:
    lines = [f"{a} -> {b}: {d.same} same, {len(d.changed)} changed, {len(d.missing)} missing in b, {len(d.added)} added in b"]
    if d.headers:
        lines.append(f"  header   {d.headers[0]} -> {d.headers[1]} (TensorRT ignores a cache whose header is not its own)")
    lines += [f"  zero     {n}: scale 0 (no range) in a or b" for n in d.zero[:limit]]
    for name, x, y in sorted(d.changed, key=lambda t: -abs(math.log(t[2] / t[1])) if t[1] > 0 and t[2] > 0 else 0)[:limit]:
        lines.append(f"  changed  {name}: amax {x:.6g} -> {y:.6g} ({(y / x - 1) * 100:+.2f}%)" if x else f"  changed  {name}")
    lines += [f"  missing  {n}" for n in d.missing[:limit]]
    lines += [f"  added    {n}" for n in d.added[:limit]]
    return "\n".join(lines)


def convert(src: str | Path, dst: str | Path, *, to: str, trt_version: str | None = None,
            algorithm: str | None = None, graph=None, outputs: OutputSet | None = None) -> str:
    """Write ``src``'s ranges to ``dst`` as ``to`` (cache | ranges | onnx). A cache keeps its header unless
    ``trt_version``/``algorithm`` rewrite it. ``onnx`` needs the model ``graph`` (all-INT8 Q/DQ model)."""
    if to not in FORMATS:
        raise CacheFormatError("unknown output format", subject="--to", got=repr(to), expected=" | ".join(FORMATS))
    rs, fmt, cache = load_ranges(src)
    dst = Path(dst)
    if outputs is None:
        outputs = OutputSet(force=True)     # the library call: the caller chose the path
        outputs.add(dst, flag="--out")
    zero = [n for n, sc in cache.scales.items() if not sc > 0] if cache else []
    note = (f"; {len(zero)} tensor(s) with scale 0 (all-zero) given the placeholder amax {ZERO_TENSOR_AMAX:g}: "
            f"{', '.join(zero[:3])}" if zero else "")
    with outputs:
        if to == "cache":
            version = trt_version_int(trt_version) if trt_version else (cache.version if cache else trt_version_int(DEFAULT_TRT_VERSION))
            algo = algorithm or (cache.algorithm if cache else "EntropyCalibration2")
            out = TrtCache.from_ranges(rs, algorithm=algo, version=version)
            outputs.stage(dst, out.to_text())
            outputs.commit()
            return out.header() + note
        if to == "ranges":
            outputs.stage(dst, ranges_to_json(rs))
            outputs.commit()
            return f"{len(rs.ranges)} tensors" + note
        return _convert_to_onnx(rs, dst, graph, outputs, src=Path(src)) + note


def _convert_to_onnx(rs: RangeSet, dst: Path, graph, outputs: OutputSet, src: Path | None = None) -> str:
    if graph is None:
        raise CacheFormatError("converting to a Q/DQ ONNX model needs the model", subject="--to onnx",
                               hint="pass --model NAME or --onnx MODEL.onnx (the graph the ranges belong to)")

    model, summary = build_qdq_model(graph, rs, resolve_plan("int8", graph), ranges_subject=str(src or "ranges"),
                                     ranges_hint="pass the model these ranges were calibrated on "
                                                 "(--onnx MODEL.onnx or --model NAME; default: mobilenet_v2)")
    outputs.stage(dst, model.SerializeToString())
    outputs.commit()
    return f"{summary.int8_nodes} INT8 layers, {summary.activation_quantizers} activation quantizers"


def output_format(out: Path) -> str:
    """What ``cache convert --out`` writes when ``--to`` is not given: from the output's suffix."""
    return {".json": "ranges", ".onnx": "onnx"}.get(Path(out).suffix.lower(), "cache")
