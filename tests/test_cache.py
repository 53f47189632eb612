"""TensorRT calibration cache and ranges JSON: exact format, bit-exact round trips, malformed input."""

import struct

import numpy as np
import pytest

from trtquant.core.cache import (TrtCache, hex_to_scale, read_ranges_json, read_trt_cache, scale_to_hex,
                                  trt_version_int, write_ranges_json, write_trt_cache)
from trtquant.core.errors import CacheFormatError, ConfigError
from trtquant.core.types import RangeSet, TensorRange


def test_real_cache_line_reads_as_published_scale():
    cache = TrtCache.parse("TRT-8600-EntropyCalibration2\ninput: 3d23ac36\n")
    assert cache.version == 8600 and cache.algorithm == "EntropyCalibration2"
    assert cache.scales["input"] == pytest.approx(0.0399592, abs=5e-8)
    assert cache.amax()["input"] == np.float32(cache.scales["input"]) * np.float32(127)
    assert cache.amax()["input"] == pytest.approx(0.0399592 * 127, rel=2e-6)


def test_hex_is_big_endian_float32_bits():
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(0.0399592) == struct.pack(">f", np.float32(0.0399592)).hex()
    assert hex_to_scale("3f800000") == 1.0
    assert hex_to_scale("0") == 0.0                   # short forms are read as zero-padded


@pytest.mark.parametrize("version,expected", [("8.6.1", 8601), ("8.5.3.1", 8503), ("7.2.3", 7203),
                                              ("10.3.0", 100300), ("10.13.2", 101302)])
def test_trt_version_int(version, expected):
    assert trt_version_int(version) == expected


def test_trt_version_invalid():
    with pytest.raises(ConfigError, match="--trt-version"):
        trt_version_int("ten")


def test_round_trip_bit_exact_with_awkward_names(tmp_path):
    text = ("TRT-8601-EntropyCalibration2\n"
            "input: 3caa4a58\n"
            "/features/features.0/features.0.0/Conv_output_0: 3ca54409\n"
            "(Unnamed Layer* 12) [Convolution]_output: 3d237c3a\n"
            "name with: colon: 3c010a14\n"
            "tail space : 3f800000\n")
    cache = TrtCache.parse(text)
    assert list(cache.scales) == ["input", "/features/features.0/features.0.0/Conv_output_0",
                                  "(Unnamed Layer* 12) [Convolution]_output", "name with: colon", "tail space "]
    assert cache.to_text() == text
    p = tmp_path / "c.bin"
    write_trt_cache(p, cache)
    assert p.read_text() == text
    again = read_trt_cache(p)
    for n in cache.scales:
        assert np.float32(again.scales[n]).tobytes() == np.float32(cache.scales[n]).tobytes()


def test_from_ranges_writes_scale_amax_over_127():
    rs = {"a": TensorRange("a", 127.0), "b": TensorRange("b", 5.075)}
    cache = TrtCache.from_ranges(rs, algorithm="MinMaxCalibration", version=100300)
    text = cache.to_text()
    assert text.splitlines()[0] == "TRT-100300-MinMaxCalibration"
    assert "a: 3f800000" in text
    assert hex_to_scale(text.splitlines()[2].split(": ")[1]) == np.float32(np.float32(5.075) / np.float32(127))


@pytest.mark.parametrize("text,match", [
    ("", "empty calibration cache"),
    ("hello\ninput: 3f800000\n", "bad calibration cache header"),
    ("TRT-8601-EntropyCalibration2\ninput 3f800000\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\ninput: xyz\n", "bad scale"),
    ("TRT-8601-EntropyCalibration2\ninput: 3f8000001\n", "bad scale"),
    ("TRT-8601-EntropyCalibration2\na: 3f800000\na: 3f800000\n", "duplicate tensor"),
    ("TRT-8601-EntropyCalibration2\na: 7fc00000\n", "invalid scale"),     # NaN bits
    ("TRT-8601-EntropyCalibration2\na: bf800000\n", "invalid scale"),     # negative scale
])
def test_malformed_cache(text, match):
    with pytest.raises(CacheFormatError, match=match):
        TrtCache.parse(text)


def test_binary_and_missing_cache_files(tmp_path):
    p = tmp_path / "engine.plan"
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(CacheFormatError, match="not text"):
        read_trt_cache(p)
    with pytest.raises(CacheFormatError, match="not found"):
        read_trt_cache(tmp_path / "nope.bin")


def test_ranges_json_round_trip_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    rs = RangeSet(ranges={f"t{i}: x": TensorRange(f"t{i}: x", float(a)) for i, a in enumerate(rng.uniform(0.1, 50, 20))},
                  method="entropy", settings={"num_bits": 8}, model_fingerprint="m" * 64, data_fingerprint="d" * 64,
                  num_images=20)
    p = tmp_path / "r.json"
    write_ranges_json(p, rs)
    back = read_ranges_json(p)
    assert back.amax() == rs.amax()          # exact float64 equality
    assert back.method == "entropy" and back.num_images == 20 and back.model_fingerprint == "m" * 64


def test_ranges_json_errors(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("{not json")
    with pytest.raises(CacheFormatError, match="not valid JSON"):
        read_ranges_json(p)
    p.write_text('{"format": "something-else"}')
    with pytest.raises(CacheFormatError, match="not a ranges file"):
        read_ranges_json(p)
    p.write_text('{"format": "trtquant-ranges/1", "tensors": [{"name": "a", "amax": -1}]}')
    with pytest.raises(CacheFormatError, match="bad tensor entry"):
        read_ranges_json(p)
