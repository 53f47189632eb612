"""Every verb's settings, with each default defined once: the shared ``ModelSpec``/``DataSpec`` and the
settings of calibrate, evaluate, sweep and debug built on them (validated in ``__post_init__``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..calibrators.auto import Auto, make_method
from ..core.cache import TRT_ALGORITHMS, trt_version_int

from ..core.defaults import (DEFAULT_DATA, DEFAULT_LATENCY_BATCH, DEFAULT_LATENCY_MODEL, DEFAULT_MODEL,
                             DEFAULT_OBJECTIVE, DEFAULT_TARGET_GPU, LATENCY_MODELS, OBJECTIVES)
from ..core.errors import ConfigError
from ..core.gpus import check_gpu_name
from ..datasets.gpu_decode import DECODE_MODES
from .graph.compiled import DEFAULT_COMPILE, compile_enabled
from .graph.executors import EXECUTORS
from .graph.models import ResolvedModel, resolve_model


@dataclass(frozen=True)
class ModelSpec:
    """Which model a verb runs (``--model/--onnx/--weights/--preset``): shared by every verb's settings,
    its defaults defined here once."""

    model: str = DEFAULT_MODEL
    onnx: str | None = None
    weights: str | None = None
    preset: str | None = None            # None: the model's own preset

    def resolve(self) -> ResolvedModel:
        return resolve_model(self.model, onnx=self.onnx, weights=self.weights, preset=self.preset)

    def model_spec(self) -> dict:
        """The model fields alone, to hand to another verb's settings (``CalibrationConfig(**s.model_spec())``)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelSpec)}


@dataclass(frozen=True)
class DataSpec:
    """Which data a verb reads (``--data/--data-dir/--num-images/--seed``), shared like :class:`ModelSpec`."""

    data: str = DEFAULT_DATA
    data_dir: str | None = None
    num_images: int | None = None        # None: all images, at most DEFAULT_MAX_IMAGES
    seed: int = 0


DEFAULT_MAX_IMAGES = 1000
"""Without --num-images, calibrate on all images up to this many (a seeded random subset beyond)."""


@dataclass(frozen=True)
class CalibrationConfig(ModelSpec, DataSpec):
    """Every calibration setting, with its default, in one place (model and data: the shared specs)."""

    batch_size: int = 32
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    executor: str = "auto"               # auto | torch | onnxruntime
    method: str = "entropy"
    percentile: float = 99.99
    num_bins: int = 2048
    workers: int | None = None
    on_bad_image: str = "skip"
    trt_version: str | None = None       # None: the installed TensorRT's, else DEFAULT_TRT_VERSION
    cache_algorithm: str | None = None   # None: the method's (EntropyCalibration2 / MinMaxCalibration)
    h5_images: str = "images"
    h5_labels: str = "labels"
    calibrator: str = "ours"             # ours | tensorrt (TensorRT <= 10 runs its own IInt8 calibrator)
    layout: str | None = None            # uint8 array layout when ambiguous (NHWC | NCHW | NHW | HWC)
    decode: str = "cpu"                  # cpu | gpu | auto (gpu on a CUDA device): nvJPEG decoding (gpu_decode.py)
    auto_images: int = Auto.images       # --method auto: calibration images of its layer-error pass

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("invalid batch size", subject="--batch-size", got=str(self.batch_size), expected=">= 1")
        if self.num_images is not None and self.num_images < 1:
            raise ConfigError("invalid image count", subject="--num-images", got=str(self.num_images), expected=">= 1")
        if self.num_bins < 256:
            raise ConfigError("too few histogram bins", subject="--num-bins", got=str(self.num_bins),
                              expected=">= 256 (TensorRT's entropy search needs more than 128 bins; 2048 is standard)")
        if self.executor not in EXECUTORS:
            raise ConfigError("unknown executor", subject="--executor", got=repr(self.executor),
                              expected=" or ".join(EXECUTORS))
        if self.cache_algorithm is not None and self.cache_algorithm not in TRT_ALGORITHMS:
            raise ConfigError("unknown cache algorithm", subject="--cache-algorithm", got=repr(self.cache_algorithm),
                              expected="one of " + ", ".join(TRT_ALGORITHMS))
        if self.trt_version is not None:
            trt_version_int(self.trt_version)
        if self.calibrator not in ("ours", "tensorrt"):
            raise ConfigError("unknown calibrator", subject="--calibrator", got=repr(self.calibrator),
                              expected="ours or tensorrt")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("invalid worker count", subject="--workers", got=str(self.workers), expected=">= 1")
        if not (0 < self.percentile <= 100):
            raise ConfigError("invalid percentile", subject="--percentile", got=str(self.percentile),
                              expected="0 < P <= 100")
        if self.decode not in DECODE_MODES:
            raise ConfigError("unknown decode mode", subject="--decode", got=repr(self.decode),
                              expected=" | ".join(DECODE_MODES))
        self.algorithm()  # validates --method and its settings

    def data_settings_changed(self) -> list[str]:
        """The model/data flags set away from their defaults (they have no effect with --from-stats)."""
        default = CalibrationConfig()
        names = ("model", "weights", "preset", "data", "data_dir", "num_images", "seed", "batch_size", "device",
                 "executor", "num_bins", "workers", "on_bad_image", "h5_images", "h5_labels", "layout", "decode")
        return ["--" + n.replace("_", "-") for n in names if getattr(self, n) != getattr(default, n)]

    def algorithm(self):
        settings = {"percentile": self.percentile} if self.method == "percentile" else \
            {"images": self.auto_images} if self.method == Auto.name else {}
        return make_method(self.method, **settings)


