"""Fuzz every reader: mutated calibration caches, ranges JSON, statistics, results JSON and plans.

A few hundred seeded mutations per run; each reader must either parse the file or raise a
QuantError (exit code 2 in the CLI). Any other exception fails the test with the file that caused it.
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from trtquant import cli
from trtquant.core.cache import TrtCache, read_ranges_json, read_trt_cache
from trtquant.core.errors import QuantError
from trtquant.quant.artifacts.plan import PrecisionPlan
from trtquant.core.records import Evaluation, read_document
from trtquant.core.types import CalibrationStats, TensorHistogram

SEED = 20261202
N = 200         # mutations per seed file and reader: a few hundred files per reader and run


def _cache_text() -> str:
    return TrtCache(8601, "EntropyCalibration2", {"input": 0.0209, "conv out: 1": 0.5, "logits": 0.11}).to_text()


def _ranges_json() -> str:
    return json.dumps({"format": "trtquant-ranges/1", "method": "entropy", "settings": {}, "model_fingerprint": "ab",
                       "data_fingerprint": "cd", "num_images": 4, "meta": {"zero_tensors": []},
                       "tensors": [{"name": "input", "amax": 2.6, "scale": 0.02, "scale_hex": "3ca3d70a"},
                                   {"name": "logits", "amax": 14.0, "scale": 0.11, "scale_hex": "3de147ae"}]},
                      indent=1)


def _plan_json() -> str:
    return json.dumps({"format": "trtquant-plan/1", "name": "p", "default": "fp32", "meta": {},
                       "layers": [{"node": "conv", "precision": "int8", "reason": "x"},
                                  {"node": "fc", "precision": "fp16", "reason": "y", "sensitivity": 0.5}]})


def _results_json() -> str:
    row = {"config": "fp32", "backend": "onnxruntime", "status": "ok", "build_s": 0.1,
           "engine": {"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "simulated": False,
                      "description": "ORT", "integer_kernels": {}},
           "plan": {"name": "fp32", "counts": {"int8": 0}, "default": "fp32", "layers": []},
           "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "batch": 1, "iters": 3},
           "throughput": {"images_per_s": 100.0, "batch": 2}, "engine_bytes": 100, "trtexec": ["x"],
           "top1": 0.5, "top5": 0.9, "agreement": 1.0, "sqnr_db": 99.0,
           "drop_pp": {"points": 0.0, "ci95": [0.0, 0.0], "within_noise": True}}
    return json.dumps({"format": "trtquant-results/1", "model": {"name": "m", "fingerprint": "ab"},
                       "data": {"name": "d", "fingerprint": "cd", "images": 2, "labelled": True},
                       "metric": "top-1", "environment": {},
                       "results": [row, {"config": "x", "backend": "onnxruntime", "status": "failed", "reason": "r"}],
                       "recommendation": {"config": "fp32", "target": "0.5%", "reason": "r"}})


def _stats_bytes(tmp: Path) -> bytes:
    h = TensorHistogram("input", 2.0, 0.25, np.arange(8, dtype=np.float64), 28)
    CalibrationStats({"input": h}, "ab", "cd", 4, 8, meta={"model": "m"}).save(tmp / "seed.npz")
    return (tmp / "seed.npz").read_bytes()


_JUNK = ["\x00", "\n", "\r", "\u2028", "\x85", "\ufeff", ": ", "TRT-", "-1", "NaN", "1e999", "\"", "{", "}", "[", "]",
         ",", "ffffffff", "7f800000", "null", "true", "\"x\"", "[]", "{}", "é", "\udcff", "9" * 30, "\t"]


def mutate_text(text: str, rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:                                   # truncation
        out = text[:rng.randrange(len(text) + 1)]
    elif kind == 1:                                 # insert junk
        i = rng.randrange(len(text) + 1)
        out = text[:i] + rng.choice(_JUNK) + text[i:]
    elif kind == 2:                                 # delete a span
        i = rng.randrange(len(text) + 1)
        out = text[:i] + text[i + rng.randrange(1, 20):]
    elif kind == 3:                                 # replace a JSON value / hex token with junk
        i = rng.randrange(len(text) + 1)
        out = text[:i] + rng.choice(_JUNK) + text[i + rng.randrange(1, 8):]
    elif kind == 4:                                 # duplicate lines / random line order
        lines = text.splitlines(keepends=True)
        rng.shuffle(lines)
        out = "".join(lines + lines[:rng.randrange(len(lines) + 1)])
    elif kind == 5:                                 # a JSON value swapped for another type
        out = text
        for key in ("\"num_images\": 4", "\"amax\": 2.6", "\"layers\": [", "\"tensors\": [", "\"results\": [",
                    "\"images\": 2", "\"labelled\": true", "\"p50\": 1.0", "\"ci95\": [0.0, 0.0]", "\"name\": \"m\""):
            if key in out and rng.random() < 0.5:
                k = key.split(":")[0]
                out = out.replace(key, f"{k}: {rng.choice(_JUNK[8:24])}" + ("[" if key.endswith("[") else ""), 1)
    elif kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    else:
        out = text
    data = out.encode("utf-8", "surrogateescape")
    if kind == 7 and data:                          # byte flips
        b = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        data = bytes(b)
    return data


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(b[:rng.randrange(len(b) + 1)])
    if kind == 1:
        for _ in range(rng.randrange(1, 10)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        i = rng.randrange(len(b))
        return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 50))) + b[i:])
    return bytes(rng.randrange(256) for _ in range(rng.randrange(300)))


def _stats_with_bad_header(tmp: Path, rng: random.Random, i: int) -> bytes:
    """A valid zip whose header JSON / arrays are mutated (reaches the checks past np.load)."""
    import io

    header = json.loads(json.dumps({"format": "trtquant-stats/1", "names": ["input"], "model_fingerprint": "ab",
                                    "data_fingerprint": "cd", "num_images": 4, "num_bins": 8, "meta": {}}))
    key = rng.choice(list(header))
    header[key] = rng.choice([None, -1, "x", [], {}, ["a", "b"], 1e308, True])
    arrays = dict(counts=np.arange(8, dtype=np.float64), offsets=np.array([0, 8]), amax=np.array([2.0]),
                  bin_width=np.array([0.25]), numel=np.array([28]))
    victim = rng.choice(list(arrays) + [None])
    if victim:
        arrays[victim] = rng.choice([np.zeros(0), np.array([np.nan, -1.0]), np.array([[1, 2]]), np.array([0, 99])])
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


READERS = {
    "cache": (read_trt_cache, lambda tmp: _cache_text()),
    "ranges": (read_ranges_json, lambda tmp: _ranges_json()),
    "plan": (PrecisionPlan.load, lambda tmp: _plan_json()),
    "results": (lambda p: read_document(Evaluation, p), lambda tmp: _results_json()),
    "stats": (CalibrationStats.load, _stats_bytes),
}


@pytest.mark.parametrize("name", list(READERS))
def test_reader_rejects_mutations_with_quant_error(name, tmp_path):
    reader, seed_file = READERS[name]
    seed = seed_file(tmp_path)
    reader(_write(tmp_path / "ok", seed))                 # the unmutated file parses
    rng = random.Random(f"{SEED}-{name}")
    outcomes = {"ok": 0, "error": 0}
    for i in range(N):
        if isinstance(seed, bytes):
            data = mutate_bytes(seed, rng) if i % 2 else _stats_with_bad_header(tmp_path, rng, i)
        else:
            data = mutate_text(seed, rng)
        path = _write(tmp_path / f"m{i}", data)
        try:
            reader(path)
            outcomes["ok"] += 1
        except QuantError:
            outcomes["error"] += 1
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"{name} reader raised {type(err).__name__}: {err} on mutation {i}: {data[:300]!r}")
    assert outcomes["error"] > N // 4          # the mutations do reach the checks


def test_cache_show_never_crashes_on_mutated_files(tmp_path, capsys):
    """The same through the CLI (`cache show` detects the format first: caches, ranges JSON, ONNX)."""
    rng = random.Random(SEED)
    seeds = [_cache_text(), _ranges_json()]
    for i in range(N):
        path = _write(tmp_path / f"s{i}.bin", mutate_text(seeds[i % 2], rng))
        rc = cli.main(["cache", "show", str(path)])
        err = capsys.readouterr().err
        assert rc in (0, 2) and "Traceback" not in err, (rc, err, path.read_bytes()[:300])


def _write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))
    return path
