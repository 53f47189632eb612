"""calibrate() and `cli.py calibrate` end to end on the real model and images, and every error path."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trtquant import cli
from trtquant.calibrators.algorithms import Percentile
from trtquant.calibrators.collector import HistogramCollector
from trtquant.core.cache import read_ranges_json, read_trt_cache
from trtquant.quant.settings import CalibrationConfig
from trtquant.quant.calibrate import calibrate
from trtquant.core.errors import Interrupted
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.core.metrics import sqnr_db
from trtquant.core.numerics import fake_quant
from trtquant.core.types import CalibrationStats

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    # CPU: the tests below compare against activations computed on the CPU (tests/test_gpu.py covers CUDA)
    res = calibrate(CalibrationConfig(trt_version="8.6.1", device="cpu"), cache_path=d / "calib.bin",
                    stats_path=d / "s.npz", progress=False)
    return d, res


def test_readme_command_end_to_end(tmp_path):
    """The README's main job, as a user runs it, in a fresh working directory."""
    p = subprocess.run([sys.executable, str(REPO / "cli.py"), "calibrate", "--cache", "calib.bin", "--no-progress"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "calibrated 101 tensors | method entropy | 20 images" in p.stdout
    cache = read_trt_cache(tmp_path / "calib.bin")
    assert cache.algorithm == "EntropyCalibration2" and len(cache.scales) == 101
    ranges = read_ranges_json(tmp_path / "calib.bin.ranges.json")
    assert set(ranges.ranges) == set(cache.scales)
    assert sorted(os.listdir(tmp_path)) == ["calib.bin", "calib.bin.ranges.json"]


def test_cache_matches_ranges_and_stats(calibrated, mobilenet):
    d, res = calibrated
    cache = read_trt_cache(d / "calib.bin")
    assert cache.header() == "TRT-8601-EntropyCalibration2"
    assert list(cache.scales) == mobilenet.graph.calibration_tensors
    for name, r in res.ranges.ranges.items():
        assert np.float32(cache.scales[name]) == np.float32(np.float32(r.amax) / np.float32(127))
        assert 0 < r.amax <= res.stats.histograms[name].amax
    # the input's max |x| is known in closed form from the preprocessing: (1 - 0.406) / 0.225 at most
    assert res.stats.histograms["input"].amax <= (1 - 0.406) / 0.225 + 1e-5
    # post-ReLU6 tensors never exceed 6
    clip = "/features/features.0/features.0.2/Clip_output_0"
    assert res.stats.histograms[clip].amax <= 6.0


def test_statistics_equal_direct_computation(calibrated, mobilenet, sample_images):
    """Collector amax equals np.max over all images; counts equal a direct histogram of the same bins."""
    _, res = calibrated
    x = sample_images[0]
    acts = {}
    TorchGraphExecutor(mobilenet.graph).run({"input": torch.from_numpy(x)},
                                            observe=lambda n, v: acts.__setitem__(n, v.numpy().copy()))
    for name in ("input", "/features/features.3/conv/conv.0/conv.0.0/Conv_output_0", "logits"):
        h = res.stats.histograms[name]
        a = np.abs(acts[name]).ravel().astype(np.float64)
        assert h.amax == pytest.approx(a.max(), rel=1e-6)
        assert h.numel == a.size and h.counts.sum() == a.size
        direct = np.bincount(np.minimum((a / h.bin_width).astype(np.int64), h.num_bins - 1), minlength=h.num_bins)
        # values lying within float rounding of a bin edge may land one bin over
        assert np.abs(direct - h.counts).sum() <= 2e-4 * a.size


def test_from_stats_recomputes_without_the_model(calibrated, tmp_path):
    d, res = calibrated
    out = calibrate(CalibrationConfig(method="percentile", percentile=99.9), cache_path=tmp_path / "p.bin",
                    from_stats=d / "s.npz", progress=False)
    stats = CalibrationStats.load(d / "s.npz")
    for name, h in stats.histograms.items():
        assert out.ranges.ranges[name].amax == pytest.approx(Percentile(99.9).compute(h))
        assert np.array_equal(h.counts, res.stats.histograms[name].counts)
    again = calibrate(CalibrationConfig(method="entropy"), cache_path=tmp_path / "e.bin", from_stats=d / "s.npz",
                      progress=False)
    assert again.ranges.amax() == res.ranges.amax()
    assert out.ranges.data_fingerprint == res.stats.data_fingerprint


def test_int8_activations_track_the_float_model(calibrated, mobilenet, sample_images):
    """Fake-quantizing every calibrated tensor with the cache's scales keeps the FP32 predictions."""
    _, res = calibrated
    x, y = sample_images
    ex = TorchGraphExecutor(mobilenet.graph)
    ref = ex.run({"input": torch.from_numpy(x)})["logits"]
    scales = {n: r.scale for n, r in res.ranges.ranges.items()}
    q = ex.run({"input": torch.from_numpy(x)}, transform=lambda n, v: fake_quant(v, scales[n]) if n in scales else v)["logits"]
    agree = int((q.argmax(1) == ref.argmax(1)).sum())
    print("top-1 agreement", agree, "/ 20, logits SQNR", sqnr_db(ref, q))
    assert agree >= 17
    assert sqnr_db(ref, q) > 9      # every activation INT8, weights float: measured 12.2 dB
    # and a broken range (amax 20x too small) is visibly worse: the check can fail
    bad = {n: s / 20 for n, s in scales.items()}
    qb = ex.run({"input": torch.from_numpy(x)}, transform=lambda n, v: fake_quant(v, bad[n]) if n in bad else v)["logits"]
    assert sqnr_db(ref, qb) < sqnr_db(ref, q) - 10


def test_minmax_header_and_trt_version(tmp_path):
    res = calibrate(CalibrationConfig(method="minmax", trt_version="10.3.0"), cache_path=tmp_path / "m.bin",
                    progress=False)
    assert read_trt_cache(tmp_path / "m.bin").header() == "TRT-100300-MinMaxCalibration"
    for h in res.stats.histograms.values():
        assert res.ranges.ranges[h.name].amax == h.amax


def test_efficientnet_lite0_calibrates(tmp_path):
    res = calibrate(CalibrationConfig(model="efficientnet_lite0"), cache_path=tmp_path / "l.bin", progress=False)
    assert len(res.ranges.ranges) == 112
    # inception preset: inputs lie in [-1, 1]
    assert res.stats.histograms["input"].amax <= 1.0 + 1e-6


# --- bad input: exit code 2, clear message, nothing written -------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--method", "kl"], "unknown calibration method | --method: got 'kl', expected one of entropy, minmax, mse, percentile"),
    (["--model", "resnet9000"], "unknown model | --model: got 'resnet9000', expected one of efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, mobilenet_v2, tiny_cnn"),
    (["--model", "resnet18"], "weights required | --model resnet18"),
    (["--data", "/nonexistent/images"], "/nonexistent/images"),
    (["--num-images", "0"], "--num-images"),
    (["--batch-size", "0"], "--batch-size"),
    (["--executor", "tvm"], "unknown executor"),
    (["--onnx", "/nonexistent/model.onnx"], "ONNX file not found | --onnx /nonexistent/model.onnx"),
    (["--trt-version", "latest"], "--trt-version: got 'latest', expected MAJOR.MINOR.PATCH"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    try:                      # our errors return 2; argparse's (typed flags: they name the flag) exit 2
        rc, out, err = run_cli(["calibrate", "--cache", str(tmp_path / "c.bin"), "--no-progress", *args], capsys)
    except SystemExit as exc:
        rc, err = exc.code, capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert not list(tmp_path.iterdir())


def test_cache_in_missing_directory(tmp_path, capsys):
    rc, _, err = run_cli(["calibrate", "--cache", str(tmp_path / "no" / "c.bin")], capsys)
    assert rc == 2 and "output directory does not exist" in err and "mkdir -p" in err


def test_never_clobbers_another_kind_of_file(tmp_path, capsys):
    precious = tmp_path / "model.onnx"
    precious.write_bytes(b"precious bytes")
    rc, _, err = run_cli(["calibrate", "--cache", str(precious), "--no-progress"], capsys)
    assert rc == 2 and "refusing to overwrite a file of another kind" in err
    assert precious.read_bytes() == b"precious bytes"


def test_invalid_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    rc, _, err = run_cli(["calibrate", "--onnx", str(bad), "--cache", str(tmp_path / "c.bin")], capsys)
    assert rc == 2 and "invalid ONNX model" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_nan_activations_name_the_tensor(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32)
    x[2, 1, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    rc, _, err = run_cli(["calibrate", "--data", str(tmp_path / "x.npy"), "--cache", str(tmp_path / "c.bin"),
                          "--no-progress"], capsys)
    assert rc == 2 and "non-finite activation | tensor 'input'" in err and "got NaN" in err
    assert not (tmp_path / "c.bin").exists()


def test_input_shape_mismatch(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 100, 100), dtype=np.float32))
    rc, _, err = run_cli(["calibrate", "--data", str(tmp_path / "x.npy"), "--cache", str(tmp_path / "c.bin"),
                          "--no-progress"], capsys)
    assert rc == 2 and "input shape mismatch | model input 'input'" in err and "(2, 3, 100, 100)" in err


def test_ctrl_c_leaves_previous_outputs_untouched(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "c.bin"
    cache.write_text("TRT-8601-EntropyCalibration2\ninput: 3d23ac36\n")
    before = cache.read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(HistogramCollector, "begin", interrupted)
    with pytest.raises(Interrupted, match="nothing was written"):
        calibrate(CalibrationConfig(), cache_path=cache, progress=False)
    rc, _, err = run_cli(["calibrate", "--cache", str(cache), "--no-progress"], capsys)
    assert rc == 2 and "interrupted" in err
    assert cache.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]
