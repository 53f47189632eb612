"""Calibration / evaluation images: preprocessing and image sources.

>>> from trtquant.datasets import open_source, PRESETS
>>> src = open_source("imagenet_sample", preprocess=PRESETS["imagenet"])
>>> for batch in src.batches(8, progress=False):
...     batch.images.shape  # (8, 3, 224, 224) float32, labels int64
"""

from .classes import imagenet_classes, wnid_to_index
from .groundtruth import GROUND_TRUTH_FILES, find_ground_truth, read_ground_truth
from .preprocess import PRESETS, Preprocess
from .sources import (
    ARRAY_SUFFIXES,
    BAD_IMAGE_POLICIES,
    IMAGE_EXTENSIONS,
    IMAGENET_VAL_ENV,
    SOURCE_NAMES,
    ArraySource,
    Batch,
    FlatValSource,
    FolderSource,
    ImageSource,
    SampleSource,
    default_workers,
    open_capped,
    open_source,
)

__all__ = [
    "Preprocess", "PRESETS",
    "Batch", "ImageSource", "SampleSource", "FolderSource", "FlatValSource", "ArraySource",
    "open_source", "open_capped", "imagenet_classes", "wnid_to_index", "default_workers",
    "SOURCE_NAMES", "IMAGENET_VAL_ENV", "IMAGE_EXTENSIONS", "ARRAY_SUFFIXES", "BAD_IMAGE_POLICIES",
    "GROUND_TRUTH_FILES", "find_ground_truth", "read_ground_truth",
]
