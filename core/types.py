"""Values that flow between the stages: statistics, histograms and ranges.

Every tensor is keyed by its ONNX value name (= the TensorRT network tensor name).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import CacheFormatError, ConfigError
from .fileio import atomic_write_bytes

STATS_FORMAT = "trtquant-stats/1"


@dataclass(frozen=True, eq=False)
class TensorHistogram:
    """Histogram of |x| for one tensor, collected over the whole calibration set.

    Bin ``k`` counts values in ``[k * bin_width, (k + 1) * bin_width)`` (the last bin also holds
    its right edge), exactly as ``torch.histc(|x|, bins=len(counts), min=0, max=len(counts) * bin_width)``.
    ``bin_width`` is fixed by the first batch with a non-zero maximum (its max / num_bins) and the
    histogram grows by whole bins when a later batch exceeds the range (NVIDIA's reference scheme),
    so ``len(counts)`` can exceed the configured bin count. ``bin_width == 0`` means every value
    seen was zero; then ``counts`` is a single bin holding ``numel``.
    """

    name: str
    amax: float
    bin_width: float
    counts: np.ndarray
    numel: int

    def __post_init__(self):
        if not (math.isfinite(self.amax) and self.amax >= 0):
            raise ConfigError("invalid histogram", subject=f"tensor {self.name!r}", got=f"amax={self.amax}",
                              expected="a finite amax >= 0")
        if self.counts.ndim != 1 or len(self.counts) == 0:
            raise ConfigError("invalid histogram", subject=f"tensor {self.name!r}",
                              got=f"counts of shape {self.counts.shape}", expected="a non-empty 1-D array")

    @property
    def num_bins(self) -> int:
        return len(self.counts)


@dataclass(frozen=True, eq=False)
class CalibrationStats:
    """The result of one statistics pass: a histogram per tensor plus provenance.

    Saved as ``.npz`` so every range algorithm can be recomputed later without running the model.
    """

    histograms: Mapping[str, TensorHistogram]
    model_fingerprint: str
    data_fingerprint: str
    num_images: int
    num_bins: int
    meta: Mapping[str, object] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    def to_bytes(self) -> bytes:
        import io

        names = list(self.histograms)
        hists = [self.histograms[n] for n in names]
        offsets = np.cumsum([0] + [h.num_bins for h in hists]).astype(np.int64)
        header = {
            "format": STATS_FORMAT,
            "names": names,
            "model_fingerprint": self.model_fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "num_images": self.num_images,
            "num_bins": self.num_bins,
            "meta": dict(self.meta),
        }
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            counts=np.concatenate([h.counts.astype(np.float64) for h in hists]) if hists else np.zeros(0),
            offsets=offsets,
            amax=np.array([h.amax for h in hists], dtype=np.float64),
            bin_width=np.array([h.bin_width for h in hists], dtype=np.float64),
            numel=np.array([h.numel for h in hists], dtype=np.int64),
        )
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationStats":
        path = Path(path)
        if not path.is_file():
            raise CacheFormatError("statistics file not found", subject=str(path),
                                   hint="write one with `cli.py calibrate --stats FILE`")
        expected = f"a {STATS_FORMAT} .npz written by `cli.py calibrate --stats`"
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as err:
            raise CacheFormatError("cannot read statistics file", subject=str(path), got=str(err)) from err
        if magic != b"PK\x03\x04":
            raise CacheFormatError("not a statistics file", subject=str(path),
                                   got="a file that is not a .npz (zip) archive", expected=expected)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                counts, offsets = z["counts"], z["offsets"]
                amax, width, numel = z["amax"], z["bin_width"], z["numel"]
        except Exception as err:  # noqa: BLE001  (zip, npy and JSON errors of every kind: all "not a stats file")
            raise CacheFormatError("cannot read statistics file", subject=str(path),
                                   got=f"{type(err).__name__}: {str(err)[:200]}", expected=expected) from err
        if not isinstance(header, dict) or header.get("format") != STATS_FORMAT:
            raise CacheFormatError("unsupported statistics file", subject=str(path),
                                   got=repr(header.get("format") if isinstance(header, dict) else type(header).__name__),
                                   expected=repr(STATS_FORMAT))
        try:
            names = header["names"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("'names' is not a list of strings")
            n = len(names)
            for arr, what in ((amax, "amax"), (width, "bin_width"), (numel, "numel")):
                if arr.ndim != 1 or len(arr) != n:
                    raise ValueError(f"{what} has shape {arr.shape}, expected ({n},)")
            if offsets.ndim != 1 or len(offsets) != n + 1 or counts.ndim != 1:
                raise ValueError(f"offsets has shape {offsets.shape}, expected ({n + 1},)")
            offsets = offsets.astype(np.int64)
            if offsets[0] != 0 or np.any(np.diff(offsets) < 1) or offsets[-1] != len(counts):
                raise ValueError("offsets do not partition the counts")
            if not np.all(np.isfinite(counts)) or np.any(counts < 0) or not np.all(np.isfinite(width)) \
                    or np.any(width < 0):
                raise ValueError("negative or non-finite histogram values")
            hists = {}
            for i, name in enumerate(names):
                hists[name] = TensorHistogram(name=name, amax=float(amax[i]), bin_width=float(width[i]),
                                              counts=counts[offsets[i]:offsets[i + 1]].astype(np.float64),
                                              numel=int(numel[i]))
            meta = header.get("meta", {})
            if not isinstance(meta, dict):
                raise TypeError("'meta' is not an object")
            return cls(histograms=hists, model_fingerprint=str(header["model_fingerprint"]),
                       data_fingerprint=str(header["data_fingerprint"]), num_images=int(header["num_images"]),
                       num_bins=int(header["num_bins"]), meta=meta)
        except (KeyError, TypeError, ValueError, OverflowError, ConfigError) as err:
            raise CacheFormatError("corrupt statistics file", subject=str(path), got=f"{type(err).__name__}: {err}"[:200],
                                   expected=expected) from err


@dataclass(frozen=True)
class TensorRange:
    """The symmetric INT8 range of one tensor: scale = amax / 127."""

    name: str
    amax: float

    def __post_init__(self):
        if not (math.isfinite(self.amax) and self.amax > 0):
            raise ConfigError("invalid range", subject=f"tensor {self.name!r}", got=f"amax={self.amax}",
                              expected="a finite amax > 0")

    @property
    def scale(self) -> float:
        return float(np.float32(self.amax) / np.float32(127.0))


@dataclass(frozen=True)
class RangeCandidate:
    """One range algorithm's amax for a tensor, and ``--method auto``'s error there (None: not measured)."""

    method: str                          # a registered range algorithm (calibrators.algorithms.ALGORITHMS)
    settings: Mapping[str, object]       # its settings, e.g. {"percentile": 99.99}
    amax: float
    error: float | None = None

    @property
    def label(self) -> str:
        """``entropy``, ``mse``, ``minmax``, ``percentile 99.99``: the method and its one distinguishing setting."""
        p = self.settings.get("percentile")
        return self.method if p is None else f"{self.method} {p:g}"


@dataclass(frozen=True)
class MethodChoice:
    """How ``--method auto`` chose one tensor's range: every candidate it compared, and the one it kept.

    ``objective`` is ``"layer output"`` (the normalised output error of the INT8 layers in
    ``consumers``) or ``"tensor"`` (the tensor's own normalised quantization error: it feeds no INT8 layer).
    """

    chosen: int                               # index into candidates
    candidates: tuple[RangeCandidate, ...]
    objective: str
    consumers: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.chosen < len(self.candidates):
            raise ConfigError("invalid method choice", got=f"chosen={self.chosen}",
                              expected=f"an index into the {len(self.candidates)} candidate(s)")

    @property
    def method(self) -> RangeCandidate:
        return self.candidates[self.chosen]


@dataclass(frozen=True, eq=False)
class RangeSet:
    """Ranges for every calibrated tensor, with how they were obtained (``methods``: the per-tensor
    choice of ``--method auto``, empty for a single method)."""

    ranges: Mapping[str, TensorRange]
    method: str
    settings: Mapping[str, object] = field(default_factory=dict)
    model_fingerprint: str = ""
    data_fingerprint: str = ""
    num_images: int = 0
    meta: Mapping[str, object] = field(default_factory=dict)
    methods: Mapping[str, MethodChoice] = field(default_factory=dict)

    def amax(self) -> dict[str, float]:
        return {n: r.amax for n, r in self.ranges.items()}


class Inputs:
    """One batch (or a whole data set) for a model with several inputs: an array per ONNX input name, rows
    first in each, all with the same number of rows. It slices, pads and concatenates by rows as one
    array does, so the batching code is the same for one input and for several."""

    __slots__ = ("arrays",)

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        arrays = {str(k): v for k, v in arrays.items()}
        rows = {k: v.shape[0] if getattr(v, "ndim", 0) else None for k, v in arrays.items()}
        if not arrays or len(set(rows.values())) != 1 or None in rows.values():
            raise ConfigError("model inputs with different numbers of rows", subject=", ".join(arrays) or "inputs",
                              got=", ".join(f"{k}: {n}" for k, n in rows.items()),
                              expected="one row (image, sample) per input for every item")
        self.arrays = arrays

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, rows) -> "Inputs":
        return Inputs({k: v[rows] for k, v in self.arrays.items()})

    def __repr__(self) -> str:
        return "Inputs(" + ", ".join(f"{k}: {v.dtype} {tuple(v.shape)}" for k, v in self.arrays.items()) + ")"

    def resized(self, n: int) -> "Inputs":
        """``n`` rows, repeating the rows in order (what a fixed batch's padding needs)."""
        return Inputs({k: np.resize(v, (n, *v.shape[1:])) for k, v in self.arrays.items()})

    @staticmethod
    def stack(items: list[Mapping[str, np.ndarray]]) -> "Inputs":
        """Items (one array per input name each) -> a batch."""
        return Inputs({k: np.stack([it[k] for it in items]) for k in items[0]})


def concat_rows(parts: list):
    """Concatenate batches by rows: arrays, or :class:`Inputs` input by input."""
    if parts and isinstance(parts[0], Inputs):
        return Inputs({k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].names})
    return np.concatenate(parts)


def resize_rows(x, n: int):
    """``x`` with ``n`` rows, repeating its rows (an array, :class:`Inputs` or a torch tensor, kept on its
    device)."""
    if isinstance(x, Inputs):
        return x.resized(n)
    if isinstance(x, np.ndarray):
        return np.resize(x, (n, *x.shape[1:]))
    return x[[i % len(x) for i in range(n)]]


def feeds(names, x) -> dict:
    """The name -> array feed of a model whose inputs are ``names``: one array feeds the first (only) input;
    :class:`Inputs` feed by name (every name must be there)."""
    if isinstance(x, Inputs):
        missing = [n for n in names if n not in x.arrays]
        if missing:
            raise ConfigError("data for a model input is missing", subject=", ".join(map(repr, missing)),
                              got="arrays for " + ", ".join(map(repr, x.names)),
                              expected="an array for every model input: " + ", ".join(map(repr, names)))
        return {n: x.arrays[n] for n in names}
    if len(names) > 1:
        raise ConfigError("data for a model input is missing", subject=", ".join(map(repr, names[1:])),
                          got=f"one array for input {names[0]!r}",
                          expected="an array for every model input: " + ", ".join(map(repr, names)),
                          hint="feed a model with several inputs from a .npz/.h5 with one array per input name")
    return {names[0]: x}
