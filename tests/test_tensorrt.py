"""TensorRT calibrator adapters.

With TensorRT installed (<= 10) the real-API tests run; here they skip with the reason. The adapter's
own logic (batch feeding, cache serving/parsing, exception keeping) is also exercised against a
minimal stand-in for the two TensorRT base classes, so it is tested on every machine.
"""

import sys
import types

import numpy as np
import pytest

from trtquant.calibrators import tensorrt as trt_adapter
from trtquant.core.cache import TrtCache, read_trt_cache
from trtquant.core.errors import BackendUnavailable, CalibrationError, ConfigError

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installed (no wheels on this machine); "
                                                     "these tests run where `import tensorrt` works")


def _stand_in(version="10.3.0", implicit=True):
    m = types.ModuleType("tensorrt")
    m.__version__ = version

    class Base:
        def __init__(self):
            pass

    if implicit:
        m.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (Base,), {})
        m.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (Base,), {})
        m.CalibrationAlgoType = types.SimpleNamespace(ENTROPY_CALIBRATION_2="E2", MINMAX_CALIBRATION="MM")
    return m


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in())


def test_without_tensorrt_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import fails, as on this machine
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed.*needs no TensorRT"):
        trt_adapter.import_tensorrt()


def test_tensorrt_11_points_to_explicit_quantization(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in("11.0.0", implicit=False))
    with pytest.raises(BackendUnavailable, match="removed in TensorRT 11.*Q/DQ ONNX"):
        trt_adapter.import_tensorrt()


def test_calibrator_feeds_full_batches_and_drops_the_tail(fake_trt):
    batches = [np.full((4, 3, 2, 2), i, np.float32) for i in range(3)] + [np.zeros((1, 3, 2, 2), np.float32)]
    cal = trt_adapter.make_calibrator("entropy", iter(batches), batch_size=4, input_name="input", device="cpu")
    assert cal.get_algorithm() == "E2" and cal.get_batch_size() == 4
    ptrs = []
    while True:
        p = cal.get_batch(["input"])
        if p is None:
            break
        assert float(cal._current["input"][0, 0, 0, 0]) == len(ptrs)   # the buffer behind the pointer is that batch
        ptrs.append(p[0])
    assert len(ptrs) == 3 and cal.dropped == 1
    cal.raise_if_failed()


def test_calibrator_serves_our_cache_and_parses_tensorrts(fake_trt, tmp_path):
    ours = TrtCache.parse("TRT-100300-EntropyCalibration2\ninput: 3d23ac36\nx y: z: 3f800000\n")
    cal = trt_adapter.make_calibrator("entropy", iter([]), batch_size=1, input_name="input", serve_cache=ours,
                                      cache_path=tmp_path / "out.bin")
    assert bytes(cal.read_calibration_cache()) == ours.to_text().encode()
    cal.write_calibration_cache(memoryview(ours.to_text().encode()))
    cal.raise_if_failed()
    assert read_trt_cache(tmp_path / "out.bin").to_text() == ours.to_text()


def test_file_at_the_output_cache_path_is_never_served_back(fake_trt, tmp_path):
    # finding 1: TensorRT skips calibration when read_calibration_cache returns a matching cache,
    # so a previous run's file at the output --cache path must not be handed to it
    out = tmp_path / "calib.bin"
    out.write_text("TRT-100300-EntropyCalibration2\ninput: 3f800000\n")
    cal = trt_adapter.make_calibrator("entropy", iter([]), batch_size=1, input_name="input", cache_path=out)
    assert cal.read_calibration_cache() is None
    cal.raise_if_failed()
    new = "TRT-100300-EntropyCalibration2\ninput: 3d23ac36\n"
    cal.write_calibration_cache(memoryview(new.encode()))
    cal.raise_if_failed()
    assert out.read_text() == new and cal.written.scales["input"] == pytest.approx(0.0399592, rel=1e-5)


def test_calibrator_feeds_every_input_in_tensorrt_s_order(fake_trt):
    # finding 7: TensorRT copies len(names) pointers from the list get_batch returns, in its order of names
    from trtquant.core.types import Inputs

    batch = Inputs({"input": np.full((1, 3, 2, 2), 1.0, np.float32), "mask": np.full((1, 1, 2, 2), 2.0, np.float32)})
    cal = trt_adapter.make_calibrator("entropy", iter([batch]), batch_size=1, input_name=("input", "mask"),
                                      device="cpu")
    ptrs = cal.get_batch(["mask", "input"])
    assert ptrs == [cal._current["mask"].data_ptr(), cal._current["input"].data_ptr()]
    assert float(cal._current["mask"].sum()) == 8.0 and float(cal._current["input"].sum()) == 12.0
    cal.raise_if_failed()
    one = trt_adapter.make_calibrator("entropy", iter([np.zeros((1, 3, 2, 2), np.float32)]), batch_size=1,
                                      input_name="input", device="cpu")
    assert one.get_batch(["input", "mask"]) is None
    with pytest.raises(CalibrationError, match="other inputs than the model's.*got 'input', 'mask'.*expected 'input'"):
        one.raise_if_failed()


