"""Streaming collector: NVIDIA's growing-histogram semantics on hand-made batches."""

import numpy as np
import pytest
import torch

from trtquant.calibrators import collector as collector_mod
from trtquant.calibrators.collector import HistogramCollector
from trtquant.quant.errors import CalibrationError


def feed(col, batches, name="t"):
    for b in batches:
        t = torch.tensor(b, dtype=torch.float32)
        p = col.begin(batch_ids=["img0"])
        p.observe(name, t)
        redo = p.commit()
        if redo:
            p = col.begin(redo)
            p.observe(name, t)
            assert not p.commit()


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
