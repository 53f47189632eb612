"""GPU code paths: the statistics pass on CUDA equals the CPU pass. Skipped without a CUDA GPU."""

import numpy as np
import pytest
import torch

from trtquant.calibrators import gpu_hist
from trtquant.calibrators.collector import HistogramCollector, collect_batch
from trtquant.quant.settings import CalibrationConfig
from trtquant.quant.calibrate import calibrate
from trtquant.quant.graph.interpreter import TorchGraphExecutor

pytestmark = pytest.mark.gpu


def _collect(graph, x, device):
    ex = TorchGraphExecutor(graph, device)
    col = HistogramCollector(graph.calibration_tensors, device=device)
    for chunk in np.array_split(x, 3):
        t = torch.from_numpy(chunk)
        collect_batch(col, lambda observe, watch: ex.run({"input": t}, observe=observe, watch=watch))
    return col.histograms()


def test_cuda_statistics_equal_cpu(mobilenet, sample_images):
    x = sample_images[0]
    cpu = _collect(mobilenet.graph, x, torch.device("cpu"))
    gpu = _collect(mobilenet.graph, x, torch.device("cuda"))
    assert set(cpu) == set(gpu)
    for name in cpu:
        a, b = cpu[name], gpu[name]
        assert b.amax == pytest.approx(a.amax, rel=1e-5), name          # cuDNN vs CPU FP32 rounding (TF32 off)
        assert b.numel == a.numel and b.counts.sum() == a.counts.sum()
        if a.bin_width == b.bin_width:
            assert np.abs(a.counts - b.counts).sum() <= 1e-3 * a.numel, name


@pytest.mark.parametrize("method,settings", [("minmax", {}), ("percentile", {"percentile": 99.99}),
                                             ("entropy", {})])
def test_cuda_calibration_matches_cpu(tmp_path, method, settings):
    cfg = dict(method=method, **settings)
    cpu = calibrate(CalibrationConfig(device="cpu", **cfg), cache_path=tmp_path / "c.bin", progress=False)
    gpu = calibrate(CalibrationConfig(device="cuda", **cfg), cache_path=tmp_path / "g.bin", progress=False)
    assert gpu.device.startswith("cuda")
    close = 0
    for name, r in cpu.ranges.ranges.items():
        width = cpu.stats.histograms[name].bin_width
        close += abs(gpu.ranges.ranges[name].amax - r.amax) <= 2 * width + 1e-5 * r.amax
    if method == "entropy":
        # the KL minimum can jump between near-equal local minima on a 1e-6 change of the histogram
        assert close >= 0.95 * len(cpu.ranges.ranges)
    else:
        assert close == len(cpu.ranges.ranges)


def test_fused_kernel_equals_histc_on_real_activations(mobilenet, sample_images):
    if not gpu_hist.available(torch.zeros(1, device="cuda")):
        pytest.skip("Triton not installed")
    acts = {}
    TorchGraphExecutor(mobilenet.graph, "cuda").run({"input": torch.from_numpy(sample_images[0]).cuda()},
                                                     observe=lambda n, v: acts.__setitem__(n, v))
    for name, v in acts.items():
        hi = float(v.abs().max()) * 1.01
        lohi, h = gpu_hist.lohi_and_histogram(v, 512, hi)
        ref = torch.histc(v.double().reshape(-1), 1024, -hi, hi)
        assert float(lohi[0]) == float(v.min()) and float(lohi[1]) == float(v.max()), name
        assert int(h.sum()) == v.numel(), name
        assert float((h.double() - ref).abs().sum()) <= 1e-4 * v.numel(), name
    v = acts["input"].clone()
    v[0, 0, 0, 0] = float("nan")
    lohi, _ = gpu_hist.lohi_and_histogram(v, 512, 10.0)
    assert torch.isnan(lohi).all()


def test_fused_and_torch_paths_give_the_same_statistics(mobilenet, sample_images, monkeypatch):
    if not gpu_hist.available(torch.zeros(1, device="cuda")):
        pytest.skip("Triton not installed")
    fused = _collect(mobilenet.graph, sample_images[0], torch.device("cuda"))
    monkeypatch.setenv("TRTQUANT_FUSED_KERNEL", "0")
    plain = _collect(mobilenet.graph, sample_images[0], torch.device("cuda"))
    for name in fused:
        assert fused[name].amax == plain[name].amax
        assert np.abs(fused[name].counts - plain[name].counts).sum() <= 1e-4 * fused[name].numel, name


@pytest.mark.parametrize("precision,min_sqnr", [("tf32", 30), ("fp16", 30), ("bf16", 18)])
def test_torch_engines_on_cuda_track_fp32(mobilenet, sample_images, precision, min_sqnr):
    from trtquant.quant.engines.registry import build
    from trtquant.core.metrics import sqnr_db
    from trtquant.quant.artifacts.plan import resolve_plan

    x, _ = sample_images
    plan = resolve_plan("fp32", mobilenet.graph)
    ref = build("torch", mobilenet.graph, plan, device="cpu").run(x)
    eng = build("torch", mobilenet.graph, plan, torch_precision=precision, device="cuda")
    assert "CUDA graphs" in eng.info.description
    out = eng.run(x)
    again = eng.run(x)                                    # a graph replay gives the same answer
    assert np.array_equal(out, again)
    assert sqnr_db(torch.from_numpy(ref), torch.from_numpy(out)) > min_sqnr
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_simulated_int8_on_cuda_equals_cpu(mobilenet, sample_images, tmp_path):
    from trtquant.quant.engines.registry import build
    from trtquant.core.metrics import sqnr_db
    from trtquant.quant.artifacts.plan import resolve_plan

    ranges = calibrate(CalibrationConfig(device="cpu"), cache_path=tmp_path / "c.bin", progress=False).ranges
    plan = resolve_plan("int8", mobilenet.graph)
    x = sample_images[0]
    cpu = build("torch", mobilenet.graph, plan, ranges, device="cpu").run(x)
    gpu = build("torch", mobilenet.graph, plan, ranges, device="cuda").run(x)
    assert (cpu.argmax(1) == gpu.argmax(1)).mean() >= 0.9
    assert sqnr_db(torch.from_numpy(cpu), torch.from_numpy(gpu)) > 15