@pytest.mark.parametrize("header,message", [
    ("TRT-100300-MinMaxCalibration", "algorithm does not match the calibrator.*expected EntropyCalibration2"),
    ("TRT-8601-EntropyCalibration2", "written for another TensorRT.*got 8601.*expected 100300"),
])
def test_served_cache_must_match_calibrator_and_version(fake_trt, header, message):
    # finding 14: a header TensorRT would not accept means silent recalibration instead of our scales
    cache = TrtCache.parse(header + "\ninput: 3f800000\n")
    with pytest.raises(ConfigError, match=message):
        trt_adapter.make_calibrator("entropy", iter([]), batch_size=1, input_name="input", serve_cache=cache)
    assert trt_adapter.method_for_cache(cache) == ("minmax" if "MinMax" in header else "entropy")


def test_calibration_shape_follows_the_network():
    # finding 6 (calibration profile): static dims come from the network, the batch from --batch-size
    assert trt_adapter.calibration_shape("x", (-1, 3, -1, -1), 8, (3, 224, 224)) == (8, 3, 224, 224)
    assert trt_adapter.calibration_shape("x", (8, 3, 32, 32), 8, (3, 224, 224)) == (8, 3, 32, 32)
    with pytest.raises(ConfigError, match="batch dimension is static.*--batch-size.*got 4.*expected 1"):
        trt_adapter.calibration_shape("x", (1, 3, 224, 224), 4, (3, 224, 224))


def test_exception_in_callback_is_kept_and_reraised(fake_trt, tmp_path):
    def broken():
        yield np.zeros((2, 3, 2, 2), np.float32)
        raise OSError("disk on fire")

    cal = trt_adapter.make_calibrator("minmax", broken(), batch_size=2, input_name="input", device="cpu")
    assert cal.get_batch(["input"]) is not None
    assert cal.get_batch(["input"]) is None          # TensorRT sees "no more data", not a crash
    cal.write_calibration_cache(b"garbage that is not a cache")
    with pytest.raises(CalibrationError, match="disk on fire"):
        cal.raise_if_failed()


def test_percentile_has_no_tensorrt_calibrator_class(fake_trt):
    with pytest.raises(Exception, match="no TensorRT calibrator"):
        trt_adapter.make_calibrator("percentile", iter([]), batch_size=1, input_name="input")


@needs_trt
def test_tensorrt_builds_int8_engine_from_our_cache(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    trt = trt_adapter.import_tensorrt()
    res = calibrate(CalibrationConfig(trt_version=trt.__version__), cache_path=tmp_path / "c.bin", progress=False)
    written = trt_adapter.calibrate_onnx_with_tensorrt(
        res.onnx_path, iter([]), method="entropy", batch_size=1, input_shape=(3, 224, 224),
        cache_path=tmp_path / "back.bin", serve_cache=res.cache)
    # TensorRT accepted our cache (no calibration data was given) and wrote the same scales back
    for name, scale in res.cache.scales.items():
        if name in written.scales:
            assert np.float32(written.scales[name]) == np.float32(scale)


@needs_trt
def test_tensorrt_calibrates_with_our_data_pipeline(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    res = calibrate(CalibrationConfig(calibrator="tensorrt", batch_size=4), cache_path=tmp_path / "t.bin",
                    progress=False)
    cache = read_trt_cache(tmp_path / "t.bin")
    assert cache.algorithm == "EntropyCalibration2" and "input" in cache.scales
    assert set(res.ranges.ranges) == set(cache.scales)


def test_tensorrt_backend_without_tensorrt_says_what_to_use(mobilenet, monkeypatch, capsys, tmp_path):
    from trtquant import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc = cli.main(["build", "--precision", "fp32", "--backend", "tensorrt", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "TensorRT is not installed" in err and "trtexec" in err
    assert not (tmp_path / "e").exists()


@needs_trt
def test_tensorrt_int8_engine_from_qdq_agrees_with_simulation(mobilenet, sample_images, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from trtquant.quant.engines.registry import build
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.artifacts.plan import resolve_plan

    ranges = calibrate(CalibrationConfig(), cache_path=tmp_path / "c.bin", progress=False).ranges
    plan = resolve_plan("int8", mobilenet.graph)
    trt_engine = build("tensorrt", mobilenet.graph, plan, ranges, out_dir=tmp_path)
    assert (tmp_path / "model.engine").is_file() and (tmp_path / "timing.cache").is_file()
    sim = build("torch", mobilenet.graph, plan, ranges, device="cuda")
    x = sample_images[0]
    a, b = trt_engine.run(x), sim.run(x)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
