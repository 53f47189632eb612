"""Range algorithms against hand-computed answers, NVIDIA's reference search, and shared contracts."""

import math

import numpy as np
import pytest
from scipy.stats import entropy as kl_scipy

from reference_entropy import reference_entropy_bin
from trtquant.calibrators.algorithms import ALGORITHMS, MSE, Entropy, MinMax, Percentile, make_algorithm
from trtquant.core.errors import ConfigError
from trtquant.core.types import TensorHistogram


def hist(counts, width=1.0, amax=None):
    counts = np.asarray(counts, dtype=np.float64)
    if amax is None:
        amax = len(counts) * width
    return TensorHistogram("t", amax=float(amax), bin_width=width, counts=counts, numel=int(counts.sum()))


# --- entropy -----------------------------------------------------------------------------------

def test_entropy_hand_computed_two_level_case():
    # 2-bit quantization (L = 2 levels), candidates i = 2..5. counts[0] is replaced by counts[1] (=6).
    counts = [1, 6, 2, 1, 1]
    algo = Entropy(num_bits=2, start_bin=2)
    cands, kl = algo.divergences(counts)
    assert cands.tolist() == [2, 3, 4, 5]
    # P (clipped mass folded into the last kept bin) and Q (groups spread over their non-zero bins), by hand:
    by_hand = {
        2: ([6, 10], [6, 6]),
        3: ([6, 6, 4], [6, 6, 2]),
        4: ([6, 6, 2, 2], [6, 6, 1.5, 1.5]),
        5: ([6, 6, 2, 1, 1], [14 / 3, 14 / 3, 14 / 3, 1, 1]),
    }
    expected_kl = {2: 0.0315840, 3: 0.0397554, 4: 0.0073820, 5: 0.0825736}  # worked out on paper
    for i, value in zip(cands, kl):
        p, q = by_hand[i]
        assert value == pytest.approx(kl_scipy(p, q), abs=1e-12)
        assert value == pytest.approx(expected_kl[i], abs=5e-7)
    # minimum at i = 4 -> amax = 4 bins * width 0.5
    assert algo.compute(hist(counts, width=0.5, amax=2.4)) == pytest.approx(2.0)


def test_entropy_zero_last_bin_with_tail_is_impossible():
    _, kl = Entropy(num_bits=2, start_bin=2).divergences([1, 1, 0, 5])
    assert math.isinf(kl[1])          # i = 3: p_{2} = 0 + 5 > 0 but q_{2} = 0
    assert np.isfinite(kl[[0, 2]]).all()


def test_entropy_uniform_histogram_keeps_full_range():
    h = hist(np.full(2048, 10.0), width=0.01, amax=20.47)
    assert Entropy().compute(h) == pytest.approx(20.47)   # KL = 0 only at i = N; clipped to the recorded max


@pytest.mark.parametrize("seed,shape", [(0, "t3"), (1, "relu"), (2, "t5"), (3, "bimodal")])
def test_entropy_matches_nvidia_reference_loop(seed, shape):
    rng = np.random.default_rng(seed)
    if shape == "relu":
        x = np.maximum(rng.normal(size=100_000), 0)
    elif shape == "bimodal":
        x = np.abs(np.concatenate([rng.normal(0, 1, 80_000), rng.normal(6, 0.5, 20_000)]))
    else:
        x = np.abs(rng.standard_t(int(shape[1:]), size=100_000))
    counts, _ = np.histogram(x, bins=384, range=(0, x.max()))
    i_ref, cands_ref, kl_ref = reference_entropy_bin(counts)
    cands, kl = Entropy().divergences(counts)
    assert cands.tolist() == cands_ref.tolist()
    finite = np.isfinite(kl_ref)
    assert (np.isfinite(kl) == finite).all()
    np.testing.assert_allclose(kl[finite], kl_ref[finite], rtol=1e-9, atol=1e-12)
    width = x.max() / 384
    assert Entropy().compute(hist(counts, width=width, amax=x.max())) == pytest.approx(min(i_ref * width, x.max()))


def test_entropy_stride_and_start_bin_validation():
    with pytest.raises(ConfigError, match="start_bin"):
        Entropy(start_bin=64)
    with pytest.raises(ConfigError, match="stride"):
        Entropy(stride=0)
    counts = np.abs(np.random.default_rng(0).normal(size=600)) + 1
    cands, _ = Entropy(stride=4).divergences(counts)
    assert cands[0] == 128 and np.all(np.diff(cands) == 4)


# --- percentile / mse / minmax ----------------------------------------------------------------

def test_percentile_hand_computed():
    h = hist([50, 30, 15, 5], width=1.0, amax=3.7)
    assert Percentile(80).compute(h) == 2.0       # cumulative 50, 80 -> bin 1 reaches 80 % -> right edge 2
    assert Percentile(95).compute(h) == 3.0
    assert Percentile(95.01).compute(h) == 3.7    # right edge 4 clipped to the recorded max
    assert Percentile(100).compute(h) == 3.7
    with pytest.raises(ConfigError, match="--percentile"):
        Percentile(0)


def test_mse_hand_computed():
    # 2-bit (levels -1, 0, 1), centres 0.5 1.5 2.5 3.5, counts 0 10 0 1. Errors for a = centre:
    # a=0.5: 10*1^2 + 1*3^2 = 19; a=1.5: 0 + 1*2^2 = 4; a=2.5: 10*1^2 + 1*1^2 = 11; a=3.5: 10*1.5^2 = 22.5
    algo = MSE(num_bits=2, start_bin=0)
    idx, err = algo.errors([0, 10, 0, 1], 1.0)
    np.testing.assert_allclose(err * 4, [19, 4, 11, 22.5])
    assert algo.compute(hist([0, 10, 0, 1], amax=4.0)) == 1.5


def test_minmax_is_recorded_max():
    assert MinMax().compute(hist([1, 2, 3], amax=2.2)) == 2.2


# --- contracts over every registered algorithm ---------------------------------------------------

@pytest.fixture(scope="module")
def real_like_hists():
    rng = np.random.default_rng(7)
    out = []
    for x in (np.abs(rng.standard_t(3, 200_000)), np.maximum(rng.normal(size=200_000), 0) * 6,
              np.abs(rng.laplace(size=200_000))):
        counts, _ = np.histogram(x, bins=2048, range=(0, x.max()))
        out.append(hist(counts, width=x.max() / 2048, amax=x.max()))
    return out


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_contract_amax_within_max(name, real_like_hists):
    algo = make_algorithm(name)
    for h in real_like_hists:
        a = algo.compute(h)
        assert 0 < a <= h.amax


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_contract_all_zero_tensor(name):
    h = TensorHistogram("z", amax=0.0, bin_width=0.0, counts=np.array([1000.0]), numel=1000)
    assert make_algorithm(name).compute(h) == 0.0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_contract_scale_invariance(name, real_like_hists):
    # scaling the data scales the threshold: the algorithms only see bin indices and the width
    algo = make_algorithm(name)
    h = real_like_hists[0]
    h2 = TensorHistogram("t", amax=h.amax * 8, bin_width=h.bin_width * 8, counts=h.counts, numel=h.numel)
    assert algo.compute(h2) == pytest.approx(algo.compute(h) * 8, rel=1e-12)


def test_percentile_100_is_max(real_like_hists):
    for h in real_like_hists:
        assert Percentile(100).compute(h) == h.amax


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="entropy, minmax, mse, percentile"):
        make_algorithm("kl")
