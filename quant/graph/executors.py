"""Executors for the statistics pass: the PyTorch interpreter, or ONNX Runtime with every calibration
tensor exposed as an output (the fallback for operators the interpreter lacks)."""

from __future__ import annotations
import logging
from typing import Mapping

import numpy as np
import onnx
import torch

from ...core.errors import ConfigError, ModelError
from .interpreter import TorchGraphExecutor, unsupported_ops
from .onnx_graph import Observer, OnnxGraph

log = logging.getLogger(__name__)


class OrtGraphExecutor:
    """ONNX Runtime with every calibration tensor exposed as an output (CPU; CUDA EP when available)."""

    kind = "onnxruntime"

    def __init__(self, graph: OnnxGraph, device: torch.device | str = "cpu"):
        import onnxruntime as ort

        self.graph = graph
        model = onnx.ModelProto()
        model.CopyFrom(graph.model)
        existing = {o.name for o in model.graph.output}
        init_names = {i.name for i in model.graph.initializer}
        input_names = {i.name for i in graph.inputs}
        for name in graph.calibration_tensors:
            if name not in existing and name not in input_names and name not in init_names:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        except Exception as err:  # ORT raises its own exception types for invalid graphs
            raise ModelError("ONNX Runtime cannot load the model", subject=str(graph.path or "model"),
                             got=str(err)[:300]) from err
        self.out_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, torch.Tensor], observe: Observer | None = None,
            watch: set[str] | None = None) -> dict[str, torch.Tensor]:
        np_feeds = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
        try:
            values = self.session.run(self.out_names, np_feeds)
        except Exception as err:
            raise ModelError("ONNX Runtime failed to run the model", subject=str(self.graph.path or "model"),
                             got=str(err)[:300], hint="check the input shape and dtype") from err
        result = dict(zip(self.out_names, values))
        if observe:
            for gi in self.graph.inputs:
                if watch is None or gi.name in watch:
                    observe(gi.name, feeds[gi.name])
            for name in self.graph.calibration_tensors:
                if name in result and (watch is None or name in watch) and np.issubdtype(result[name].dtype, np.floating):
                    observe(name, torch.from_numpy(result[name]))
        return {o: torch.from_numpy(result[o]) for o in self.graph.outputs}


EXECUTORS = ("auto", "torch", "onnxruntime")


def make_executor(graph: OnnxGraph, kind: str, device: torch.device):
    if kind not in EXECUTORS:
        raise ConfigError("unknown executor", subject="--executor", got=repr(kind), expected=" or ".join(EXECUTORS))
    if kind == "auto":
        missing = unsupported_ops(graph)
        if missing:
            log.info("PyTorch executor lacks %s; using ONNX Runtime for the statistics pass", ", ".join(missing))
            kind = "onnxruntime"
        else:
            kind = "torch"
    if kind == "torch":
        return TorchGraphExecutor(graph, device)
    return OrtGraphExecutor(graph, device)
