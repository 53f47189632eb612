"""Image sources: where calibration / evaluation images come from.

``open_source(spec, preprocess=...)`` turns a ``--data`` value into an :class:`ImageSource`:

* ``imagenet_sample`` - the 20 labelled ImageNet JPEGs shipped in foolbox's data folder;
* ``imagenet_val`` - an ImageNet validation directory (``--data-dir`` or ``$IMAGENET_VAL_DIR``),
  either WNID class folders or the flat official layout with a ground-truth file;
* a directory - ImageFolder (WNID folders give standard labels, other names sorted folder
  indices) or a flat folder of images (unlabelled, or labelled by a ground-truth file);
* ``.h5`` / ``.hdf5`` / ``.npy`` / ``.npz`` arrays of uint8 pixels or model-ready float NCHW.

Every source iterates deterministically in sorted order, decodes in a thread pool with a
bounded prefetch, and skips (or rejects) corrupt images.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import ConfigError, DataError
from .arrays import ARRAY_SUFFIXES, ArraySource, NamedArraySource
from .base import (
    _DECODE_ERRORS,
    BAD_IMAGE_POLICIES,
    Batch,
    ImageSource,
    _BadItem,
    _check_int,
    _check_policy,
    _check_preprocess,
    default_workers,
)
from .classes import NUM_CLASSES, imagenet_classes, is_wnid, wnid_to_index
from .groundtruth import DEVKIT_DIR, DEVKIT_FILE, GROUND_TRUTH_FILES, KAGGLE_FILE, find_ground_truth, read_ground_truth
from .preprocess import Preprocess

__all__ = [
    "Batch", "ImageSource", "SampleSource", "FolderSource", "FlatValSource", "ArraySource",
    "SOURCE_NAMES", "IMAGENET_VAL_ENV", "IMAGE_EXTENSIONS", "ARRAY_SUFFIXES", "BAD_IMAGE_POLICIES",
    "open_source", "imagenet_classes", "default_workers",
]

log = logging.getLogger(__name__)

SOURCE_NAMES = ("imagenet_val", "imagenet_sample")
IMAGENET_VAL_ENV = "IMAGENET_VAL_DIR"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FOOLBOX_HINT = "pip install --no-deps foolbox==3.3.4"
PATH_KINDS = ("a directory of images (ImageFolder class folders, or flat)", ".h5/.hdf5", ".npy", ".npz")
VAL_LAYOUTS = (
    "(a) ImageFolder with WordNet-id class folders (DIR/n01440764/*.JPEG ...), or "
    "(b) the flat official layout (DIR/ILSVRC2012_val_00000001.JPEG ...) with a ground-truth file in DIR: "
    f"val.txt or val_labels.txt ('FILENAME LABEL_INDEX' or 'FILENAME WNID'), {KAGGLE_FILE} (Kaggle), or "
    f"{DEVKIT_FILE} plus {DEVKIT_DIR}/data/meta.mat (devkit)")


# ---------------------------------------------------------------------------------------
# image-file sources
# ---------------------------------------------------------------------------------------
def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(top: str) -> list[str]:
    """Image files under ``top`` (recursive, following links once, skipping hidden entries)."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:        # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image_file(f))
    return found


@dataclass(frozen=True)
class _DirScan:
    root: str
    root_files: tuple[str, ...]            # images directly in root
    class_files: dict[str, list[str]]      # non-hidden subdirectory name -> images under it

    @property
    def classes(self) -> list[str]:
        """Sorted names of the subdirectories that hold images."""
        return sorted(c for c, files in self.class_files.items() if files)


