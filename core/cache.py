"""TensorRT calibration cache and ranges JSON: exact reading and writing.

Cache format (TensorRT <= 10, implicit INT8)::

    TRT-<version>-<Algorithm>
    <tensor name>: <8 lowercase hex digits>

where the hex digits are the big-endian IEEE-754 bits of the float32 scale ``amax / 127``
(``input: 3d23ac36`` is scale 0.0399592). Tensor names are ONNX value names and may contain
spaces and ``": "``, so a line is split at its *last* ``": "``. ``<version>`` is TensorRT's
``NV_TENSORRT_VERSION`` integer: ``major*1000 + minor*100 + patch`` before TensorRT 10 (8.6.1 ->
8601) and ``major*10000 + minor*100 + patch`` from 10 on (10.3.0 -> 100300). TensorRT ignores a
cache whose header does not match its own version and calibrator algorithm, so the header must be
written for the TensorRT that will read it.

The ranges JSON is the lossless twin: float64 amax per tensor, method, settings and fingerprints;
with ``--method auto`` each tensor also records the method chosen for it and every candidate compared.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import CacheFormatError, ConfigError
from .fileio import atomic_write_text, json_text, read_json_document
from .types import MethodChoice, RangeCandidate, RangeSet, TensorRange

log = logging.getLogger(__name__)

TRT_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
# headers seen in real TensorRT caches; no public cache uses the other two (written, but unverified)
VERIFIED_TRT_ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration")
# the one zero-tensor policy: a tensor that was zero on every calibration image (amax 0, or scale 0
# in a TensorRT cache, which writes such tensors as ``name: 0``) gets this placeholder amax everywhere
# (any scale represents zero exactly; TensorRT and Q/DQ need a positive one)
ZERO_TENSOR_AMAX = 1.0
DEFAULT_TRT_VERSION = "8.6.1"
MIN_TRT_MAJOR, MAX_TRT_MAJOR = 5, 11     # calibration caches exist from TensorRT 5
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character ``str.splitlines()`` (the reader) splits on: none may appear in a tensor name."""
RANGES_FORMAT = "trtquant-ranges/1"
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


