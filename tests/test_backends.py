"""Backend contract: one shared set of checks, subclassed per backend.

Every backend must run the FP32 model like the reference (ONNX Runtime FP32), give batch-size
independent results, label simulated INT8 as such, and keep INT8 predictions close to FP32.
TensorRT runs where it imports (skipped here with the reason); CUDA ones carry the gpu marker.
"""

import numpy as np
import pytest
import torch

from trtquant.quant.engines.registry import build
from trtquant.core.metrics import sqnr_db
from trtquant.quant.artifacts.plan import resolve_plan


@pytest.fixture(scope="module")
def ranges(mobilenet_ranges):
    return mobilenet_ranges


@pytest.fixture(scope="module")
def reference(mobilenet, sample_images):
    return build("onnxruntime", mobilenet.graph, resolve_plan("fp32", mobilenet.graph)).run(sample_images[0])


class BackendContract:
    backend = ""
    kwargs: dict = {}
    int8_simulated = False
    fp32_rtol = 1e-4

    def engine(self, mobilenet, precision, ranges=None):
        return build(self.backend, mobilenet.graph, resolve_plan(precision, mobilenet.graph), ranges, **self.kwargs)

    def test_fp32_matches_reference(self, mobilenet, sample_images, reference):
        e = self.engine(mobilenet, "fp32")
        out = e.run(sample_images[0])
        assert out.shape == (20, 1000) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, rtol=self.fp32_rtol, atol=self.fp32_rtol * np.abs(reference).max())
        assert e.info.backend == self.backend and e.info.description and not e.info.simulated

    def test_batch_size_independent(self, mobilenet, sample_images):
        e = self.engine(mobilenet, "fp32")
        x = sample_images[0][:5]
        whole = e.run(x)
        single = np.concatenate([e.run(x[i:i + 1]) for i in range(5)])
        np.testing.assert_allclose(whole, single, rtol=1e-4, atol=1e-4 * np.abs(whole).max())

    def test_int8_close_to_fp32_and_labelled(self, mobilenet, sample_images, reference, ranges):
        e = self.engine(mobilenet, "int8", ranges)
        out = e.run(sample_images[0])
        assert e.info.simulated == self.int8_simulated
        assert ("SIMULATED" in e.info.description) == self.int8_simulated
        assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.85
        assert sqnr_db(torch.from_numpy(reference), torch.from_numpy(out)) > 9


class TestOnnxRuntime(BackendContract):
    backend = "onnxruntime"


class TestTorchCPU(BackendContract):
    backend = "torch"
    kwargs = {"device": "cpu"}
    int8_simulated = True


@pytest.mark.gpu
class TestTorchCUDA(BackendContract):
    backend = "torch"
    kwargs = {"device": "cuda"}
    int8_simulated = True
    fp32_rtol = 1e-3      # cuDNN FP32 (TF32 off) vs ONNX Runtime CPU


try:
    import tensorrt  # noqa: F401
    _HAVE_TRT = True
except ImportError:
    _HAVE_TRT = False


@pytest.mark.gpu
@pytest.mark.skipif(not _HAVE_TRT, reason="TensorRT is not installed (no wheels on this machine); runs where it imports")
class TestTensorRT(BackendContract):
    backend = "tensorrt"
    fp32_rtol = 1e-2      # TensorRT may pick TF32-free but differently ordered kernels
