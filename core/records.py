"""Typed records between the stages and in the result files: frozen dataclasses with one JSON codec.

Every record type derives from :class:`Record`. ``to_obj()`` gives the JSON object (field order is
the JSON key order; ``None`` fields and empty collections left at their default are left out unless a
field is declared ``_KEEP``) and
``from_obj()`` reads one back, checking every field against its annotation, so a results file that
a report can render is one that :meth:`Record.from_obj` accepts. The documents are
:class:`Evaluation` (``results.json``, ``trtquant-results/1``), :class:`Sweep` (``sweep.json``,
``trtquant-sweep/1``) and :class:`Debug` (``debug.json``, ``trtquant-debug/1``); :func:`read_document`
is the one reader of them all.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import CacheFormatError
from .fileio import json_text, read_json_document

RESULTS_FORMAT = "trtquant-results/1"
SWEEP_FORMAT = "trtquant-sweep/1"
DEBUG_FORMAT = "trtquant-debug/1"

_KEEP = {"keep": True}     # emitted even when None or empty


class RecordError(ValueError):
    """A record that does not hold together (a field of the wrong type, a missing required field)."""

    def __init__(self, where: str, got, expected: str):
        super().__init__(f"{where}: got {repr(got)[:80]}, expected {expected}")
        self.where, self.got, self.expected = where, got, expected


def _encode(value):
    if isinstance(value, Record):
        return value.to_obj()
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _decode(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, where)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_obj(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(where, value, "true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            raise RecordError(where, value, "an integer" if tp is int else "a number")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(where, value, "a string")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordError(where, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecordError(where, value, f"a list of {len(args)}")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecordError(where, value, "an object")
        vt = args[1] if args else Any
        return {k: _decode(vt, v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"no JSON decoding for {tp!r} ({where})")   # pragma: no cover - a record declared wrongly


class Record:
    """The JSON codec every record shares (see the module docstring)."""

    def to_obj(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            if (value is None or (value == () or value == {}) and has_default) and not f.metadata.get("keep"):
                continue                 # absent: None, or an empty collection left at its default
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_obj(cls, obj, where: str | None = None):
        where = where or cls.__name__
        if not isinstance(obj, dict):
            raise RecordError(where, obj, "an object")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in fields(cls):
            if f.name in obj:
                kwargs[f.name] = _decode(hints[f.name], obj[f.name], f"{where}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise RecordError(where, "missing", f"a {f.name!r} field")
        try:
            return cls(**kwargs)
        except RecordError as err:
            raise RecordError(f"{where}.{err.where}", err.got, err.expected) from None


def _require(record, names: tuple[str, ...], why: str) -> None:
    for name in names:
        if getattr(record, name) is None:
            raise RecordError(name, "missing", f"a {name!r} field ({why})")


# ---- engines and evaluation ----------------------------------------------------------------------

@dataclass(frozen=True)
class EngineInfo(Record):
    """What an engine is: backend, precision, device, whether its INT8 is simulated, and in words."""
    backend: str
    precision: str
    device: str
    simulated: bool
    description: str
    integer_kernels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Latency(Record):
    """Latency percentiles in milliseconds at ``batch`` (1, or the model's fixed batch)."""
    p50: float
    p90: float
    p99: float
    batch: int = 1
    iters: int = 0

    @classmethod
    def from_seconds(cls, seconds, batch: int = 1) -> "Latency":
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(*(float(np.percentile(ms, q)) for q in (50, 90, 99)), batch=batch, iters=int(ms.size))


@dataclass(frozen=True)
class Throughput(Record):
    images_per_s: float
    batch: int


@dataclass(frozen=True)
class Drop(Record):
    """FP32 minus the engine, in percentage points, with a 95% paired bootstrap interval."""
    points: float
    ci95: tuple[float, float]
    within_noise: bool


@dataclass(frozen=True)
class LayerChoice(Record):
    node: str
    precision: str
    reason: str


@dataclass(frozen=True)
class PlanSummary(Record):
    name: str
    counts: dict[str, int]
    default: str
    layers: tuple[LayerChoice, ...] = field(default=(), metadata=_KEEP)


@dataclass(frozen=True)
class OutputFidelity(Record):
    """One model output of an engine against FP32's: SQNR, mean cosine, max |error|, relative L2 error."""
    name: str
    sqnr_db: float
    cosine: float
    max_abs: float
    rel_error: float


@dataclass(frozen=True)
class EngineResult(Record):
    """One configuration of an evaluation: measured, or failed with its reason."""
    config: str
    backend: str
    status: str = "ok"
    reason: str | None = None
    build_s: float | None = None
    accuracy_pass_s: float | None = None
    timing_s: float | None = None
    compile_s: float | None = None       # --compile: torch.compile's seconds, part of accuracy_pass_s + timing_s
    engine: EngineInfo | None = None
    plan: PlanSummary | None = None
    latency_ms: Latency | None = None
    throughput: Throughput | None = None
    engine_bytes: int | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    peak_device_mb: float | None = None
    trtexec: tuple[str, ...] = ()
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    drop_pp: Drop | None = None
    outputs: tuple[OutputFidelity, ...] = ()
    metric: float | None = None          # the user's --metric, when one was given

    def __post_init__(self):
        if self.status == "ok":
            _require(self, ("engine", "plan", "latency_ms", "throughput", "agreement", "sqnr_db", "drop_pp",
                            "build_s"), "a measured configuration")
        elif self.status == "failed":
            _require(self, ("reason",), "a failed configuration")
        else:
            raise RecordError("status", self.status, "'ok' or 'failed'")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def simulated(self) -> bool:
        return bool(self.engine and self.engine.simulated)


@dataclass(frozen=True)
class ModelRef(Record):
    name: str
    fingerprint: str
    onnx: str | None = None


@dataclass(frozen=True)
class DataRef(Record):
    name: str
    fingerprint: str
    images: int
    labelled: bool
    skipped: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class CalibrationInfo(Record):
    images: int
    data_fingerprint: str
    seconds: float
    images_also_evaluated: int | None = None


@dataclass(frozen=True)
class Recommendation(Record):
    config: str | None = field(metadata=_KEEP)
    target: str
    reason: str
    target_drop_pp: float | None = None


@dataclass(frozen=True)
class Evaluation(Record):
    """``results.json``: every configuration's measurement, and what to ship."""
    FORMAT: ClassVar[str] = RESULTS_FORMAT
    WHAT: ClassVar[str] = "evaluation results file"
    model: ModelRef
    data: DataRef
    metric: str
    results: tuple[EngineResult, ...] = field(metadata=_KEEP)
    format: str = RESULTS_FORMAT
    settings: dict[str, Any] = field(default_factory=dict)
    settings_key: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    calibration: CalibrationInfo | None = None
    recommendation: Recommendation | None = None

    def __post_init__(self):
        if self.format != RESULTS_FORMAT:
            raise RecordError("format", self.format, repr(RESULTS_FORMAT))
        if self.data.labelled:
            for i, r in enumerate(self.results):
                if r.ok and (r.top1 is None or r.top5 is None):
                    raise RecordError(f"results[{i}]", "no top1/top5", "top-1 and top-5 (the data is labelled)")

    def to_obj(self) -> dict:        # "format" first, as in every versioned document we write
        obj = super().to_obj()
        return {"format": obj.pop("format"), **obj}

    @property
    def ok(self) -> tuple[EngineResult, ...]:
        return tuple(r for r in self.results if r.ok)

    def accuracy(self, r: EngineResult) -> float:
        """The row's value of the document's metric: top-1 where labelled, else agreement with FP32."""
        return r.top1 if self.data.labelled else r.agreement

    def with_results(self, results) -> "Evaluation":
        return replace(self, results=tuple(results))


# ---- the planner -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetRef(Record):
    text: str
    kind: str
    value: float
    meaning: str


@dataclass(frozen=True)
class SensitivityRow(Record):
    layer: str
    regain_sqnr_db: float | None = field(default=None, metadata=_KEEP)
    alone_int8_sqnr_db: float | None = field(default=None, metadata=_KEEP)
    fp16_cost_ms: float | None = None      # estimated latency added when the layer alone stays FP16


@dataclass(frozen=True)
class SearchStep(Record):
    fp16: tuple[str, ...]
    metric: float
    cost: float
    met: bool
    action: str
    latency_ms: float | None = None        # the plan's estimated latency (``Sweep.latency`` says how)


@dataclass(frozen=True)
class LatencyEstimate(Record):
    """How the sweep's latencies were obtained: estimated by a model, never measured (``kind`` names it)."""
    kind: str                              # "roofline" | "tensorrt-layers" (TensorRT's measured layer times)
    gpu: str
    gpu_source: str                        # why this GPU
    batch: int
    model: str                             # the model's description, in words
    all_int8_ms: float
    all_fp16_ms: float
    plan_ms: float
    measured: bool = False


@dataclass(frozen=True)
class FrontPoint(Record):
    """A plan on the Pareto front of accuracy vs estimated latency."""
    label: str
    fp16_layers: int
    metric: float
    latency_ms: float
    step: int | None = None                # its index in the search path (None: not a search step)
    chosen: bool = False


@dataclass(frozen=True)
class SearchRecord(Record):
    met: bool
    partial: bool
    evaluations: int
    fp16_layers: tuple[str, ...]
    simulated_metric: float
    path: tuple[SearchStep, ...] = ()


@dataclass(frozen=True)
class Validation(Record):
    """The chosen plan rebuilt as an engine and measured (or why that failed)."""
    backend: str
    status: str
    metric: float | None = None
    engine: str | None = None
    simulated: bool | None = None
    meets_target: bool | None = None
    note: str | None = None
    reason: str | None = None

    def __post_init__(self):
        if self.status == "ok":
            _require(self, ("metric", "engine", "simulated", "meets_target"), "a validated plan")
        elif self.status == "failed":
            _require(self, ("reason",), "a failed validation")
        else:
            raise RecordError("status", self.status, "'ok' or 'failed'")


@dataclass(frozen=True)
class Sweep(Record):
    """``sweep.json``: the sensitivity ranking, the search path, the chosen plan's validation."""
    FORMAT: ClassVar[str] = SWEEP_FORMAT
    WHAT: ClassVar[str] = "sweep results file"
    model: ModelRef
    data: DataRef
    target: TargetRef
    metric: str
    fp32_metric: float | None = field(metadata=_KEEP)
    calibration: str
    layers: int
    notes: tuple[str, ...]
    sensitivity: tuple[SensitivityRow, ...]
    all_int8_sqnr_db: float
    ranking_partial: bool
    search: SearchRecord
    validation: Validation
    trtexec: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    objective: str = "layers"              # what the search minimised: "latency" (estimated) or "layers"
    latency: LatencyEstimate | None = None
    front: tuple[FrontPoint, ...] = ()     # the Pareto front of the evaluated plans, by latency
    format: str = SWEEP_FORMAT

    def __post_init__(self):
        if self.format != SWEEP_FORMAT:
            raise RecordError("format", self.format, repr(SWEEP_FORMAT))

    def to_obj(self) -> dict:
        obj = super().to_obj()
        return {"format": obj.pop("format"), **obj}


# ---- the divergence debugger ----------------------------------------------------------------------

@dataclass(frozen=True)
class TensorDivergence(Record):
    """One ONNX tensor of the quantized model against FP32's (``quant/debug.py`` defines each number).
    SQNRs in dB: ``inf`` = no error; ``weight_sqnr_db``/``activation_sqnr_db`` are None for a node
    without such a quantizer of its own."""
    tensor: str
    node: str
    op: str
    sqnr_db: float                       # accumulated: the quantized run's tensor vs FP32's
    cosine: float                        # mean per-image cosine of the same
    added_sqnr_db: float                 # the node on FP32 inputs with its own quantizers
    inherited_sqnr_db: float             # the node on the quantized run's inputs without its own quantizers
    weight_sqnr_db: float | None = None
    activation_sqnr_db: float | None = None
    quantizers: tuple[str, ...] = ()     # its own quantizers, e.g. "weight conv.w", "layer input x"
    layer: str | None = None             # the plan layer whose FP16 choice removes them


@dataclass(frozen=True)
class DebugJump(Record):
    """The first node where the error jumps, and why (the criterion of ``quant/debug.py``)."""
    node: str
    tensor: str
    added_sqnr_db: float
    inherited_sqnr_db: float
    sqnr_db: float
    cause: str                           # "weight" | "activation" | "weight and activation"
    layer: str | None = None


@dataclass(frozen=True)
class DebugSuggestion(Record):
    """The debugged plan with its worst layers kept FP16, simulated (FP16 computed in FP32)."""
    fp16_layers: tuple[str, ...] = field(metadata=_KEEP)
    layer_precisions: str
    output_sqnr_db: float                # first model output, the debugged plan
    suggested_output_sqnr_db: float      # first model output, the suggested plan
    plan_file: str | None = None


@dataclass(frozen=True)
class Debug(Record):
    """``debug.json``: every tensor's divergence from FP32, the first jump, the suggested FP16 layers."""
    FORMAT: ClassVar[str] = DEBUG_FORMAT
    WHAT: ClassVar[str] = "debug results file"
    model: ModelRef
    data: DataRef
    plan: PlanSummary
    calibration: str
    criterion: str
    jump_db: float
    batches: int
    batch_size: int
    tensors: tuple[TensorDivergence, ...] = field(metadata=_KEEP)
    first_jump: DebugJump | None = field(metadata=_KEEP)
    suggestion: DebugSuggestion
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format: str = DEBUG_FORMAT

    def __post_init__(self):
        if self.format != DEBUG_FORMAT:
            raise RecordError("format", self.format, repr(DEBUG_FORMAT))

    def to_obj(self) -> dict:
        obj = super().to_obj()
        return {"format": obj.pop("format"), **obj}


def document_text(doc: Evaluation | Sweep | Debug) -> str:
    """The JSON file of a document (the one layout of our JSON files)."""
    return json_text(doc.to_obj())


def parse_document(cls, obj, path: str | Path = "results.json"):
    """``cls.from_obj`` with a record error turned into the user's error (naming the file and field)."""
    if not isinstance(obj, dict) or obj.get("format") != cls.FORMAT:
        raise CacheFormatError(f"not a {cls.WHAT}", subject=str(path), expected=repr(cls.FORMAT))
    try:
        return cls.from_obj(obj, "document")
    except RecordError as err:
        raise CacheFormatError(f"malformed {cls.WHAT}", subject=f"{path}: {err.where}", got=repr(err.got)[:80],
                               expected=err.expected,
                               hint="re-run the command, or re-render from an unedited file") from None


def read_document(cls, path: str | Path):
    """The one reader of :class:`Evaluation`, :class:`Sweep` and :class:`Debug` files."""
    obj = read_json_document(Path(path), fmt=cls.FORMAT, what=cls.WHAT, error=CacheFormatError)
    return parse_document(cls, obj, path)
