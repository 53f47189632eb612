"""Test oracle: a direct, loop-per-candidate transcription of the KL search described in
NVIDIA's reference (pytorch-quantization ``_compute_amax_entropy``), using scipy's entropy.

Slow (seconds for 2048 bins); used only to check the vectorized implementation.
"""

from collections import Counter

import numpy as np
from scipy.stats import entropy


def reference_entropy_bin(counts, num_bits=8, start_bin=128, stride=1):
    """Return the chosen threshold bin index i (amax = i * bin_width)."""
    bins = np.array(counts, dtype=np.float64)
    bins[0] = bins[1]
    total = bins.sum()
    nbins = 1 << (num_bits - 1)
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1, stride):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        dens = np.zeros(nbins)
        for idx, d in enumerate(digitized):
            if d != -1:
                dens[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                dens[key] /= val
        new = np.zeros(i)
        for idx, d in enumerate(digitized):
            if d != -1:
                new[idx] = dens[d]
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        assert round(new.sum() + bins[i:].sum()) == total and round(ref.sum()) == total
        divergences.append(entropy(ref, new) if new.sum() > 0 else np.inf)
        arguments.append(i)
    d = np.array(divergences)
    return arguments[len(d) - 1 - int(np.argmin(d[::-1]))], np.array(arguments), d