def _scan_dir(root: str) -> _DirScan:
    try:
        entries = list(os.scandir(root))
    except OSError as err:
        raise DataError("cannot list the image directory", subject=root, got=str(err)) from err
    root_files, class_files = [], {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_files[entry.name] = _walk_images(entry.path)
        elif entry.is_file() and _is_image_file(entry.name):
            root_files.append(entry.path)
    return _DirScan(root=root, root_files=tuple(sorted(root_files)), class_files=class_files)


class _FileSource(ImageSource):
    """Common part of the sources made of image files (ids are the file paths)."""

    def _hash_items(self, h: Any) -> None:
        for path in self._ids:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            h.update(f"{path}\0{size}\n".encode())

    def _fetch(self, handle: Any, positions: range) -> list[Any]:
        return [self._ids[p] for p in positions]

    def _decode(self, position: int, payload: Any, pixels: bool = False) -> tuple[np.ndarray, str | None]:
        try:
            with Image.open(payload) as img:
                img.load()
                mode = img.mode
                arr = self.preprocess.pixels(img) if pixels else self.preprocess.apply(img)
        except _DECODE_ERRORS as err:
            raise _BadItem(f"{type(err).__name__}: {err}") from err
        return arr, (None if mode == "RGB" else mode)


def _foolbox_data_dir() -> Path:
    try:
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError) as err:
        raise DataError("the imagenet_sample images are not available", subject="foolbox", got=str(err),
                        hint=FOOLBOX_HINT) from err
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the imagenet_sample images are not available", subject="foolbox",
                        got="foolbox is not installed", expected="foolbox's data folder with 20 ImageNet JPEGs",
                        hint=FOOLBOX_HINT)
    return Path(list(spec.submodule_search_locations)[0]) / "data"


_SAMPLE_RE = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")


class SampleSource(_FileSource):
    """The 20 labelled ImageNet JPEGs of foolbox (``imagenet_{NN}_{label}.jpg``)."""

    kind = "imagenet_sample"

    def __init__(self, preprocess: Preprocess, *, num_images: int | None = None, seed: int = 0,
                 on_bad_image: str = "skip") -> None:
        data = _foolbox_data_dir()
        try:
            names = sorted(n for n in os.listdir(data) if _SAMPLE_RE.match(n))
        except OSError as err:
            raise DataError("the imagenet_sample images are not available", subject=str(data), got=str(err),
                            hint=FOOLBOX_HINT) from err
        if not names:
            raise DataError("the imagenet_sample images are not available", subject=str(data),
                            got="no imagenet_*.jpg files", hint=FOOLBOX_HINT)
        ids = [str(data / n) for n in names]
        labels = np.array([int(_SAMPLE_RE.match(n).group(2)) for n in names], dtype=np.int64)
        super().__init__(name="imagenet_sample", preprocess=preprocess, ids=ids, labels=labels,
                         label_space="imagenet1k", num_images=num_images, seed=seed, on_bad_image=on_bad_image)


def _read_labels_csv(root: str) -> dict[str, int] | None:
    """``labels.csv`` (path,wnid,index,name) in ``root``: {absolute path: standard index}."""
    path = os.path.join(root, "labels.csv")
    if not os.path.isfile(path):
        return None
    wnids = wnid_to_index()
    table: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "path" not in (reader.fieldnames or []):
                log.warning("ignoring %s: no 'path' column (expected path,wnid,index,name)", path)
                return None
            for row in reader:
                rel = (row.get("path") or "").strip()
                wnid = (row.get("wnid") or "").strip()
                if wnid in wnids:
                    label = wnids[wnid]
                elif (row.get("index") or "").strip().isdigit() and int(row["index"]) < NUM_CLASSES:
                    label = int(row["index"])
                else:
                    continue
                table[os.path.normpath(os.path.join(root, rel))] = label
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return None
    return table


