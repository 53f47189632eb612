"""The abstract image source, its batches and the threaded, prefetching pass."""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import json
import logging
import os
import struct
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.errors import ConfigError, DataError, QuantError
from ..core.types import Inputs
from .preprocess import Preprocess

__all__ = ["Batch", "ImageSource", "BAD_IMAGE_POLICIES", "PREFETCH_BATCHES", "default_workers"]

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
PREFETCH_BATCHES = 2

# What Pillow raises on corrupt, truncated or non-image files (plugins are not uniform).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  ZeroDivisionError, Image.DecompressionBombError, QuantError)


def default_workers() -> int:
    """Decoding threads used when ``workers`` is None: ``min(16, os.cpu_count())``."""
    return max(1, min(16, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """One batch: images (N first), int64 labels (-1 unknown) or None, ids.

    ``images`` is float32 and model-ready (NCHW from images; from model-ready arrays whatever rank
    2 to 5 the model's input has), or uint8 resized/cropped RGB NCHW pixels when the pass was
    asked for ``pixels=True`` (normalise them with ``Preprocess.normalize``/``normalize_torch``)."""

    images: np.ndarray | Inputs          # Inputs: a model with several inputs, an array per input name
    labels: np.ndarray | None
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        images = self.images
        for name, arr in (images.arrays.items() if isinstance(images, Inputs) else [("Batch.images", images)]):
            if (not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.uint8)
                    or not (arr.ndim == 4 if arr.dtype == np.uint8 else 1 <= arr.ndim <= 5)
                    or (arr.ndim == 1 and not isinstance(images, Inputs))):
                raise DataError("invalid batch images", subject=name,
                                got=f"{type(arr).__name__} {getattr(arr, 'dtype', '')} "
                                    f"shape {getattr(arr, 'shape', '')}",
                                expected="a float32 numpy array of rank 2 to 5, or uint8 NCHW pixels")
        if isinstance(images, Inputs):
            if not all(a.flags.c_contiguous for a in images.arrays.values()):
                object.__setattr__(self, "images", Inputs({k: np.ascontiguousarray(a) for k, a in images.arrays.items()}))
        elif not images.flags.c_contiguous:
            object.__setattr__(self, "images", np.ascontiguousarray(images))
        n = images.shape[0]
        object.__setattr__(self, "ids", tuple(self.ids))
        if len(self.ids) != n:
            raise DataError("batch ids do not match the images", subject="Batch.ids",
                            got=f"{len(self.ids)} ids", expected=f"{n}")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
                raise DataError("invalid batch labels", subject="Batch.labels",
                                got=f"{labels.dtype} shape {labels.shape}", expected=f"int64 shape ({n},)")
            object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _BadItem(Exception):
    """Internal: one item could not be decoded (reason in args[0], cause chained)."""


# ---------------------------------------------------------------------------------------
# option checks and subsetting
# ---------------------------------------------------------------------------------------
def _check_int(value: Any, flag: str, *, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"invalid {what}", subject=flag, got=repr(value), expected=f"an integer >= {minimum}")
    return int(value)


def _check_policy(on_bad_image: Any) -> str:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError("invalid bad-image policy", subject="--on-bad-image", got=repr(on_bad_image),
                          expected=" or ".join(BAD_IMAGE_POLICIES))
    return on_bad_image


def _check_preprocess(preprocess: Any) -> Preprocess:
    if not isinstance(preprocess, Preprocess):
        raise ConfigError("invalid preprocessing", subject="preprocess", got=type(preprocess).__name__,
                          expected="a trtquant.datasets.Preprocess (e.g. PRESETS['imagenet'])")
    return preprocess


def _select(total: int, num_images: int | None, seed: int, name: str) -> np.ndarray:
    """Sorted indices of a deterministic random subset of ``range(total)``."""
    if num_images is None or num_images >= total:
        if num_images is not None and num_images > total:
            log.warning("--num-images %d is more than the %d items of %s: using all %d", num_images, total,
                        name, total)
        return np.arange(total, dtype=np.int64)
    chosen = np.random.default_rng(seed).permutation(total)[:num_images]
    return np.sort(chosen).astype(np.int64)


# ---------------------------------------------------------------------------------------
# the abstract source
# ---------------------------------------------------------------------------------------
class ImageSource(abc.ABC):
    """A deterministic, re-iterable sequence of preprocessed images.

    Attributes: ``name`` (e.g. ``folder:/data/x``), ``has_labels``, ``label_space``
    (``"imagenet1k"`` standard index, ``"folder"`` sorted folder index, ``"array"`` labels
    stored with the array, or None), ``skipped`` ((id, reason) of the last pass) and
    ``converted`` ({original mode: count} of images converted to RGB in the last pass).
    """

    kind: ClassVar[str] = "source"

    def __init__(self, *, name: str, preprocess: Preprocess, ids: Sequence[str], labels: np.ndarray | None,
                 label_space: str | None, num_images: int | None, seed: int, on_bad_image: str) -> None:
        self.preprocess = _check_preprocess(preprocess)
        self.on_bad_image = _check_policy(on_bad_image)
        if num_images is not None:
            num_images = _check_int(num_images, "--num-images", minimum=1, what="number of images")
        self.seed = _check_int(seed, "--seed", minimum=0, what="seed")
        self.name = name
        total = len(ids)
        if total == 0:
            raise DataError("no images found", subject=name)
        self._rows = _select(total, num_images, self.seed, name)   # selected indices into the full list
        self._total = total
        self._ids = tuple(ids[i] for i in self._rows)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)[self._rows]
        self._labels = labels
        self.has_labels = labels is not None
        self.label_space = label_space if labels is not None else None
        self.skipped: list[tuple[str, str]] = []
        self.converted: dict[str, int] = {}
        self._conversion_logged = False
        self._fingerprint: str | None = None

    # -- public API ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, labels={self.label_space})"

    @property
    def ids(self) -> tuple[str, ...]:
        """Ids of the selected items, in iteration order."""
        return self._ids

    @property
    def labels(self) -> np.ndarray | None:
        """int64 labels of the selected items (-1 unknown), or None (a copy)."""
        return None if self._labels is None else self._labels.copy()

    def fingerprint(self) -> str:
        """sha256 hex of the source kind, selected ids, per-item size/content and preprocessing."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            header = {"kind": self.kind, "count": len(self._ids), "preprocess": self._preprocess_key()}
            h.update(json.dumps(header, sort_keys=True).encode())
            self._hash_items(h)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def batches(self, batch_size: int, *, workers: int | None = None, progress: bool = True,
                pixels: bool = False) -> Iterator[Batch]:
        """A new deterministic pass in batches of ``batch_size`` (the last may be smaller).

        ``pixels=True``: images come as uint8 resized/cropped pixels (4x less data, and the float
        normalisation can run on the GPU: ``Preprocess.normalize_torch``); model-ready float arrays
        still come as float32.

        Items are decoded by ``workers`` threads (default ``min(16, cpu_count)``) while the
        caller consumes the current batch (up to 2 batches ahead). Batches that lost
        skipped items are smaller; a pass where every item fails raises DataError.
        """
        batch_size = _check_int(batch_size, "--batch-size", minimum=1, what="batch size")
        workers = default_workers() if workers is None else _check_int(workers, "--workers", minimum=1,
                                                                          what="number of decoding threads")
        return self._pass(batch_size, workers, bool(progress), bool(pixels))

    # -- hooks for subclasses -----------------------------------------------------------
    def _preprocess_key(self) -> dict | None:
        return self.preprocess.as_dict()

    @abc.abstractmethod
    def _hash_items(self, h: Any) -> None:
        """Feed the selected items' identity (ids and sizes or contents) into ``h``."""

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        """Resources held during one pass (e.g. an open HDF5 dataset), given to ``_fetch``."""
        yield None

    @abc.abstractmethod
    def _fetch(self, handle: Any, positions: range) -> list[Any]:
        """Main thread: per-item payloads for the selected ``positions`` (cheap: paths, rows)."""

    @abc.abstractmethod
    def _decode(self, position: int, payload: Any, pixels: bool = False) -> tuple[np.ndarray, str | None]:
        """Worker thread: ``(float32 CHW array (uint8 pixels if ``pixels``), original mode if converted else None)``.

        Raises :class:`_BadItem` for a corrupt item."""

    # -- the pass -----------------------------------------------------------------------
    def _pass(self, batch_size: int, workers: int, progress: bool, pixels: bool = False) -> Iterator[Batch]:
        n = len(self._ids)
        self.skipped = []
        self.converted = {}
        chunks = iter([range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)])
        pending: collections.deque[tuple[range, list[Future]]] = collections.deque()
        n_ok = 0
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(self._opened())
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers,
                                                          thread_name_prefix="trtquant-decode"))
            bar = stack.enter_context(tqdm(total=n, unit="img", file=sys.stderr, disable=not progress,
                                           desc=self.name, dynamic_ncols=True))

            def submit_next() -> None:
                chunk = next(chunks, None)
                if chunk is not None:
                    payloads = self._fetch(handle, chunk)
                    pending.append((chunk, [pool.submit(self._decode, pos, p, pixels) for pos, p in zip(chunk, payloads)]))

            try:
                for _ in range(1 + PREFETCH_BATCHES):
                    submit_next()
                while pending:
                    chunk, futures = pending.popleft()
                    arrays: list[np.ndarray] = []
                    kept: list[int] = []
                    for pos, fut in zip(chunk, futures):
                        try:
                            arr, mode = fut.result()
                        except _BadItem as bad:
                            self._bad_item(self._ids[pos], bad)
                            continue
                        arrays.append(arr)
                        kept.append(pos)
                        if mode is not None:
                            self.converted[mode] = self.converted.get(mode, 0) + 1
                    submit_next()
                    bar.update(len(chunk))
                    if not kept:
                        continue
                    n_ok += len(kept)
                    labels = None if self._labels is None else self._labels[kept]
                    stacked = Inputs.stack(arrays) if isinstance(arrays[0], dict) else np.stack(arrays)
                    yield Batch(images=stacked, labels=labels, ids=tuple(self._ids[p] for p in kept))
            finally:
                for _, futures in pending:
                    for fut in futures:
                        fut.cancel()
        self._log_pass_summary(n, n_ok)

    def _bad_item(self, item_id: str, bad: _BadItem) -> None:
        reason = str(bad.args[0]) if bad.args else "unreadable"
        if self.on_bad_image == "error":
            raise DataError("unreadable image", subject=item_id, got=reason,
                            hint="pass --on-bad-image skip to skip unreadable images") from (bad.__cause__ or bad)
        log.warning("skipping unreadable image %s: %s", item_id, reason)
        self.skipped.append((item_id, reason))

    def _log_pass_summary(self, n: int, n_ok: int) -> None:
        if self.converted and not self._conversion_logged:
            self._conversion_logged = True
            detail = ", ".join(f"{mode}: {count}" for mode, count in sorted(self.converted.items()))
            log.info("%s: converted %d image(s) to RGB (%s)", self.name, sum(self.converted.values()), detail)
        if self.skipped:
            log.warning("%s: skipped %d of %d image(s) as unreadable", self.name, len(self.skipped), n)
        if n_ok == 0:
            first = "; ".join(f"{i}: {r}" for i, r in self.skipped[:3])
            raise DataError("no readable images", subject=self.name, got=f"all {n} item(s) failed to decode ({first})",
                            hint="check that the files are complete, valid images")