def trt_version_int(version: str) -> int:
    """'8.6.1' -> 8601, '10.3.0' -> 100300 (TensorRT's NV_TENSORRT_VERSION)."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", str(version).strip())
    if not m:
        raise ConfigError("invalid TensorRT version", subject="--trt-version", got=repr(version),
                          expected="MAJOR.MINOR.PATCH, e.g. 8.6.1 or 10.3.0")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    # NV_TENSORRT_VERSION packs minor and patch into two digits each (one for minor before 10): a version
    # outside these ranges is a typo (8.61 for 8.6.1) and would give a header no TensorRT writes
    if not (MIN_TRT_MAJOR <= major <= MAX_TRT_MAJOR and minor <= (9 if major < 10 else 99) and patch <= 99):
        raise ConfigError("no such TensorRT version", subject="--trt-version", got=repr(version),
                          expected=f"MAJOR.MINOR.PATCH with {MIN_TRT_MAJOR} <= MAJOR <= {MAX_TRT_MAJOR}, "
                                   "MINOR <= 9 before 10 (<= 99 from 10), PATCH <= 99, e.g. 8.6.1 or 10.3.0")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """The float32 bits in lowercase hex without leading zeros, as TensorRT writes them (0.0 -> ``0``)."""
    return format(struct.unpack(">I", struct.pack(">f", np.float32(scale)))[0], "x")


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0])


@dataclass(frozen=True, eq=False)
class TrtCache:
    """A parsed TensorRT calibration cache. ``scales`` keeps file order and the exact float32 values."""

    version: int
    algorithm: str
    scales: Mapping[str, float]

    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def amax(self) -> dict[str, float]:
        return {n: float(np.float32(s) * np.float32(127.0)) for n, s in self.scales.items()}

    def ranges(self) -> dict[str, TensorRange]:
        """The cache's tensors as ranges; zero scales get ``ZERO_TENSOR_AMAX`` (the one zero-tensor policy)."""
        return {n: TensorRange(n, a if a > 0 else ZERO_TENSOR_AMAX) for n, a in self.amax().items()}

    def to_text(self) -> str:
        lines = [self.header()]
        for name, scale in self.scales.items():
            bad = sorted({c for c in name if c in LINE_BREAKS})
            if bad or not name:
                raise CacheFormatError("tensor name cannot be written to a calibration cache", subject=f"tensor {name!r}",
                                       got=("line-break character(s) " + ", ".join(repr(c) for c in bad)) if bad
                                       else "an empty name",
                                       expected="a name without line breaks (the cache is one tensor per line)",
                                       hint="rename the tensor in the ONNX model, or use the ranges JSON / Q/DQ ONNX")
            lines.append(f"{name}: {scale_to_hex(scale)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_ranges(cls, ranges: RangeSet | Mapping[str, TensorRange], *, algorithm: str, version: int) -> "TrtCache":
        if algorithm not in TRT_ALGORITHMS:
            raise ConfigError("unknown TensorRT calibration algorithm", subject="cache header", got=repr(algorithm),
                              expected="one of " + ", ".join(TRT_ALGORITHMS))
        if algorithm not in VERIFIED_TRT_ALGORITHMS:
            log.warning("cache header algorithm %s is unverified: no public TensorRT cache uses it", algorithm)
        rs = ranges.ranges if isinstance(ranges, RangeSet) else ranges
        return cls(version=version, algorithm=algorithm, scales={n: r.scale for n, r in rs.items()})

    @classmethod
    def parse(cls, text: str, *, source: str = "cache") -> "TrtCache":
        if text.startswith("\ufeff"):
            text = text[1:]                  # a UTF-8 byte-order mark from an editor: not part of the header
        lines = text.splitlines()
        if not lines or not text.strip():
            raise CacheFormatError("empty calibration cache", subject=source,
                                   expected="a first line like TRT-8601-EntropyCalibration2")
        m = _HEADER.match(lines[0].strip())
        if not m:
            raise CacheFormatError("bad calibration cache header", subject=f"{source} line 1", got=repr(lines[0][:80]),
                                   expected="TRT-<version>-<Algorithm>, e.g. TRT-8601-EntropyCalibration2",
                                   hint="is this a TensorRT calibration cache? (binary or JSON files are not)")
        scales: dict[str, float] = {}
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            name, sep, value = line.rpartition(": ")
            if not sep or not name:
                raise CacheFormatError("bad calibration cache line", subject=f"{source} line {lineno}",
                                       got=repr(line[:80]), expected="'<tensor name>: <hex float32 bits>'")
            value = value.strip()
            if not _HEX.match(value):
                raise CacheFormatError("bad scale in calibration cache", subject=f"{source} line {lineno} ({name!r})",
                                       got=repr(value), expected="up to 8 hex digits (float32 bits)")
            if name in scales:
                raise CacheFormatError("duplicate tensor in calibration cache", subject=f"{source} line {lineno}",
                                       got=repr(name))
            scale = hex_to_scale(value)
            if not np.isfinite(scale) or scale < 0:
                raise CacheFormatError("invalid scale in calibration cache", subject=f"{source} line {lineno} ({name!r})",
                                       got=f"{scale!r} ({value})", expected="a finite scale >= 0")
            scales[name] = scale
        return cls(version=int(m.group(1)), algorithm=m.group(2), scales=scales)


def read_trt_cache(path: str | Path) -> TrtCache:
    path = Path(path)
    if not path.is_file():
        raise CacheFormatError("calibration cache not found", subject=str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CacheFormatError("calibration cache is not text", subject=str(path),
                               hint="TensorRT calibration caches are text files starting with TRT-") from err
    return TrtCache.parse(text, source=str(path))


def write_trt_cache(path: str | Path, cache: TrtCache) -> None:
    atomic_write_text(Path(path), cache.to_text())


def looks_like_trt_cache(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return _HEADER.match(f.readline(200).decode("utf-8", "replace").lstrip("\ufeff").strip()) is not None
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# ranges JSON
# ---------------------------------------------------------------------------------------------

def ranges_to_json(rs: RangeSet) -> str:
    doc = {
        "format": RANGES_FORMAT,
        "method": rs.method,
        "settings": dict(rs.settings),
        "model_fingerprint": rs.model_fingerprint,
        "data_fingerprint": rs.data_fingerprint,
        "num_images": rs.num_images,
        "meta": dict(rs.meta),
        "tensors": [_tensor_entry(r, rs.methods.get(r.name)) for r in rs.ranges.values()],
    }
    return json_text(doc)


def _tensor_entry(r: TensorRange, choice: MethodChoice | None) -> dict:
    """One tensor of the ranges JSON; ``--method auto`` adds the chosen method's label (for reading) and
    the ``choice`` it was made from (every candidate's amax and error: what the reader restores)."""
    entry = {"name": r.name, "amax": r.amax, "scale": r.scale, "scale_hex": scale_to_hex(r.scale)}
    if choice is not None:
        entry["method"] = choice.method.label
        entry["choice"] = {"objective": choice.objective, "consumers": list(choice.consumers),
                           "chosen": choice.chosen,
                           "candidates": [{"method": c.method, "settings": dict(c.settings), "amax": c.amax,
                                           "error": c.error} for c in choice.candidates]}
    return entry


def _read_choice(name: str, doc: object) -> MethodChoice:
    """A tensor's ``choice`` object (``--method auto``); raises TypeError/ValueError naming what is wrong."""
    def number(v, what, optional=False):
        if optional and v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"tensor {name!r}: choice {what} is not a number")
        return float(v)

    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list) or not doc["candidates"]:
        raise TypeError(f"tensor {name!r}: 'choice' has no list of 'candidates'")
    cands = []
    for c in doc["candidates"]:
        if not isinstance(c, dict) or not isinstance(c.get("method"), str) or not isinstance(c.get("settings", {}), dict):
            raise TypeError(f"tensor {name!r}: choice candidate {str(c)[:60]} has no string 'method'")
        cands.append(RangeCandidate(c["method"], dict(c.get("settings", {})), number(c.get("amax"), "amax"),
                                    number(c.get("error"), "error", optional=True)))
    chosen, consumers = doc.get("chosen"), doc.get("consumers", [])
    if isinstance(chosen, bool) or not isinstance(chosen, int):
        raise TypeError(f"tensor {name!r}: choice 'chosen' is not an integer")
    if not isinstance(consumers, list) or not all(isinstance(c, str) for c in consumers):
        raise TypeError(f"tensor {name!r}: choice 'consumers' is not a list of names")
    if not isinstance(doc.get("objective"), str):
        raise TypeError(f"tensor {name!r}: choice 'objective' is not a string")
    return MethodChoice(chosen, tuple(cands), doc["objective"], tuple(consumers))


def write_ranges_json(path: str | Path, rs: RangeSet) -> None:
    atomic_write_text(Path(path), ranges_to_json(rs))


def read_ranges_json(path: str | Path) -> RangeSet:
    path = Path(path)
    doc = read_json_document(path, fmt=RANGES_FORMAT, what="ranges file", error=CacheFormatError)
    ranges, methods = {}, {}
    try:
        tensors = doc["tensors"]
        if not isinstance(tensors, list):
            raise TypeError(f"'tensors' is a {type(tensors).__name__}, expected a list")
        for t in tensors:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise TypeError(f"entry {str(t)[:60]} has no string 'name'")
            if isinstance(t.get("amax"), bool) or not isinstance(t.get("amax"), (int, float)):
                raise TypeError(f"tensor {t['name']!r}: 'amax' is not a number")
            if t["name"] in ranges:
                raise ValueError(f"tensor {t['name']!r} listed twice")
            ranges[t["name"]] = TensorRange(t["name"], float(t["amax"]))
            if "choice" in t:        # --method auto (files without it, all older ones, read as before)
                methods[t["name"]] = _read_choice(t["name"], t["choice"])
    except (KeyError, TypeError, ValueError, OverflowError, ConfigError) as err:
        raise CacheFormatError("bad tensor entry in ranges file", subject=str(path), got=str(err)[:200]) from err
    fields = {"method": str, "settings": dict, "model_fingerprint": str, "data_fingerprint": str, "meta": dict}
    for key, kind in fields.items():
        if key in doc and not isinstance(doc[key], kind):
            raise CacheFormatError("bad field in ranges file", subject=f"{path}: {key!r}",
                                   got=type(doc[key]).__name__, expected=kind.__name__)
    num_images = doc.get("num_images", 0)
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise CacheFormatError("bad field in ranges file", subject=f"{path}: 'num_images'", got=repr(num_images)[:40],
                               expected="an integer >= 0")
    return RangeSet(ranges=ranges, method=doc.get("method", ""), settings=doc.get("settings", {}),
                    model_fingerprint=doc.get("model_fingerprint", ""), data_fingerprint=doc.get("data_fingerprint", ""),
                    num_images=num_images, meta=doc.get("meta", {}), methods=methods)


def looks_like_ranges_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        return RANGES_FORMAT in head
    except OSError:
        return False
