"""Streaming collector: NVIDIA's growing-histogram semantics on hand-made batches."""

import numpy as np
import pytest
import torch

from trtquant.calibrators import collector as collector_mod
from trtquant.calibrators.collector import HistogramCollector, collect_batch
from trtquant.core.errors import CalibrationError


def feed(col, batches, name="t"):
    for b in batches:
        t = torch.tensor(b, dtype=torch.float32)
        collect_batch(col, lambda observe, watch: observe(name, t), ["img0"])


def test_growth_by_whole_bins_hand_computed():
    col = HistogramCollector(["t"], num_bins=4)
    # all-zero first batch: counted, no range yet; then max 2.0 fixes width 0.5 (4 bins);
    # then max 3.2 grows the histogram to ceil(3.2 / 0.5) = 7 bins of the same width
    feed(col, [[0.0, -0.0], [0.1, -0.6, 1.2, 2.0], [3.2, -0.3, 2.6]])
    h = col.histograms()["t"]
    assert h.bin_width == 0.5 and h.num_bins == 7
    assert h.amax == pytest.approx(3.2)
    assert h.numel == 9
    #        bin:  0 (0.0,0.0,0.1,0.3)  1 (0.6)  2 (1.2)  3 (2.0)  4  5 (2.6)  6 (3.2)
    assert h.counts.tolist() == [4, 1, 1, 1, 0, 1, 1]


def test_amax_equals_max_over_concatenated_batches():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 50)) * s for s in (0.5, 2.0, 1.0, 4.0)]
    col = HistogramCollector(["t"], num_bins=256)
    feed(col, batches)
    h = col.histograms()["t"]
    allv = np.abs(np.concatenate([b.ravel() for b in batches]))
    assert h.amax == pytest.approx(allv.max(), rel=1e-7)
    assert h.counts.sum() == allv.size
    direct = np.bincount(np.minimum((allv / h.bin_width).astype(int), h.num_bins - 1), minlength=h.num_bins)
    assert np.abs(direct - h.counts).sum() <= 2


def test_chunked_histograms_equal_single_call(monkeypatch):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    one = HistogramCollector(["t"], num_bins=64)
    feed(one, batches)
    monkeypatch.setattr(collector_mod, "_HISTC_CHUNK", 97)
    many = HistogramCollector(["t"], num_bins=64)
    feed(many, batches)
    assert np.array_equal(one.histograms()["t"].counts, many.histograms()["t"].counts)


def test_nan_and_inf_name_the_tensor_and_batch():
    col = HistogramCollector(["conv out"], num_bins=8)
    with pytest.raises(CalibrationError, match="non-finite activation | tensor 'conv out' .batch starting at img0.: got NaN"):
        feed(col, [[1.0, float("nan")]], name="conv out")
    col = HistogramCollector(["x"], num_bins=8)
    with pytest.raises(CalibrationError, match="got Inf"):
        feed(col, [[1.0, -float("inf")]], name="x")


def test_amax_only_mode():
    col = HistogramCollector(["t"], num_bins=8, histograms=False)
    feed(col, [[0.5, -1.5], [0.25]])
    h = col.histograms()["t"]
    assert h.amax == 1.5 and h.numel == 3 and h.num_bins == 1


def test_tensor_never_seen_is_an_error():
    col = HistogramCollector(["a", "b"], num_bins=8)
    feed(col, [[1.0]], name="a")
    with pytest.raises(CalibrationError, match="no statistics collected | tensor 'b'"):
        col.histograms()


def test_fused_gpu_kernel_semantics_in_triton_interpreter():
    """The Triton statistics kernel, run by Triton's CPU interpreter, equals torch.histc and min/max."""
    pytest.importorskip("triton", reason="Triton not installed")
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, torch
        from trtquant.calibrators import gpu_hist
        g = torch.Generator().manual_seed(0)
        y = torch.relu(torch.randn(40000, generator=g)) * 3
        y[5] = -1.25
        hi = float(y.abs().max())
        lohi, h = gpu_hist.lohi_and_histogram(y, 64, hi)
        ref = torch.histc(y, 128, -hi, hi)
        assert lohi.tolist() == [-1.25, float(y.max())], lohi
        assert int(h.sum()) == y.numel()
        assert float((h.double() - ref.double()).abs().sum()) == 0.0
        y[7] = float("nan")
        assert torch.isnan(gpu_hist.lohi_and_histogram(y, 64, hi)[0]).all()
        print("ok")
    """)
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]
