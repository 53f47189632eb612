"""The embedded default every verb starts from, in one place: MobileNetV2 (ImageNet weights that install
offline) on the 20 bundled ImageNet images."""

DEFAULT_MODEL = "mobilenet_v2"
DEFAULT_DATA = "imagenet_sample"

OBJECTIVES = ("latency", "layers")
"""What ``sweep --objective`` minimises among the plans that meet the target: the estimated latency on the
target GPU, or the number of FP16 layers."""
DEFAULT_OBJECTIVE = "latency"
DEFAULT_TARGET_GPU = "auto"          # the local CUDA GPU when the latency model knows it (quant.planner.latency)
DEFAULT_LATENCY_BATCH = 1
LATENCY_MODELS = ("auto", "roofline", "tensorrt")
"""``sweep --latency-model``: tensorrt = TensorRT's measured per-layer times (needs TensorRT and a CUDA GPU),
roofline = the estimate for --target-gpu, auto = tensorrt where it can run, else roofline."""
DEFAULT_LATENCY_MODEL = "auto"

COMPILE_CHOICES = ("off", "on", "auto")
DEFAULT_COMPILE = "off"
"""``--compile``: off (the ONNX interpreter), on (``torch.compile``, on the CPU too), auto (on a CUDA device
only). Off by default: compiling costs seconds to minutes once per input shape, repaid over many batches."""
