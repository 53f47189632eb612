"""Shared fixtures: the real models and the 20 bundled ImageNet images."""

import numpy as np
import pytest
import torch

from trtquant.datasets import PRESETS, open_source
from trtquant.quant.graph.models import resolve_model


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mobilenet():
    return resolve_model("mobilenet_v2")


@pytest.fixture(scope="session")
def lite0():
    return resolve_model("efficientnet_lite0")


def _sample(preset):
    src = open_source("imagenet_sample", preprocess=PRESETS[preset])
    batches = list(src.batches(32, progress=False))
    return (np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]))


@pytest.fixture(scope="session")
def sample_images():
    """(images float32 N,3,224,224 with the imagenet preset, labels) of the 20 bundled images."""
    return _sample("imagenet")


@pytest.fixture(scope="session")
def sample_images_inception():
    return _sample("inception")


@pytest.fixture(scope="session")
def mobilenet_ranges(tmp_path_factory):
    """Entropy ranges of MobileNetV2 on the 20 bundled images (the embedded default), computed once."""
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    return calibrate(CalibrationConfig(device="cpu"), cache_path=tmp_path_factory.mktemp("ranges") / "c.bin",
                     progress=False).ranges
