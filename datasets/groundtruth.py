"""Ground-truth files of the flat ImageNet validation layout.

All readers return ``{image stem: standard ImageNet-1k index}`` where the stem is the file
name without directory and extension (``ILSVRC2012_val_00000001``).

Accepted files (looked up in the image directory, the devkit also under
``ILSVRC2012_devkit_t12/data/``):

* ``val.txt`` / ``val_labels.txt`` (Caffe style): ``FILENAME LABEL_INDEX`` or ``FILENAME WNID``;
* ``LOC_val_solution.csv`` (Kaggle): ``ImageId,PredictionString``, the prediction string
  starting with the WNID;
* ``ILSVRC2012_validation_ground_truth.txt`` (devkit): one ILSVRC2012_ID per line, line *i*
  for ``ILSVRC2012_val_{i:08d}``, mapped to WNIDs with the devkit's ``meta.mat``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .classes import NUM_CLASSES, wnid_to_index

__all__ = ["GROUND_TRUTH_FILES", "DEVKIT_DIR", "find_ground_truth", "read_ground_truth"]

log = logging.getLogger(__name__)

DEVKIT_DIR = "ILSVRC2012_devkit_t12"
CAFFE_FILES = ("val.txt", "val_labels.txt")
KAGGLE_FILE = "LOC_val_solution.csv"
DEVKIT_FILE = "ILSVRC2012_validation_ground_truth.txt"
GROUND_TRUTH_FILES = (*CAFFE_FILES, KAGGLE_FILE, DEVKIT_FILE)

_DEVKIT_NOT_STANDARD = (
    "the devkit's ILSVRC2012_IDs are NOT the standard 0..999 class index (ID 1 is n02119789 "
    "'kit fox', index 0 is n01440764 'tench'); their mapping to WordNet ids lives in meta.mat")


def find_ground_truth(root: str | os.PathLike) -> Path | None:
    """The first ground-truth file found for the flat layout in ``root``, else None."""
    root = Path(root)
    candidates = [root / name for name in GROUND_TRUTH_FILES] + [root / DEVKIT_DIR / "data" / DEVKIT_FILE]
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def read_ground_truth(path: str | os.PathLike, *, meta_mat: str | os.PathLike | None = None) -> dict[str, int]:
    """Parse one ground-truth file (kind chosen by its name) into ``{stem: index}``."""
    path = Path(path)
    if path.name == KAGGLE_FILE or path.suffix.lower() == ".csv":
        return _read_kaggle(path)
    if path.name == DEVKIT_FILE:
        return _read_devkit(path, meta_mat)
    return _read_caffe(path)


def _stem(name: str) -> str:
    base = os.path.basename(name.strip().replace("\\", "/"))
    stem, _ = os.path.splitext(base)
    return stem


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError("cannot read the ground-truth file", subject=str(path), got=str(err)) from err


def _add(table: dict[str, int], stem: str, label: int, where: str) -> None:
    old = table.get(stem)
    if old is not None and old != label:
        raise DataError("conflicting labels in the ground-truth file", subject=where,
                        got=f"{stem} labelled {old} and {label}")
    table[stem] = label


def _read_caffe(path: Path) -> dict[str, int]:
    wnids = wnid_to_index()
    table: dict[str, int] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise DataError("malformed line in the ground-truth file", subject=where, got=repr(line),
                            expected="'FILENAME LABEL_INDEX' or 'FILENAME WNID'")
        name, token = parts
        if token in wnids:
            label = wnids[token]
        else:
            try:
                label = int(token)
            except ValueError as err:
                raise DataError("unknown label in the ground-truth file", subject=where, got=repr(token),
                                expected=f"a class index 0..{NUM_CLASSES - 1} or an ImageNet-1k WNID") from err
            if not 0 <= label < NUM_CLASSES:
                raise DataError("class index out of range in the ground-truth file", subject=where,
                                got=str(label), expected=f"0..{NUM_CLASSES - 1}")
        _add(table, _stem(name), label, where)
    if not table:
        raise DataError("empty ground-truth file", subject=str(path),
                        expected="lines 'FILENAME LABEL_INDEX' or 'FILENAME WNID'")
    return table


def _read_kaggle(path: Path) -> dict[str, int]:
    wnids = wnid_to_index()
    table: dict[str, int] = {}
    text = _read_text(path)
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    if "ImageId" not in fields or "PredictionString" not in fields:
        raise DataError("unexpected columns in the Kaggle ground-truth file", subject=str(path),
                        got=", ".join(fields) or "no header", expected="ImageId,PredictionString")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        image_id = (row.get("ImageId") or "").strip()
        pred = (row.get("PredictionString") or "").split()
        if not image_id or not pred:
            raise DataError("malformed row in the Kaggle ground-truth file", subject=where, got=repr(row),
                            expected="ImageId,PredictionString with the WNID first")
        if pred[0] not in wnids:
            raise DataError("unknown WNID in the Kaggle ground-truth file", subject=where, got=repr(pred[0]),
                            expected="one of the 1000 ImageNet-1k WNIDs")
        _add(table, _stem(image_id), wnids[pred[0]], where)
    if not table:
        raise DataError("empty ground-truth file", subject=str(path), expected="rows ImageId,PredictionString")
    return table


def _find_meta_mat(gt_path: Path) -> Path | None:
    cands = [gt_path.parent / "meta.mat", gt_path.parent / DEVKIT_DIR / "data" / "meta.mat"]
    return next((c for c in cands if c.is_file()), None)


def _devkit_id_to_index(meta_mat: Path) -> dict[int, int]:
    import scipy.io  # local: scipy is slow to import and only the devkit layout needs it

    try:
        mat = scipy.io.loadmat(str(meta_mat), squeeze_me=True)
        synsets = mat["synsets"]
        ids = np.atleast_1d(synsets["ILSVRC2012_ID"])
        names = np.atleast_1d(synsets["WNID"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError) as err:
        raise DataError("cannot read the devkit meta.mat", subject=str(meta_mat), got=f"{type(err).__name__}: {err}",
                        expected="ILSVRC2012 devkit meta.mat with a 'synsets' struct (ILSVRC2012_ID, WNID)") from err
    wnids = wnid_to_index()
    mapping: dict[int, int] = {}
    for ilsvrc_id, wnid in zip(ids, names):
        wnid = str(wnid).strip()
        if wnid in wnids:
            mapping[int(ilsvrc_id)] = wnids[wnid]
    if len(mapping) != NUM_CLASSES:
        raise DataError("the devkit meta.mat does not describe the 1000 ImageNet-1k classes", subject=str(meta_mat),
                        got=f"{len(mapping)} known WNIDs", expected=f"{NUM_CLASSES}")
    return mapping


def _read_devkit(path: Path, meta_mat: str | os.PathLike | None) -> dict[str, int]:
    meta = Path(meta_mat) if meta_mat is not None else _find_meta_mat(path)
    if meta is None or not meta.is_file():
        raise DataError("devkit ground truth found without its meta.mat", subject=str(path),
                        got=f"no meta.mat next to it (looked for {path.parent / 'meta.mat'})",
                        expected=f"{DEVKIT_DIR}/data/meta.mat",
                        hint=_DEVKIT_NOT_STANDARD + "; extract the complete ILSVRC2012 devkit "
                             f"({DEVKIT_DIR}/data/meta.mat) or provide a Caffe val.txt / Kaggle {KAGGLE_FILE}")
    id_to_index = _devkit_id_to_index(meta)
    table: dict[str, int] = {}
    lineno = 0
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        token = line.strip()
        if not token:
            continue
        where = f"{path}:{lineno}"
        try:
            ilsvrc_id = int(token)
        except ValueError as err:
            raise DataError("malformed line in the devkit ground truth", subject=where, got=repr(line),
                            expected="one ILSVRC2012_ID (1..1000) per line") from err
        if ilsvrc_id not in id_to_index:
            raise DataError("unknown ILSVRC2012_ID in the devkit ground truth", subject=where, got=str(ilsvrc_id),
                            expected="1..1000")
        table[f"ILSVRC2012_val_{lineno:08d}"] = id_to_index[ilsvrc_id]
    if not table:
        raise DataError("empty ground-truth file", subject=str(path), expected="one ILSVRC2012_ID per line")
    return table
