"""Reading an evaluation ``results.json`` (``trtquant-results/1``) with every field the reports use checked."""

from __future__ import annotations

from pathlib import Path

from .errors import CacheFormatError
from .fileio import read_json_document

RESULTS_FORMAT = "trtquant-results/1"

_NUM = (int, float)
_OK_ROW = {"config": str, "backend": str, "engine": dict, "latency_ms": dict, "throughput": dict, "drop_pp": dict,
           "agreement": _NUM, "sqnr_db": _NUM, "build_s": _NUM}


def _bad(path, where: str, got, expected: str) -> CacheFormatError:
    return CacheFormatError("malformed results file", subject=f"{path}: {where}", got=repr(got)[:80],
                            expected=expected, hint="re-run evaluate, or re-render from an unedited results.json")


def _need(path, obj: dict, key: str, kind, where: str):
    if key not in obj:
        raise _bad(path, where, "missing", f"a {key!r} field")
    value = obj[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise _bad(path, f"{where}.{key}", value, getattr(kind, "__name__", "a number"))
    return value


def validate_results(doc, path: str | Path = "results.json") -> dict:
    """Raise CacheFormatError unless ``doc`` has everything the reports read."""
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise CacheFormatError("not an evaluation results file", subject=str(path), expected=repr(RESULTS_FORMAT))
    for key, kind in (("model", dict), ("data", dict), ("metric", str), ("results", list)):
        _need(path, doc, key, kind, "document")
    for key, kind in (("name", str), ("fingerprint", str)):
        _need(path, doc["model"], key, kind, "model")
    for key, kind in (("name", str), ("fingerprint", str), ("images", int), ("labelled", bool)):
        _need(path, doc["data"], key, kind, "data")
    if "environment" in doc and not isinstance(doc["environment"], dict):
        raise _bad(path, "environment", doc["environment"], "an object")
    if doc.get("recommendation") is not None:
        rec = doc["recommendation"]
        if not isinstance(rec, dict) or not isinstance(rec.get("reason", ""), str):
            raise _bad(path, "recommendation", rec, "an object with 'config' and 'reason'")
    for i, r in enumerate(doc["results"]):
        where = f"results[{i}]"
        if not isinstance(r, dict):
            raise _bad(path, where, r, "an object")
        _need(path, r, "config", str, where)
        if r.get("status") != "ok":
            continue
        for key, kind in _OK_ROW.items():
            _need(path, r, key, kind, where)
        if doc["data"]["labelled"]:
            _need(path, r, "top1", _NUM, where)
            _need(path, r, "top5", _NUM, where)
        for key in ("p50", "p90", "p99"):
            _need(path, r["latency_ms"], key, _NUM, f"{where}.latency_ms")
        _need(path, r["throughput"], "images_per_s", _NUM, f"{where}.throughput")
        _need(path, r["throughput"], "batch", int, f"{where}.throughput")
        _need(path, r["drop_pp"], "points", _NUM, f"{where}.drop_pp")
        ci = _need(path, r["drop_pp"], "ci95", list, f"{where}.drop_pp")
        if len(ci) != 2 or not all(isinstance(v, _NUM) and not isinstance(v, bool) for v in ci):
            raise _bad(path, f"{where}.drop_pp.ci95", ci, "[low, high]")
        if r.get("engine_bytes") is not None and not isinstance(r["engine_bytes"], _NUM):
            raise _bad(path, f"{where}.engine_bytes", r["engine_bytes"], "a number or null")
        plan = r.get("plan", {})
        if not isinstance(plan, dict) or not isinstance(plan.get("layers", []), list):
            raise _bad(path, f"{where}.plan", plan, "an object with a 'layers' list")
        if not isinstance(r.get("trtexec", []), list):
            raise _bad(path, f"{where}.trtexec", r.get("trtexec"), "a list")
    return doc


def read_results(path: str | Path) -> dict:
    doc = read_json_document(Path(path), fmt=RESULTS_FORMAT, what="evaluation results file", error=CacheFormatError)
    return validate_results(doc, path)
