"""Images stored as arrays: HDF5 (read lazily per batch), .npy (memory-mapped), .npz."""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from typing import Any, Iterator

import numpy as np

from ..core.errors import DataError
from .base import _DECODE_ERRORS, ImageSource, _BadItem
from .preprocess import Preprocess

__all__ = ["ArraySource", "NamedArraySource", "ARRAY_SUFFIXES"]

log = logging.getLogger(__name__)

ARRAY_SUFFIXES = (".h5", ".hdf5", ".npy", ".npz")
LAYOUTS = ("NHWC", "NCHW", "NHW", "HWC", "CHW")
"""``--layout`` values: a batch of colour/greyscale images, or one image without a batch dimension."""
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ArraySource(ImageSource):
    """Images stored in ``.h5``/``.hdf5`` (rows read lazily per batch), ``.npy`` (memory-mapped)
    or ``.npz`` (keys images/labels or x/y).

    uint8 NHWC / NCHW arrays with 3 or 1 channels (or NHW) are pixels and go through
    ``Preprocess.apply_array``; float16/32/64 arrays of rank 2 to 5 are model-ready (any channel
    count or layout: the model's input shape is checked against them where the model is known)
    and only cast to float32. Ids are ``PATH:DATASET[ROW]``; ``kind`` is hdf5, npy or npz.
    """

    kind = "array"

    def __init__(self, path: str | os.PathLike, preprocess: Preprocess, *, images: str = "images",
                 labels: str | None = "labels", num_images: int | None = None, seed: int = 0,
                 on_bad_image: str = "skip", layout: str | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if layout is not None and layout not in LAYOUTS:
            raise DataError("unknown array layout", subject="--layout", got=repr(layout), expected=" | ".join(LAYOUTS))
        suffix = os.path.splitext(self.path)[1].lower()
        if suffix not in ARRAY_SUFFIXES:
            raise DataError("unsupported array file", subject=self.path, got=suffix or "no extension",
                            expected=" / ".join(ARRAY_SUFFIXES))
        if not os.path.isfile(self.path):
            raise DataError("array file not found", subject=self.path)
        self.kind = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "npy", ".npz": "npz"}[suffix]
        self._array: np.ndarray | None = None
        if self.kind == "hdf5":
            shape, dtype, label_arr, self.dataset = self._inspect_h5(images, labels)
        elif self.kind == "npy":
            shape, dtype, label_arr, self.dataset = self._inspect_npy()
        else:
            shape, dtype, label_arr, self.dataset = self._inspect_npz(images, labels)
        if layout in ("HWC", "CHW"):          # one image saved without its batch dimension
            if len(shape) != 3:
                raise DataError("array does not match --layout", subject=f"--layout {layout}",
                                got=f"{np.dtype(dtype)} {tuple(shape)}", expected="a 3-D array (one image)")
            if self.kind == "hdf5":
                raise DataError("single-image HDF5 datasets are not supported", subject=f"--layout {layout}",
                                hint="save the image with a leading batch dimension (1, H, W, C)")
            self._array = np.asarray(self._array)[None]
            shape = self._array.shape
            label_arr = None if label_arr is None else np.asarray(label_arr).reshape(-1)
        self.layout, self.model_ready = self._check_array(shape, dtype, layout)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        if label_arr is not None:
            label_arr = self._check_labels(label_arr, shape[0])
        name = f"{self.kind}:{self.path}"
        ids = [f"{self.path}:{self.dataset}[{i}]" for i in range(shape[0])]
        if self.model_ready:
            log.info("%s: float %s array %s taken as model-ready (no preprocessing)", name, self.dtype, self.shape)
            if len(self.shape) == 4 and self.shape[1] == 3 and self.shape[2:] != (preprocess.crop, preprocess.crop):
                log.warning("%s: model-ready images are %dx%d, the preprocessing crop is %d", name,
                            self.shape[2], self.shape[3], preprocess.crop)
        super().__init__(name=name, preprocess=preprocess, ids=ids, labels=label_arr,
                         label_space="array", num_images=num_images, seed=seed, on_bad_image=on_bad_image)

    # -- inspection ---------------------------------------------------------------------
    def _h5_open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise DataError("cannot open the HDF5 file", subject=self.path, got=str(err),
                            expected="a readable HDF5 file") from err

    @staticmethod
    def _h5_datasets(f) -> list[str]:
        import h5py

        found: list[str] = []
        f.visititems(lambda n, obj: found.append(f"{n} {obj.shape} {obj.dtype}")
                     if isinstance(obj, h5py.Dataset) else None)
        return found

    def _inspect_h5(self, images: str, labels: str | None):
        import h5py

        with self._h5_open() as f:
            obj = f.get(images)
            if not isinstance(obj, h5py.Dataset):
                avail = self._h5_datasets(f)
                raise DataError("image dataset not found in the HDF5 file", subject=f"{self.path}:{images}",
                                got="missing" if obj is None else "a group, not a dataset",
                                expected="one of: " + ("; ".join(avail) or "(the file holds no datasets)"),
                                hint="choose the dataset with --h5-images NAME")
            shape, dtype = obj.shape, obj.dtype
            label_arr = None
            if labels:
                lobj = f.get(labels)
                if isinstance(lobj, h5py.Dataset):
                    label_arr = lobj[()]
                else:
                    log.info("%s: no %r dataset: images are unlabelled (available: %s)", self.path, labels,
                             "; ".join(self._h5_datasets(f)))
        return shape, dtype, label_arr, images

    def _inspect_npy(self):
        try:
            with open(self.path, "rb") as f:
                magic = f.read(6)
        except OSError as err:
            raise DataError("cannot read the .npy file", subject=self.path, got=str(err)) from err
        if magic != b"\x93NUMPY":
            raise DataError("not a .npy file", subject=self.path, got="no NumPy header (\\x93NUMPY)",
                            expected="a numpy .npy array of images (np.save)")
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError("cannot read the .npy file", subject=self.path, got=str(err),
                            expected="a numpy .npy array of images") from err
        self._array = arr
        return arr.shape, arr.dtype, None, "images"

    def _inspect_npz(self, images: str, labels: str | None):
        try:
            with np.load(self.path, allow_pickle=False) as z:
                keys = list(z.files)
                img_key = next((k for k in (images, "images", "x") if k in keys), None)
                if img_key is None:
                    raise DataError("image array not found in the .npz file", subject=f"{self.path}:{images}",
                                    got="keys: " + (", ".join(keys) or "none"), expected="'images' (or 'x')",
                                    hint="save the images under the key 'images' (labels under 'labels')")
                lbl_key = next((k for k in (labels, "labels", "y") if k and k in keys), None)
                self._array = z[img_key]
                label_arr = z[lbl_key] if lbl_key else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise DataError("cannot read the .npz file", subject=self.path, got=str(err),
                            expected="a numpy .npz archive") from err
        if label_arr is None:
            log.info("%s: no labels/y array (keys: %s): images are unlabelled", self.path, ", ".join(keys))
        return self._array.shape, self._array.dtype, label_arr, img_key

    def _check_array(self, shape: tuple, dtype: np.dtype, layout: str | None = None) -> tuple[str, bool]:
        where = f"{self.path}:{self.dataset}"
        dtype = np.dtype(dtype)
        if dtype == np.uint8 and layout is not None:
            want = {"NHWC": 4, "NCHW": 4, "NHW": 3, "HWC": 4, "CHW": 4}[layout]
            chans = {"NHWC": -1, "HWC": -1, "NCHW": 1, "CHW": 1}.get(layout)
            if len(shape) != want or (chans is not None and shape[chans] not in (1, 3)):
                raise DataError("array does not match --layout", subject=f"--layout {layout}", got=f"uint8 {tuple(shape)}",
                                expected=f"{layout} with 3 or 1 channels" if chans is not None else "a 3-D array")
            if shape[0] == 0 or not all(s > 0 for s in shape[1:]):
                raise DataError("image array has an empty dimension", subject=where, got=str(shape))
            return {"NHWC": "HWC", "HWC": "HWC", "NCHW": "CHW", "CHW": "CHW", "NHW": "HW"}[layout], False
        if dtype == np.uint8:
            n = shape[0] if shape else 0
            if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] in (1, 3):
                raise DataError("ambiguous image array layout", subject=where, got=f"uint8 {tuple(shape)}",
                                expected="NHWC or NCHW, not both possible",
                                hint=f"it would be read as {n} NHWC images of {shape[1]}x{shape[2]}; pass --layout "
                                     "NHWC or --layout NCHW")
            if len(shape) == 3 and (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4)):
                one = (f"one {shape[0]}x{shape[1]} image with {shape[2]} channels (--layout HWC)" if shape[-1] in (1, 3, 4)
                       else f"one {shape[1]}x{shape[2]} image with {shape[0]} channels (--layout CHW)")
                raise DataError("ambiguous image array layout", subject=where, got=f"uint8 {tuple(shape)}",
                                expected=f"NHW greyscale images or {one}",
                                hint=f"it would be read as {n} greyscale images of {shape[1]}x{shape[2]} pixels (NHW); "
                                     "pass --layout NHW to confirm that, --layout HWC/CHW for one image, or save a "
                                     "4-D array (N, H, W, 3)")
            if len(shape) == 4 and shape[-1] in (1, 3):
                layout = "HWC"
            elif len(shape) == 4 and shape[1] in (1, 3):
                layout = "CHW"
            elif len(shape) == 3:
                layout = "HW"
            else:
                raise DataError("image array has the wrong shape", subject=where, got=f"uint8 {shape}",
                                expected="uint8 NHWC or NCHW with 3 or 1 channels (or NHW greyscale)")
            ok = all(s > 0 for s in shape[1:])
        elif any(dtype == d for d in _FLOAT_DTYPES):
            if layout not in (None, "NCHW"):
                raise DataError("float arrays are model-ready: fed in the model's own layout", subject=f"--layout {layout}", got=f"{dtype} {shape}",
                                expected="--layout NCHW (or no --layout), or uint8 pixels for other layouts")
            if not 2 <= len(shape) <= 5:
                raise DataError("model-ready array has the wrong rank", subject=where, got=f"{dtype} {shape}",
                                expected="float (N, ...) of rank 2 to 5 shaped like the model's input, already "
                                         "preprocessed (or uint8 pixels)")
            layout, ok = "model", all(s > 0 for s in shape[1:])
        else:
            raise DataError("image array has an unsupported dtype", subject=where, got=f"{dtype} {shape}",
                            expected="uint8 pixels (NHWC/NCHW) or float16/32/64 model-ready (N, ...) shaped like the model input")
        if not ok:
            raise DataError("image array has an empty image dimension", subject=where, got=str(shape))
        if shape[0] == 0:
            raise DataError("no images found", subject=where, got="0 rows")
        return layout, dtype != np.uint8

    def _check_labels(self, labels: Any, n: int) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.shape[0] != n:
            raise DataError("labels do not match the images", subject=self.path, got=f"labels shape {arr.shape}",
                            expected=f"({n},) one label per image")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise DataError("labels are not integers", subject=self.path, got=str(arr.dtype))
        elif not np.issubdtype(arr.dtype, np.integer):
            raise DataError("labels are not integers", subject=self.path, got=str(arr.dtype),
                            expected="integer class indices")
        return arr.astype(np.int64)

    # -- reading ------------------------------------------------------------------------
    def _preprocess_key(self) -> dict | None:
        return None if self.model_ready else self.preprocess.as_dict()

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        if self.kind != "hdf5":
            yield self._array
            return
        with self._h5_open() as f:
            yield f[self.dataset]

    @staticmethod
    def _read_rows(src: Any, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, distinct) of ``src``; on an HDF5 dataset this reads only those rows."""
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            return np.asarray(src[int(rows[0]):int(rows[-1]) + 1])
        return np.asarray(src[rows.tolist()] if not isinstance(src, np.ndarray) else src[rows])

    def _fetch(self, handle: Any, positions: range) -> list[Any]:
        return list(self._read_rows(handle, self._rows[positions.start:positions.stop]))

    def _decode(self, position: int, payload: Any, pixels: bool = False) -> tuple[np.ndarray, str | None]:
        if self.model_ready:
            return np.ascontiguousarray(payload, dtype=np.float32), None
        try:
            return self.preprocess.apply_array(payload, layout=None if self.layout == "HW" else self.layout,
                                               pixels_only=pixels), None
        except _DECODE_ERRORS as err:
            raise _BadItem(f"{type(err).__name__}: {err}") from err

    def _hash_items(self, h: Any) -> None:
        h.update(f"{self.dataset}\0{self.dtype.str}\0{self.shape[1:]}\n".encode())
        for item_id in self._ids:
            h.update(item_id.encode() + b"\n")
        with self._opened() as src:
            step = 256
            for start in range(0, len(self._rows), step):
                h.update(np.ascontiguousarray(self._read_rows(src, self._rows[start:start + step])).tobytes())


class NamedArraySource(ImageSource):
    """Data for a model with several inputs: a ``.npz`` or ``.h5``/``.hdf5`` file holding one array per ONNX
    input name (model-ready: float, rows first, all with the same number of rows), plus an optional labels
    array (``labels``/``y``). Each batch's ``images`` is an :class:`~trtquant.core.types.Inputs`.
    The file's arrays must be exactly the model's inputs (and the labels): a missing or an extra name is an
    error that lists both sets. HDF5 rows are read per batch; .npz arrays are loaded once."""

    kind = "named-arrays"
    model_ready = True

    def __init__(self, path: str | os.PathLike, preprocess: Preprocess, *, inputs: tuple[str, ...],
                 labels: str | None = "labels", num_images: int | None = None, seed: int = 0,
                 on_bad_image: str = "skip") -> None:
        self.path = os.path.abspath(os.fspath(path))
        suffix = os.path.splitext(self.path)[1].lower()
        if suffix not in (".npz", ".h5", ".hdf5"):
            raise DataError("a model with several inputs needs named arrays", subject=self.path,
                            got=suffix or "no extension", expected=".npz or .h5 with one array per input name: "
                            + ", ".join(map(repr, inputs)),
                            hint="np.savez(FILE, **{name: array for each model input}, labels=...)")
        if not os.path.isfile(self.path):
            raise DataError("array file not found", subject=self.path)
        self.kind = "npz" if suffix == ".npz" else "hdf5"
        self.input_names = tuple(inputs)
        label_keys = [k for k in (labels, "labels", "y") if k]
        if self.kind == "npz":
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    found = {k: z[k] for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise DataError("cannot read the .npz file", subject=self.path, got=str(err),
                                expected="a numpy .npz archive") from err
            shapes = {k: (v.shape, v.dtype) for k, v in found.items()}
        else:
            import h5py

            try:
                f = h5py.File(self.path, "r")
            except OSError as err:
                raise DataError("cannot open the HDF5 file", subject=self.path, got=str(err),
                                expected="a readable HDF5 file") from err
            with f:
                shapes = {k: (f[k].shape, f[k].dtype) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
                found = {k: f[k][()] for k in label_keys if k in shapes}
        label_key = next((k for k in label_keys if k in shapes), None)
        names = set(shapes) - {label_key}
        missing, extra = [n for n in self.input_names if n not in names], sorted(names - set(self.input_names))
        if missing or extra:
            raise DataError("the arrays do not match the model's inputs", subject=self.path,
                            got="arrays " + ", ".join(map(repr, sorted(names))) + (f" (+ labels {label_key!r})" if label_key else ""),
                            expected="model inputs " + ", ".join(map(repr, self.input_names))
                            + (f"; missing: {', '.join(map(repr, missing))}" if missing else "")
                            + (f"; extra: {', '.join(map(repr, extra))}" if extra else ""),
                            hint="save one array per ONNX input name (and optionally 'labels')")
        rows = {k: shapes[k][0][0] if len(shapes[k][0]) else None for k in self.input_names}
        for k in self.input_names:
            shape, dtype = shapes[k]
            if np.dtype(dtype) not in _FLOAT_DTYPES or not 1 <= len(shape) <= 5:
                raise DataError("model input array is not model-ready", subject=f"{self.path}:{k}",
                                got=f"{np.dtype(dtype)} {tuple(shape)}", expected="float16/32/64, rows first (rank 1 to 5)",
                                hint="a model with several inputs takes already preprocessed float arrays")
        if len(set(rows.values())) != 1:
            raise DataError("model input arrays have different numbers of rows", subject=self.path,
                            got=", ".join(f"{k}: {n}" for k, n in rows.items()), expected="the same number in each")
        n = rows[self.input_names[0]]
        self.shapes = {k: tuple(shapes[k][0]) for k in self.input_names}
        self._arrays = {k: found[k] for k in self.input_names} if self.kind == "npz" else None
        label_arr = None
        if label_key:
            label_arr = np.asarray(found[label_key]).reshape(-1)
            if label_arr.shape != (n,) or not np.issubdtype(label_arr.dtype, np.integer):
                raise DataError("invalid labels array", subject=f"{self.path}:{label_key}",
                                got=f"{label_arr.dtype} {label_arr.shape}", expected=f"integers, shape ({n},)")
        name = f"{self.kind}:{self.path}"
        ids = [f"{self.path}[{i}]" for i in range(n)]
        log.info("%s: %d model-ready inputs (%s), %d rows", name, len(self.input_names),
                 ", ".join(f"{k} {self.shapes[k]}" for k in self.input_names), n)
        super().__init__(name=name, preprocess=preprocess, ids=ids, labels=label_arr,
                         label_space="array", num_images=num_images, seed=seed, on_bad_image=on_bad_image)

    def _preprocess_key(self) -> dict | None:
        return None

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Any]:
        if self._arrays is not None:
            yield self._arrays
            return
        import h5py

        with h5py.File(self.path, "r") as f:
            yield {k: f[k] for k in self.input_names}

    def _fetch(self, handle: Any, positions: range) -> list[Any]:
        rows = self._rows[positions.start:positions.stop]
        per_input = {k: ArraySource._read_rows(v, rows) for k, v in handle.items()}
        return [{k: a[i] for k, a in per_input.items()} for i in range(len(rows))]

    def _decode(self, position: int, payload: Any, pixels: bool = False) -> tuple[dict, str | None]:
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in payload.items()}, None

    def _hash_items(self, h: Any) -> None:
        h.update(("\0".join(f"{k}{self.shapes[k][1:]}" for k in self.input_names) + "\n").encode())
        with self._opened() as src:
            for start in range(0, len(self._rows), 256):
                rows = self._rows[start:start + 256]
                for k in self.input_names:
                    h.update(np.ascontiguousarray(ArraySource._read_rows(src[k], rows), dtype=np.float32).tobytes())
