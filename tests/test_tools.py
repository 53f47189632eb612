"""`cli.py cache show|diff|convert` and `cli.py build` end to end, with their error paths."""

import json

import pytest

from trtquant import cli
from trtquant.core.cache import TrtCache, read_trt_cache, write_trt_cache
from trtquant.quant.tools import diff
from trtquant.quant.artifacts.ranges import load_ranges
from trtquant.quant.settings import CalibrationConfig
from trtquant.quant.calibrate import calibrate


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    calibrate(CalibrationConfig(device="cpu"), cache_path=d / "calib.bin", progress=False)
    return d


def run(args, capsys):
    rc = cli.main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def test_show_lists_every_tensor_with_scale_and_amax(calib, capsys):
    rc, out, _ = run(["cache", "show", calib / "calib.bin"], capsys)
    cache = read_trt_cache(calib / "calib.bin")
    assert rc == 0 and "TRT-8601-EntropyCalibration2" in out and "101 tensors" in out
    line = next(l for l in out.splitlines() if l.startswith("input "))
    scale, amax = map(float, line.split()[1:3])
    assert scale == pytest.approx(cache.scales["input"], rel=1e-5) and amax == pytest.approx(scale * 127, rel=1e-5)


def test_convert_round_trips_and_rewrites_header(calib, tmp_path, capsys):
    src = calib / "calib.bin"
    assert run(["cache", "convert", src, "--out", tmp_path / "r.json"], capsys)[0] == 0
    assert run(["cache", "convert", tmp_path / "r.json", "--out", tmp_path / "back.bin"], capsys)[0] == 0
    assert (tmp_path / "back.bin").read_text() == src.read_text()          # cache -> JSON -> cache is bit-exact
    assert run(["cache", "convert", src, "--out", tmp_path / "v10.bin", "--trt-version", "10.3.0",
                "--algorithm", "MinMaxCalibration"], capsys)[0] == 0
    v10 = read_trt_cache(tmp_path / "v10.bin")
    assert v10.header() == "TRT-100300-MinMaxCalibration" and v10.scales == read_trt_cache(src).scales
    assert run(["cache", "convert", src, "--out", tmp_path / "q.onnx"], capsys)[0] == 0
    d = diff(src, tmp_path / "q.onnx")
    assert not d.changed and not d.added and d.same == 54   # the Q/DQ model carries the same scales (52 conv +
    # Gemm inputs + the pooling input = 54 tensors; the residual skips are also the next block's conv inputs)


def test_diff_reports_changed_missing_added(calib, tmp_path, capsys):
    cache = read_trt_cache(calib / "calib.bin")
    scales = dict(cache.scales)
    scales["input"] *= 2
    del scales["logits"]
    scales["extra tensor"] = 0.5
    write_trt_cache(tmp_path / "other.bin", TrtCache(cache.version, cache.algorithm, scales))
    rc, out, _ = run(["cache", "diff", calib / "calib.bin", tmp_path / "other.bin"], capsys)
    assert rc == 1
    assert "99 same, 1 changed, 1 missing in b, 1 added in b" in out
    assert "changed  input" in out and "+100.00%" in out and "missing  logits" in out and "added    extra tensor" in out
    rc, out, _ = run(["cache", "diff", calib / "calib.bin", calib / "calib.bin"], capsys)
    assert rc == 0 and "101 same, 0 changed" in out


def test_cache_tool_errors(tmp_path, capsys):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    rc, _, err = run(["cache", "show", p], capsys)
    assert rc == 2 and "unrecognised ranges file" in err
    rc, _, err = run(["cache", "diff", p], capsys)
    assert rc == 2 and "needs two files" in err


def test_build_int8_onnxruntime_writes_artifacts(calib, tmp_path, capsys):
    out = tmp_path / "engine"
    rc, text, err = run(["build", "--precision", "int8", "--backend", "onnxruntime",
                         "--ranges", calib / "calib.bin.ranges.json", "--out", out], capsys)
    assert rc == 0, err
    assert "QLinearConv" in text and "trtexec --onnx=" in text and "--stronglyTyped" in text
    doc = json.loads((out / "engine.json").read_text())
    # 42 convs feed a quantizer (QLinearConv); 10 feed a residual Add and compute in float, as shipped
    assert doc["engine"]["integer_kernels"]["QLinearConv"] == 42 and not doc["engine"]["simulated"]
    assert doc["smoke"]["top1"] >= 0.75 and doc["plan"]["counts"]["int8"] == 53
    ranges, fmt, _ = load_ranges(out / "model_qdq.onnx")
    assert fmt == "onnx" and len(ranges.ranges) == 54


def test_build_errors(calib, tmp_path, capsys):
    rc, _, err = run(["build", "--precision", "int8", "--backend", "onnxruntime", "--out", tmp_path / "e"], capsys)
    assert rc == 2 and "INT8 needs ranges" in err
    with pytest.raises(SystemExit) as exc:             # argparse choices: the flag is named, exit 2
        run(["build", "--precision", "int8", "--backend", "coreml", "--ranges", calib / "calib.bin",
             "--out", tmp_path / "e"], capsys)
    assert exc.value.code == 2 and "--backend: invalid choice: 'coreml'" in capsys.readouterr().err
    rc, _, err = run(["build", "--precision", "int4", "--backend", "onnxruntime", "--out", tmp_path / "e"], capsys)
    assert rc == 2 and "unknown precision | --precision int4" in err
    rc, _, err = run(["build", "--precision", "fp16", "--backend", "onnxruntime", "--out", tmp_path / "e"], capsys)
    assert rc == 2 and "no FP16 convolution kernels" in err
    # ranges of another model: EfficientNet-Lite0's ranges on MobileNetV2
    other = tmp_path / "lite.bin"
    calibrate(CalibrationConfig(model="efficientnet_lite0", device="cpu"), cache_path=other, progress=False)
    rc, _, err = run(["build", "--precision", "int8", "--backend", "onnxruntime", "--ranges",
                      str(other) + ".ranges.json", "--out", tmp_path / "e2"], capsys)
    assert rc == 2 and "ranges are from another model" in err
    rc, _, err = run(["build", "--precision", "int8", "--backend", "onnxruntime", "--ranges", other,
                      "--out", tmp_path / "e3"], capsys)       # a bare cache has no fingerprint: names decide
    assert rc == 2 and "ranges do not match the model's tensor names" in err
    assert not any((tmp_path / d).exists() for d in ("e", "e2", "e3"))      # nothing half-written
