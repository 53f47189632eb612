"""TensorRT fidelity fixes that need no TensorRT: cache zero policy (finding 13), version rules (2, 8)."""

import logging

import pytest

from trtquant.core.cache import ZERO_TENSOR_AMAX, TrtCache, scale_to_hex
from trtquant.quant.artifacts.ranges import load_ranges
from trtquant.core.errors import ConfigError
from trtquant.core.trt_versions import convtranspose_weight_axis, needs_explicit_batch, strongly_typed, trt_major


def test_zero_scale_is_written_as_tensorrt_writes_it():
    assert scale_to_hex(0.0) == "0"                 # TensorRT: "366: 0", not "00000000"
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(1e-45) == "1"               # smallest denormal: no padding either
    cache = TrtCache.parse("TRT-8601-EntropyCalibration2\ninput: 3c00f9f4\n366: 0\n")
    assert cache.to_text() == "TRT-8601-EntropyCalibration2\ninput: 3c00f9f4\n366: 0\n"


def test_zero_tensors_of_a_tensorrt_cache_get_the_one_placeholder(tmp_path):
    path = tmp_path / "trt.cache"
    path.write_text("TRT-8601-EntropyCalibration2\ninput: 3c00f9f4\n366: 0\n")
    rs, fmt, _ = load_ranges(path)
    assert fmt == "cache" and set(rs.ranges) == {"input", "366"}     # the zero tensor is kept ...
    assert rs.ranges["366"].amax == ZERO_TENSOR_AMAX                 # ... with the calibrate() placeholder
    assert TrtCache.parse(path.read_text()).ranges()["366"].amax == ZERO_TENSOR_AMAX


def test_unverified_cache_headers_are_flagged(caplog):
    from trtquant.core.types import TensorRange

    with caplog.at_level(logging.WARNING, logger="trtquant.core.cache"):
        TrtCache.from_ranges({"x": TensorRange("x", 1.0)}, algorithm="MinMaxCalibration", version=8601)
        assert not caplog.records
        TrtCache.from_ranges({"x": TensorRange("x", 1.0)}, algorithm="LegacyCalibration", version=8601)
    assert "LegacyCalibration is unverified" in caplog.text


def test_the_default_cache_version_is_warned_about_once_per_process(caplog, monkeypatch):
    """Without TensorRT the header falls back to the default version, said once, not once per cache written."""
    from trtquant.core.cache import DEFAULT_TRT_VERSION, trt_version_int
    from trtquant.quant import statistics
    from trtquant.quant.settings import CalibrationConfig

    monkeypatch.setattr(statistics, "installed_trt_version", lambda: None)
    monkeypatch.setattr(statistics, "_WARNED_DEFAULT", set())
    with caplog.at_level(logging.WARNING, logger="trtquant.quant.statistics"):
        for method in ("entropy", "minmax", "entropy"):
            assert statistics.cache_header(CalibrationConfig(method=method))[0] == trt_version_int(DEFAULT_TRT_VERSION)
    assert [r.getMessage().startswith("TensorRT is not installed here") for r in caplog.records] == [True]


@pytest.mark.parametrize("version,axis", [("8.6.1", 0), ("8.5.2.2", 0), ("9.3.0", 0), ("10.13.0.35", 1),
                                          ("11.4.0.106", 1), (None, 0)])
def test_convtranspose_weight_axis_by_version(version, axis):
    assert convtranspose_weight_axis(version) == axis


def test_version_rules():
    assert trt_major("10.13.0.35") == 10
    assert strongly_typed("11.4.0", has_flag=False) and strongly_typed("10.13.0", has_flag=True)
    assert not strongly_typed("8.6.1", has_flag=False)
    assert needs_explicit_batch("8.6.1") and not needs_explicit_batch("10.0.1") and not needs_explicit_batch("11.4")
    with pytest.raises(ConfigError, match="invalid TensorRT version"):
        trt_major("x.y")


def _plan(layers, default="fp32"):
    from trtquant.quant.artifacts.plan import LayerPrecision, PrecisionPlan

    return PrecisionPlan(name="t", layers={n: LayerPrecision(n, p, "test") for n, p in layers.items()}, default=default)


def test_weakly_typed_trtexec_line_pins_the_plans_float_layers():
    # finding 3: under weak typing Casts pin nothing and --fp16 frees every layer
    from pathlib import Path

    from trtquant.quant.artifacts.trtexec import trtexec_commands

    plan = _plan({"/conv0/Conv": "int8", "/head/Gemm": "fp32", "/mid/Conv": "fp16"})
    strong, weak = trtexec_commands(Path("m.onnx"), plan, Path("q.onnx"), "input:1x3x224x224")
    assert "--stronglyTyped" in strong and "--layerPrecisions" not in strong and "--noTF32" in strong
    assert weak.startswith("trtexec --onnx=q.onnx --int8 --fp16 --noTF32 --precisionConstraints=obey "
                           "--layerPrecisions=/head/Gemm:fp32,/mid/Conv:fp16 ")
    # no FP16 layer: no --fp16 (it would let the FP32 layers run in FP16)
    _, weak = trtexec_commands(Path("m.onnx"), _plan({"/c/Conv": "int8", "/g/Gemm": "fp32"}), Path("q.onnx"),
                               "input:1x3x224x224")
    assert " --fp16" not in weak and "--precisionConstraints=obey --layerPrecisions=/g/Gemm:fp32" in weak
    # a name with a space is quoted for the shell
    _, weak = trtexec_commands(Path("m.onnx"), _plan({"a b": "fp32", "c": "int8"}), Path("q.onnx"), "x:1x3x8x8")
    assert "'--layerPrecisions=a b:fp32'" in weak
