"""The PyTorch engine (GPU when present, else CPU): FP32 / TF32 / FP16 / BF16 executed for real by the ONNX
interpreter; INT8 is *simulated* (fake quantization with exactly our scales, on the same Q/DQ graph) and
labelled so."""

from __future__ import annotations

import numpy as np
import torch

from ...core.records import EngineInfo
from ...core.runtime import tf32
from ..graph.compiled import CUDA_ENGINE_MODE, CompiledGraph
from ..graph.interpreter import TorchGraphExecutor
from ..graph.onnx_graph import OnnxGraph
from ...core.types import Inputs
from .base import Engine, float_feeds

TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def channels_last_for(dtype: torch.dtype, tf32: bool) -> bool:
    """Whether a CUDA engine of this dtype runs channels-last: the tensor-core precisions only (FP16, BF16,
    TF32). FP32 convolutions gain nothing from it (H100, MobileNetV2 batch 64: 7 ms channels-last vs 6 ms NCHW) and cuDNN's
    NHWC FP32 kernels cost ~2 s per new input shape at their first call in a process (batches 64 / 40 / 1:
    2.3-3.9 / 1.7-2.6 / 2.1-2.5 s, against 0.42 / 0.10 / 0.09 s in NCHW), most of an FP32 or simulated-INT8
    evaluation's wall time."""
    return dtype != torch.float32 or tf32


class TorchEngine(Engine):
    """The ONNX graph executed by PyTorch in FP32/TF32/FP16/BF16.

    On CUDA (``fast=True``): weights and activations in channels-last layout for FP16/BF16/TF32
    (tensor-core convolution kernels; :func:`channels_last_for`) and one CUDA graph per input shape, so a
    batch is a single graph replay instead of a Python loop over ~100 nodes (that loop dominates at batch 1).

    ``compile=True``: the graph runs as one ``torch.compile``'d function (:mod:`..graph.compiled`: fused
    convolution epilogues and fake quantization; on CUDA mode ``compile_mode``, default
    :data:`.CUDA_ENGINE_MODE`, inside the engine's own CUDA graph); the seconds spent compiling are
    :attr:`compile_s`, apart from the runs. A failed compilation falls back to the interpreter (logged).
    """

    def __init__(self, graph: OnnxGraph, info: EngineInfo, device: torch.device, dtype: torch.dtype, tf32: bool,
                 fast: bool = True, compile: bool = False, compile_mode: str | None = None):
        self.executor = TorchGraphExecutor(
            graph, device, unsupported_hint="use another --backend (e.g. --backend onnxruntime): the torch backend "
                                            "runs the graph with PyTorch")
        self.executor.allow_tf32 = tf32
        self.dtype, self.tf32, self.device = dtype, tf32, device
        self.fast = fast and device.type == "cuda"
        self.channels_last = self.fast and channels_last_for(dtype, tf32)
        consts = {}
        for k, v in self.executor.consts.items():
            if v.is_floating_point():
                v = v.to(dtype)
                if self.channels_last and v.dim() == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            consts[k] = v
        self.executor.consts = consts
        self.input_name = graph.inputs[0].name
        self.input_names = [gi.name for gi in graph.inputs]
        self.info = info
        self._graphs: dict[tuple, tuple] = {}
        self.compiled = None
        if compile:
            mode = compile_mode if compile_mode is not None else (CUDA_ENGINE_MODE if device.type == "cuda" else None)
            self.compiled = CompiledGraph(self.executor, mode=mode, label=f"the {info.precision} torch engine")

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling so far (every input shape; 0 when not compiled)."""
        return self.compiled.compile_s if self.compiled is not None else 0.0

    def _execute(self, fed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.compiled.run(fed) if self.compiled is not None else None
        return self.executor.run(fed) if out is None else out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return next(iter(self._execute({self.input_name: x}).values()))

    def _device_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in, device tensor out (no host copies): what benchmarks time."""
        x = self._device_input(x)
        with tf32(self.tf32):          # off: what the executor enforces anyway (FP32 means FP32)
            if not self.fast:
                return self._forward(x)
            key = tuple(x.shape)
            if key not in self._graphs:
                static_in = x.clone()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):           # warm-up: cuDNN picks its kernels outside the capture
                        self._forward(static_in)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._forward(static_in)
                self._graphs[key] = (graph, static_in, static_out)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out

    def run(self, images: np.ndarray) -> np.ndarray:
        if isinstance(images, Inputs):           # several inputs: through the interpreter (no CUDA graph)
            return self.run_all(images)[0]
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return self.run_tensor(x).float().cpu().numpy()

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output, through the interpreter (no CUDA graph: it captures the first output only)."""
        fed = {k: self._device_input(torch.from_numpy(v)) for k, v in float_feeds(self.input_names, images).items()}
        with tf32(self.tf32):
            out = self._execute(fed)
        return tuple(v.float().cpu().numpy() for v in out.values())
