"""What a model's inputs accept: checks of the model input against the data (dtype, rank, shape, fixed
batch) and of a preprocessing preset against the input, before any image is read."""

from __future__ import annotations
import logging


from ...core.errors import DataError, ModelError
from ...core.types import feeds
from ...datasets import PRESETS
from .onnx_graph import OnnxGraph

log = logging.getLogger(__name__)


FLOAT_INPUT_TYPES = (1, 10, 11, 16)     # ONNX FLOAT, FLOAT16, DOUBLE, BFLOAT16
_ONNX_TYPE_NAMES = {2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 4: "uint16", 5: "int16"}


def check_model_input(graph: OnnxGraph, *, batch_size: int | None = None, flag: str = "--batch-size",
                      image=None) -> int | None:
    """Before any data is read: float inputs (we feed normalised float32), a shape the images can take.

    A model with several inputs is fed from named arrays (one per input: :func:`data_inputs`), so only
    their dtypes are checked here. Returns the batch size to feed: ``batch_size``, or the model's fixed
    batch when its input fixes one (said once, as a warning, when that overrides ``flag``)."""
    for gi in graph.inputs:
        if gi.elem_type not in FLOAT_INPUT_TYPES:
            raise ModelError("the model input is not a float tensor", subject=f"model input {gi.name!r}",
                             got=_ONNX_TYPE_NAMES.get(gi.elem_type, f"ONNX type {gi.elem_type}"),
                             expected="float32 (the pipeline feeds normalised float32 images)",
                             hint="export the model without the integer pre-processing (e.g. a uint8 input plus "
                                  "Cast), or calibrate the float graph after it")
    gi = graph.inputs[0]
    if image is not None and len(graph.inputs) == 1:   # the Preprocess that will make the images: they must be the input
        dims = tuple(gi.shape)
        c, crop = image.channels, image.crop
        want = ("?", c, crop, crop)
        ok = len(dims) == 4 and all(not isinstance(d, int) or d in (0, w) for d, w in zip(dims[1:], want[1:]))
        if not ok:
            raise DataError("input shape mismatch", subject=f"model input {gi.name!r}", got=f"{dims}",
                            expected=f"(N, {c}, {crop}, {crop}): the images are preprocessed to {crop}x{crop} "
                                     f"{'RGB' if c == 3 else 'greyscale'} (NCHW)",
                            hint="use a model that takes NCHW images of the preprocessing crop (--preset grayscale "
                                 "for one channel)")
    fixed = graph.fixed_batch
    if batch_size is not None and fixed is not None and fixed != batch_size:
        log.warning("model input %r has a fixed batch of %d (shape %s): feeding batches of %d, not %s %d",
                    gi.name, fixed, tuple(gi.shape), fixed, flag, batch_size)
    return fixed if fixed is not None else batch_size


def check_preset_fits(graph: OnnxGraph, preset: str, source) -> None:
    """Before any data is read: images (not model-ready arrays) must come out of the preset with the
    model's channel count; the error names the preset that would (e.g. ``--preset grayscale``)."""
    if getattr(source, "model_ready", False):
        return
    gi = graph.inputs[0]
    dims = tuple(gi.shape)
    pre = source.preprocess
    if len(dims) == 4 and isinstance(dims[1], int) and dims[1] > 0 and dims[1] != pre.channels:
        fits = [n for n, p in PRESETS.items() if p.channels == dims[1]]
        raise DataError("the preprocessing preset cannot produce the model's input",
                        subject=f"model input {gi.name!r} of shape {dims}",
                        got=f"preset {preset!r}: {pre.channels}-channel images from {source.name}",
                        expected=f"{dims[1]}-channel images",
                        hint=(f"pass --preset {fits[0]}" if fits else
                              "feed a model-ready float array of the input's shape (.npy/.npz/.h5)"))


def data_inputs(graph: OnnxGraph) -> tuple[str, ...] | None:
    """The input names the data must provide by name (``open_source(inputs=...)``): a model with several
    inputs takes one array per input name; None for a model with one input (any source feeds it)."""
    return tuple(gi.name for gi in graph.inputs) if len(graph.inputs) > 1 else None


def check_input_shape(graph: OnnxGraph, images, source_name: str,
                      hint: str = "pick the model's preprocessing preset (--preset) or data of the right size") -> None:
    """A batch (an array, or :class:`Inputs` for several inputs) has the shape of every model input it
    feeds; the error names the input and both shapes."""
    fed = feeds([gi.name for gi in graph.inputs], images)
    for gi in graph.inputs:
        want, got = gi.shape, fed[gi.name].shape
        ok = len(want) == len(got) and all(not isinstance(w, int) or w in (0, g) for w, g in zip(want[1:], got[1:]))
        if not ok:
            raise DataError("input shape mismatch", subject=f"model input {gi.name!r} vs data {source_name}",
                            got=f"batches of shape {tuple(got)}", expected=f"{tuple(want)}",
                            hint=hint)