class FolderSource(_FileSource):
    """ImageFolder (one folder per class) or a flat folder of images.

    Class folders named by ImageNet-1k WNIDs give the standard index (whatever subset of
    classes is present); other names give sorted folder indices (torchvision ImageFolder),
    unless a ``labels.csv`` (path,wnid,index,name) labels the files. A flat folder without
    class folders is unlabelled (or labelled by ``labels.csv``). ``imagenet=True`` requires
    WNID folders and names the source ``imagenet_val:ROOT``.
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess, *, num_images: int | None = None,
                 seed: int = 0, on_bad_image: str = "skip", imagenet: bool = False,
                 scan: _DirScan | None = None) -> None:
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            raise DataError("image directory not found", subject=root)
        scan = scan if scan is not None else _scan_dir(root)
        name = f"imagenet_val:{root}" if imagenet else f"folder:{root}"
        if imagenet:
            self.kind = "imagenet_val"
        classes = scan.classes
        if classes:
            ids, labels, space = self._class_layout(root, scan, classes, imagenet)
        elif scan.root_files and imagenet:
            raise DataError("not an ImageNet validation directory", subject=root,
                            got="images without WNID class folders", expected=VAL_LAYOUTS,
                            hint="for the flat layout with a ground-truth file use FlatValSource")
        elif scan.root_files:
            ids, labels, space = sorted(scan.root_files), None, None
            table = _read_labels_csv(root)
            if table:
                labels = np.array([table.get(os.path.normpath(p), -1) for p in ids], dtype=np.int64)
                space = "imagenet1k"
                _warn_unknown(name, labels)
            else:
                log.info("%s: a flat folder without class folders: images are unlabelled", name)
        else:
            raise DataError("no images found", subject=root,
                            expected=f"image files ({', '.join(IMAGE_EXTENSIONS)}) in class folders or in the directory")
        self.classes = classes
        super().__init__(name=name, preprocess=preprocess, ids=ids, labels=labels, label_space=space,
                         num_images=num_images, seed=seed, on_bad_image=on_bad_image)

    @staticmethod
    def _class_layout(root: str, scan: _DirScan, classes: list[str], imagenet: bool):
        name = f"imagenet_val:{root}" if imagenet else f"folder:{root}"
        empty = sorted(c for c, files in scan.class_files.items() if not files)
        if empty:
            log.warning("%s: ignoring %d folder(s) without images: %s", name, len(empty), ", ".join(empty[:5]))
        if scan.root_files:
            log.warning("%s: ignoring %d image(s) directly in the root (outside class folders)", name,
                        len(scan.root_files))
        pairs = sorted((p, c) for c in classes for p in scan.class_files[c])
        ids = [p for p, _ in pairs]
        wnids = wnid_to_index()
        if all(c in wnids for c in classes):
            log.info("%s: %d WNID class folder(s): labels are the standard ImageNet-1k index", name, len(classes))
            return ids, np.array([wnids[c] for _, c in pairs], dtype=np.int64), "imagenet1k"
        foreign = [c for c in classes if c not in wnids]
        if imagenet:
            raise DataError("not an ImageNet validation directory", subject=root,
                            got=f"class folder(s) that are not ImageNet-1k WNIDs: {', '.join(foreign[:5])}",
                            expected=VAL_LAYOUTS)
        table = _read_labels_csv(root)
        if table:
            labels = np.array([table.get(os.path.normpath(p), -1) for p in ids], dtype=np.int64)
            log.info("%s: labels taken from %s", name, os.path.join(root, "labels.csv"))
            _warn_unknown(name, labels)
            return ids, labels, "imagenet1k"
        if all(is_wnid(c) for c in classes):
            log.warning("%s: WNID folders %s are not ImageNet-1k classes", name, ", ".join(foreign[:5]))
        index = {c: i for i, c in enumerate(classes)}
        log.info("%s: class folders are not all ImageNet-1k WNIDs (e.g. %r): labels are folder indices in "
                 "sorted order (%s), not ImageNet indices", name, foreign[0],
                 ", ".join(f"{c}={i}" for c, i in list(index.items())[:5]) + (", ..." if len(index) > 5 else ""))
        return ids, np.array([index[c] for _, c in pairs], dtype=np.int64), "folder"


def _warn_unknown(name: str, labels: np.ndarray) -> None:
    unknown = int((labels < 0).sum())
    if unknown:
        log.warning("%s: %d of %d image(s) have no ground-truth label (label -1)", name, unknown, len(labels))


class FlatValSource(_FileSource):
    """The flat official validation layout (``ILSVRC2012_val_*.JPEG``) plus a ground-truth file."""

    kind = "imagenet_val"

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess, *, ground_truth: str | os.PathLike | None = None,
                 num_images: int | None = None, seed: int = 0, on_bad_image: str = "skip",
                 scan: _DirScan | None = None) -> None:
        root = os.path.abspath(os.fspath(root))
        name = f"imagenet_val:{root}"
        if not os.path.isdir(root):
            raise DataError("image directory not found", subject=root)
        gt = Path(ground_truth) if ground_truth is not None else find_ground_truth(root)
        if gt is None:
            raise DataError("no ground-truth file for the flat validation layout", subject=root,
                            expected=f"one of {', '.join(GROUND_TRUTH_FILES)} in the directory", hint=VAL_LAYOUTS)
        scan = scan if scan is not None else _scan_dir(root)
        ids = sorted(scan.root_files)
        if not ids:
            raise DataError("no images found", subject=root, expected="ILSVRC2012_val_*.JPEG files in the directory")
        table = read_ground_truth(gt)
        labels = np.array([table.get(os.path.splitext(os.path.basename(p))[0], -1) for p in ids], dtype=np.int64)
        if (labels < 0).all():
            raise DataError("the ground-truth file names none of the images", subject=str(gt),
                            got=f"{len(table)} entries such as {next(iter(table))!r}; images such as "
                                f"{os.path.basename(ids[0])!r}",
                            expected="entries keyed by the image file names")
        _warn_unknown(name, labels)
        self.ground_truth = str(gt)
        log.info("%s: %d image(s) labelled by %s", name, len(ids), gt)
        super().__init__(name=name, preprocess=preprocess, ids=ids, labels=labels, label_space="imagenet1k",
                         num_images=num_images, seed=seed, on_bad_image=on_bad_image)


# ---------------------------------------------------------------------------------------
# open_source
# ---------------------------------------------------------------------------------------
def _val_dir(data_dir: str | os.PathLike | None) -> str:
    if data_dir is not None and os.fspath(data_dir) != "":
        root, subject = os.path.expanduser(os.fspath(data_dir)), "--data-dir"
    else:
        env = os.environ.get(IMAGENET_VAL_ENV, "")
        if not env:
            raise DataError("the ImageNet validation directory is not set", subject="imagenet_val",
                            got=f"neither --data-dir nor ${IMAGENET_VAL_ENV}",
                            hint=f"pass --data-dir DIR or run `export {IMAGENET_VAL_ENV}=DIR`; accepted layouts: "
                                 f"{VAL_LAYOUTS}. Without ImageNet, use --data imagenet_sample")
        root, subject = os.path.expanduser(env), IMAGENET_VAL_ENV
    if not os.path.isdir(root):
        raise DataError("the ImageNet validation directory does not exist or is not a directory",
                        subject=f"{subject} {root}",
                        expected="an existing directory", hint=f"accepted layouts: {VAL_LAYOUTS}")
    return os.path.abspath(root)


def _open_directory(root: str, preprocess: Preprocess, *, imagenet: bool, **opts: Any) -> ImageSource:
    root = os.path.abspath(root)
    scan = _scan_dir(root)
    if scan.classes:
        return FolderSource(root, preprocess, imagenet=imagenet, scan=scan, **opts)
    if scan.root_files:
        if find_ground_truth(root) is not None:
            return FlatValSource(root, preprocess, scan=scan, **opts)
        if imagenet:
            raise DataError("no ground-truth file for the flat validation layout", subject=root,
                            got=f"{len(scan.root_files)} image(s) and none of {', '.join(GROUND_TRUTH_FILES)}",
                            expected=VAL_LAYOUTS)
        return FolderSource(root, preprocess, scan=scan, **opts)
    raise DataError("no images found", subject=root,
                    expected=f"image files ({', '.join(IMAGE_EXTENSIONS)}) in class folders or in the directory"
                             + (f"; {VAL_LAYOUTS}" if imagenet else ""))


def _looks_like_path(spec: str) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return (any(s in spec for s in seps) or spec.startswith((".", "~"))
            or spec.lower().endswith(ARRAY_SUFFIXES + IMAGE_EXTENSIONS))


def open_source(spec: str, *, preprocess: Preprocess, data_dir: str | None = None, num_images: int | None = None,
                seed: int = 0, h5_images: str = "images", h5_labels: str = "labels",
                on_bad_image: str = "skip", layout: str | None = None,
                inputs: tuple[str, ...] | None = None) -> ImageSource:
    """Open the image source named by ``spec`` (see the module docstring).

    ``inputs``: the model's input names when it has several; the data must then be a ``.npz``/``.h5``
    with one array per name (:class:`NamedArraySource`).

    ``data_dir`` is only for ``imagenet_val`` and ``layout`` only for arrays: given elsewhere they
    are refused, never silently ignored."""
    _check_preprocess(preprocess)
    if data_dir is not None and spec != "imagenet_val":
        raise ConfigError("--data-dir is only used with --data imagenet_val", subject=f"--data-dir {data_dir}",
                          got=f"--data {spec}", hint="pass --data imagenet_val --data-dir DIR, or give the directory "
                                                     "itself as --data DIR")
    _check_policy(on_bad_image)
    if num_images is not None:
        _check_int(num_images, "--num-images", minimum=1, what="number of images")
    _check_int(seed, "--seed", minimum=0, what="seed")
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError("invalid data source", subject="--data", got=repr(spec),
                          expected=f"one of {', '.join(SOURCE_NAMES)} or a path")
    spec = os.fspath(spec)
    opts: dict[str, Any] = dict(num_images=num_images, seed=seed, on_bad_image=on_bad_image)
    if layout is not None and not (os.path.isfile(os.path.expanduser(spec))
                                   and spec.lower().endswith(ARRAY_SUFFIXES)):
        raise ConfigError("--layout is only used with array data", subject=f"--layout {layout}", got=f"--data {spec}",
                          expected="a .npy/.npz/.h5 file")
    if inputs is not None and len(inputs) > 1:
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise DataError("a model with several inputs needs named arrays", subject=f"--data {spec}",
                            got="not a file" if spec not in SOURCE_NAMES else "an image data set (one input only)",
                            expected=".npz or .h5 with one array per model input: " + ", ".join(map(repr, inputs)),
                            hint="np.savez(FILE, **{name: array for each model input}, labels=...)")
        return NamedArraySource(path, preprocess, inputs=tuple(inputs), labels=h5_labels, **opts)
    if spec == "imagenet_sample":
        return SampleSource(preprocess, **opts)
    if spec == "imagenet_val":
        return _open_directory(_val_dir(data_dir), preprocess, imagenet=True, **opts)
    path = os.path.expanduser(spec) if spec else spec
    if path and os.path.isdir(path):
        return _open_directory(path, preprocess, imagenet=False, **opts)
    if path and os.path.isfile(path):
        if path.lower().endswith(ARRAY_SUFFIXES):
            return ArraySource(path, preprocess, images=h5_images, labels=h5_labels, layout=layout, **opts)
        raise DataError("unsupported data file", subject=os.path.abspath(path),
                        expected="one of: " + "; ".join(PATH_KINDS),
                        hint="put single images in a directory and pass the directory")
    if path and (os.path.exists(path) or _looks_like_path(spec)):
        raise DataError("data path not found", subject=os.path.abspath(path),
                        expected="an existing path: " + "; ".join(PATH_KINDS))
    raise DataError("unknown data source", subject=repr(spec),
                    expected=f"one of {', '.join(SOURCE_NAMES)} or an existing path ({'; '.join(PATH_KINDS)})",
                    hint="no file or directory of that name exists either")


def open_capped(spec: str, *, preprocess: Preprocess, limit: int | None, seed: int, data_dir: str | None = None,
                **kw) -> ImageSource:
    """All images of ``spec``, or a seeded subset of ``limit`` when there are more (no warning for small sets)."""
    src = open_source(spec, preprocess=preprocess, data_dir=data_dir, seed=seed, **kw)
    if limit is not None and len(src) > limit:
        log.info("%s holds %d images: using a seeded subset of %d", src.name, len(src), limit)
        src = open_source(spec, preprocess=preprocess, data_dir=data_dir, num_images=limit, seed=seed, **kw)
    return src
