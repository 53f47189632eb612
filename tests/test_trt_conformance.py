"""Our TensorRT code against the real Python bindings of TensorRT 8.6, 10.13 and 11.4.

Each version runs in its own subprocess (tests/trt_conformance/driver.py): the real
``tensorrt_bindings`` from `.trt/<version>` (installed by `bash setup.sh --dev`), loaded over stub
libraries compiled here with the system C compiler, plus the signature-checking double. Skips, with
the reason, where a wheel or the compiler is missing.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "trt_conformance"
VERSIONS = {"8.6": 8, "10.13": 10, "11.4": 11}
IMPLICIT = ("8.6", "10.13")
DEDICATED_STREAM = 0x5EED


@pytest.fixture(scope="session")
def stub_dirs(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc/gcc) to build the stub TensorRT libraries")
    dirs = {}
    for major in set(VERSIONS.values()):
        d = tmp_path_factory.mktemp(f"trt_stub_{major}")
        for lib in ("nvinfer", "nvonnxparser", "nvinfer_plugin", "nvparsers"):
            so = f"lib{lib}.so.{major}"
            subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{so}", "-o", str(d / so), str(HERE / "stub.c")],
                           check=True, capture_output=True)
        dirs[major] = d
    return dirs


_RESULTS = {}


def results(version, stub_dirs, tmp_path_factory):
    if version not in _RESULTS:
        wheel = ROOT / ".trt" / version
        if not (wheel / "tensorrt_bindings").is_dir():
            pytest.skip(f"TensorRT {version} bindings are not in .trt/{version} (bash setup.sh --dev installs them)")
        out = tmp_path_factory.mktemp("conf") / "r.json"
        env = dict(os.environ, LD_LIBRARY_PATH=str(stub_dirs[VERSIONS[version]]))
        proc = subprocess.run([sys.executable, str(HERE / "driver.py"), str(wheel), str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _RESULTS[version] = json.loads(out.read_text())
    doc = _RESULTS[version]
    if "import_error" in doc:
        pytest.skip(f"TensorRT {version} bindings do not import here: {doc['import_error']}")
    return doc["results"]


@pytest.fixture(params=list(VERSIONS))
def conf(request, stub_dirs, tmp_path_factory):
    return request.param, results(request.param, stub_dirs, tmp_path_factory)


def test_every_call_fits_the_real_signatures(conf):
    version, res = conf
    bad = {k: v["violations"] for k, v in res.items() if v["violations"]}
    assert not bad


def test_calibrators_subclass_the_real_classes(conf):
    version, res = conf
    r = res["calibrator_classes"]
    if version not in IMPLICIT:
        assert "removed in TensorRT 11" in r["error"] and "explicit quantization" in r["error"]
        assert "removed in TensorRT 11" in res["calibrate_onnx"]["error"]
        return
    for method, algo in (("entropy", "ENTROPY_CALIBRATION_2"), ("minmax", "MINMAX_CALIBRATION")):
        assert r[method]["is_real_subclass"] and r[method]["algorithm"] == algo
        assert r[method]["ptrs"] == ["int"] and r[method]["next"] is None and r[method]["cache"] is None


def test_tensorrt_calibrates_instead_of_returning_the_old_cache(conf):
    version, res = conf
    if version not in IMPLICIT:
        pytest.skip("no implicit INT8 on TensorRT 11 (refusal tested above)")
    r = res["calibrate_onnx"]
    assert "error" not in r, r.get("trace")
    assert r["file_is_new"] and r["build_errors"] == []          # finding 1
    assert r["header"] == {"8.6": "TRT-8601", "10.13": "TRT-101300"}[version] + "-EntropyCalibration2"
    assert r["profile"] == [[2, 3, 8, 8]] * 3
    assert res["serve_cache"]["same"]


def test_explicit_builds_per_version(conf):
    version, res = conf
    for name in ("explicit_int8", "explicit_mixed"):
        r = res[name]
        assert "error" not in r, r.get("trace")
        assert r["build_errors"] == [] and r["out_shape"] == [3, 5]
        assert set(r["streams"]) == {DEDICATED_STREAM}                       # finding 11
        assert r["flags_cleared"] == ["TF32"]                                # finding 12
        assert r["profiles"] == {"input": [[1, 3, 8, 8], [16, 3, 8, 8], [64, 3, 8, 8]]}
        if version == "8.6":                                                 # weakly typed
            assert r["network_flags"] == ["EXPLICIT_BATCH"]
        else:                                                                # finding 8
            assert r["network_flags"] == ["STRONGLY_TYPED"] and r["flags_set"] == [] and r["precisions"] == {}
    if version == "8.6":                                                     # finding 3
        assert res["explicit_int8"]["flags_set"] == ["INT8"]
        m = res["explicit_mixed"]
        assert m["flags_set"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
        assert m["precisions"] == {"relu0": "HALF", "fc": "FLOAT"}


def test_implicit_sets_ranges_and_pins_only_ranged_int8_layers(conf):
    version, res = conf
    r = res["implicit_int8"]
    if version not in IMPLICIT:
        assert "removed in TensorRT 11" in r["error"]
        return
    assert "error" not in r, r.get("trace")
    assert r["build_errors"] == []                                           # finding 5
    assert set(r["dynamic_ranges"]) == {"input", "c0", "r0", "g", "f", "logits"}
    assert r["dynamic_ranges"]["input"] == [-2.5, 2.5]
    assert r["precisions"] == {"conv0": "INT8"}          # fc's MatrixMultiply output is parser-made
    assert r["network_flags"] == (["EXPLICIT_BATCH"] if version == "8.6" else [])


def test_profiles_follow_every_input(conf):
    version, res = conf
    r = res["static_batch"]                                                  # finding 6
    assert "error" not in r, r.get("trace")
    assert r["profiles"] == {"input": [[4, 3, 8, 8]] * 3} and r["out_shape"] == [4, 5]
    assert "refused the input shape" in r["other_batch"] and "(5, 3, 8, 8)" in r["other_batch"]
    d = res["dynamic_hw"]                                                    # issue 12: dynamic H/W
    assert d["profiles"] == {"input": [[1, 3, 8, 8], [16, 3, 8, 8], [64, 3, 8, 8]]}, d
    assert "dynamic dimension other than the batch" in d["no_example"]
    t = res["two_inputs"]
    assert t["build_errors"] == [] and t["profiles"]["b"] == [[1, 3, 8, 8]] * 3
    # one array for a two-input engine is refused naming the input it lacks (Inputs feed both by name)
    assert "data for a model input is missing" in t["run_error"] and "'b'" in t["run_error"]


def test_layer_times_come_from_tensorrts_profiler(conf):
    """Issue 13.5: the sweep's measured latency model reads TensorRT's per-layer times (``IProfiler``)."""
    version, res = conf
    r = res["layer_times"]
    assert "error" not in r, r.get("trace")
    assert r["violations"] == [] and r["profiler"] == "IProfiler"
    assert r["runs"] == 5                                   # one warm-up, then 4 profiled runs
    times = r["times"]
    assert times and all(ms == pytest.approx(0.125 * (i + 1)) for i, ms in enumerate(times.values()))
    assert r["layers"] == ["conv0", "fc"]
    own = {n: sum(ms for name, ms in times.items() if n in name.split(" + ")) for n in r["layers"]}
    rest = sum(times.values()) - sum(own.values())
    # all INT8: every layer's INT8 time; fc kept FP16: fc's layers at the FP16 engine's (here doubled) times
    assert r["int8_s"] == pytest.approx(sum(times.values()) * 1e-3)
    assert r["fc_fp16_s"] == pytest.approx((rest + own["conv0"] + 2 * own["fc"]) * 1e-3) and own["fc"] > 0

    m = res["sweep_latency_model"]                          # the sweep's use of it: two engines, all INT8 and all FP16
    assert "error" not in m, m.get("trace")
    assert m["violations"] == [] and m["kind"] == "tensorrt-layers" and m["gpu"] == "TensorRT double"
    assert set(m["costs"]) == {"conv0", "fc"} and m["int8_s"] > 0 and m["fp16_s"] > 0
