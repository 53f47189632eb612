"""The shipped artifacts of the embedded default are pinned byte for byte (issue 9): MobileNetV2's statistics
on the 20 bundled images (``tests/data/default_stats.npz``, saved by ``calibrate --stats``) give these exact
caches and ranges JSON for every method, and these exact Q/DQ models. A refactor that changes one byte of
what we ship fails here; a deliberate change updates the pins and says why."""

import hashlib
from pathlib import Path

import pytest

from trtquant.core.cache import read_ranges_json
from trtquant.core.types import CalibrationStats
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.calibrate import calibrate
from trtquant.quant.graph.models import resolve_model
from trtquant.quant.settings import CalibrationConfig

REPO = Path(__file__).resolve().parents[1]
STATS = REPO / "tests" / "data" / "default_stats.npz"
PINNED = {   # method: (cache sha256, ranges JSON sha256); TRT-8601 header
    "entropy": ("6ea4692338923dd14d884b2579ae1a398802ac9770cc639346be3aa6d7f81492",
                "55fd2bf0c166a077d3153ce50e21e10760c46ac857a641f517a0c0827160ecbf"),
    "minmax": ("f94553a56674966389b7be374e3cba26c4c8e5f662db3c72a3dff9b571efde31",
               "d16e07615c9eae35a3eea23c2b0c7ddb44bbc51fe4e9a9587c45158f30b1625d"),
    "percentile": ("309e15dbb3351d36e666a99f0257d7f1cec95c0fadafeb06bd06564fd0f698ec",
                   "6676c606e37a388ac628dc99ac76def2a43129f24f2c1efc04ccebe1b89df455"),
    "mse": ("a14b684c6e73699a190ece868806f1a99cffa6fb7db681af532795b159dd239c",
            "de74ad155867fe7a7e41a05d5747e926a39bf9607a03c32d84031856a4274442"),
}
QDQ = {"int8": "f03ca8d6fe9ad82019cfcf9b1dc405592ed3f52b440ee15d9caadbe9290b1498",
       "fp16": "09e8e93b8b85f3fb03a61f50bada5bff1f37bf79da6d68483f64a0c179ba2592"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pinned")
    for method in PINNED:       # what `cli.py calibrate --from-stats STATS --method M --cache M.bin` runs
        calibrate(CalibrationConfig(method=method, trt_version="8.6.1"), cache_path=d / f"{method}.bin",
                  from_stats=STATS, progress=False)
    return d


@pytest.mark.parametrize("method", sorted(PINNED))
def test_cache_and_ranges_of_the_default_are_byte_identical(outputs, method):
    cache_sha, ranges_sha = PINNED[method]
    assert sha(outputs / f"{method}.bin") == cache_sha
    assert sha(outputs / f"{method}.bin.ranges.json") == ranges_sha


@pytest.mark.parametrize("plan", sorted(QDQ))
def test_qdq_models_of_the_default_are_byte_identical(outputs, plan):
    rm = resolve_model("mobilenet_v2")
    stats = CalibrationStats.load(STATS)
    if rm.graph.fingerprint() != stats.model_fingerprint:
        pytest.skip("this torch exports another MobileNetV2 graph than the one pinned (torch 2.14.1)")
    model, _ = build_qdq_model(rm.graph, read_ranges_json(outputs / "entropy.bin.ranges.json"),
                               resolve_plan(plan, rm.graph))
    assert hashlib.sha256(model.SerializeToString()).hexdigest() == QDQ[plan]