@dataclass(frozen=True)
class SweepSettings(ModelSpec, DataSpec):
    """Every sweep setting (model and data: the shared specs; num_images counts evaluation images)."""

    target: str = "0.5%"
    calib_images: int = 256
    method: str = "entropy"
    ranges: str | None = None            # ranges JSON / cache / Q/DQ ONNX instead of calibrating
    proxy_images: int = 64               # sensitivity ranking subset
    time_budget_s: float | None = None
    device: str = "auto"
    validate_backend: str = "onnxruntime"
    trt_version: str | None = None
    margin_pp: float = 0.0               # the search must beat the target by this much (validation noise)
    metric: str | None = None            # a user metric MODULE:FUNCTION: the target judges it (core.metrics)
    objective: str = DEFAULT_OBJECTIVE   # latency: the fastest plan (estimated) | layers: the fewest FP16 layers
    target_gpu: str = DEFAULT_TARGET_GPU  # the GPU the latency model estimates for (planner.latency.GPUS)
    latency_batch: int = DEFAULT_LATENCY_BATCH   # the batch the latency model estimates
    latency_model: str = DEFAULT_LATENCY_MODEL   # auto | roofline | tensorrt (core.defaults.LATENCY_MODELS)
    compile: str = DEFAULT_COMPILE       # off | on | auto (CUDA): torch.compile the simulator (quant/graph/compiled.py)

    def __post_init__(self):
        compile_enabled(self.compile, "cpu")           # an unknown --compile fails here
        if self.objective not in OBJECTIVES:
            raise ConfigError("unknown objective", subject="--objective", got=repr(self.objective),
                              expected=" | ".join(OBJECTIVES))
        check_gpu_name(self.target_gpu)
        if self.latency_model not in LATENCY_MODELS:
            raise ConfigError("unknown latency model", subject="--latency-model", got=repr(self.latency_model),
                              expected=" | ".join(LATENCY_MODELS))
        if isinstance(self.latency_batch, bool) or not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise ConfigError("invalid latency batch", subject="--latency-batch", got=repr(self.latency_batch),
                              expected="an integer >= 1")


DEFAULT_DEBUG_IMAGES = 64
"""Without --num-images, debug analyses this many images (two batches of 32)."""


@dataclass(frozen=True)
class DebugSettings(ModelSpec, DataSpec):
    """Every debug setting (model and data: the shared specs; num_images counts analysed images, default
    ``DEFAULT_DEBUG_IMAGES``)."""

    precision: str = "int8"              # int8 | PLAN.json: the model to debug (FP16 layers simulated in FP32)
    ranges: str | None = None            # ranges JSON / cache / Q/DQ ONNX instead of calibrating
    method: str = "entropy"              # range method when calibrating here
    calib_images: int = 256
    batch_size: int = 32
    device: str = "auto"
    worst: int = 3                       # layers the suggested plan keeps in FP16
    jump_db: float = 20.0                # a node jumps when it adds error below this (quant/debug.py)

    def __post_init__(self):
        for flag, value in (("--batch-size", self.batch_size), ("--worst", self.worst),
                            ("--calib-images", self.calib_images), ("--num-images", self.num_images)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError("invalid count", subject=flag, got=repr(value), expected="an integer >= 1")
        if not (isinstance(self.jump_db, (int, float)) and math.isfinite(self.jump_db)):
            raise ConfigError("invalid jump threshold", subject="--jump-db", got=repr(self.jump_db),
                              expected="a finite number of dB, e.g. 20")
        if self.ranges is None:
            CalibrationConfig(method=self.method)          # an unknown --method fails here, before any work
        if self.precision in ("fp32", "fp16"):
            raise ConfigError("nothing to debug: no layer is quantized", subject=f"--precision {self.precision}",
                              expected="int8 or a plan JSON with INT8 layers")


@dataclass(frozen=True)
class EvalSettings(ModelSpec, DataSpec):
    """Every evaluate setting (model and data: the shared specs; num_images counts evaluation images)."""

    configs: str = "fp32,int8:entropy,int8:minmax,int8:percentile"
    backend: str = "onnxruntime"
    calib_images: int = 256              # calibration: a seeded subset of the same data
    batch_size: int = 64                 # evaluation batches; also the throughput batch
    latency_iters: int = 50
    device: str = "auto"
    target: str = "0.5%"                 # the target grammar of core.targets (drop, agree:, sqnr:, cosine:)
    bootstrap: int = 2000
    metric: str | None = None            # a user metric MODULE:FUNCTION (core.metrics.load_user_metric)
    compile: str = DEFAULT_COMPILE       # off | on | auto (CUDA): torch.compile the torch backend's engines

    def __post_init__(self):
        compile_enabled(self.compile, "cpu")           # an unknown --compile fails here

    def key(self) -> dict:
        """The settings that make two measurements of one configuration comparable (for --resume)."""
        d = asdict(self)
        d.pop("configs")
        d.pop("target")
        if d["compile"] == DEFAULT_COMPILE:      # the key of a run without --compile, as before the flag existed
            d.pop("compile")
        return d
