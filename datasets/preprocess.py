"""Image preprocessing that reproduces torchvision's ImageNet evaluation transform.

``Preprocess().apply(img)`` gives the same float32 CHW array as::

    Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])(img.convert("RGB"))

(PIL bilinear resize of the shorter side, ``int(round(...))`` crop offsets, ``/255`` then
``(x - mean) / std`` in float32), without importing torch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import ConfigError, DataError

__all__ = ["Preprocess", "PRESETS", "to_rgb"]

log = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an 8-bit RGB image (a no-op for RGB input).

    Greyscale, bilevel, palette, CMYK and YCbCr go through ``Image.convert("RGB")``; alpha
    channels (RGBA, LA, PA and palette transparency) are dropped; 16-bit greyscale (``I;16*``,
    and ``I`` holding values above 255) is scaled to 8 bits (``v * 255 / 65535``) first, where
    a plain ``convert`` would clip every value above 255 to white.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        if mode == "I" and arr.size and int(arr.max()) <= 255 and int(arr.min()) >= 0:
            arr8 = arr.astype(np.uint8)          # an 8-bit image stored as 32-bit ints
        else:
            arr32 = np.clip(arr.astype(np.int64), 0, 65535)
            arr8 = ((arr32 * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if mode == "F":
        arr8 = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's "palette images with transparency" warning.
        return img.convert("RGBA").convert("RGB")
    if mode in _ALPHA_MODES:
        return img.convert("RGB")               # drops the alpha channel
    return img.convert("RGB")


def _check_triplet(name: str, value: Any, *, positive: bool, channels: int = 3) -> tuple[float, ...]:
    want = "3 numbers, one per RGB channel" if channels == 3 else "1 number (greyscale)"
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid preprocessing {name}", subject=name, got=repr(value), expected=want) from err
    if len(items) != channels:
        raise ConfigError(f"invalid preprocessing {name}", subject=name, got=f"{len(items)} values {items}",
                          expected=want)
    if not all(math.isfinite(v) for v in items):
        raise ConfigError(f"invalid preprocessing {name}", subject=name, got=repr(items),
                          expected="finite numbers")
    if positive and not all(v > 0 for v in items):
        raise ConfigError(f"invalid preprocessing {name}", subject=name, got=repr(items),
                          expected="numbers > 0 (each channel is divided by its std)")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize`` (PIL bilinear), center-crop ``crop`` x ``crop``,
    scale to [0, 1] and normalize with ``mean`` / ``std`` (RGB order). ``channels=1`` converts
    every image to greyscale first (PIL's ``convert("L")``, ITU-R 601 luma, as torchvision's
    ``Grayscale``), with one mean and one std."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"invalid preprocessing {name}", subject=name, got=repr(value),
                                  expected="a positive integer number of pixels")
            object.__setattr__(self, name, int(value))
        if self.crop > self.resize:
            raise ConfigError("center crop larger than the resized image", subject="crop",
                              got=f"crop={self.crop} > resize={self.resize}",
                              expected="crop <= resize (the shorter side after resizing)")
        if self.channels not in (1, 3):
            raise ConfigError("invalid preprocessing channels", subject="channels", got=repr(self.channels),
                              expected="3 (RGB) or 1 (greyscale)")
        object.__setattr__(self, "mean", _check_triplet("mean", self.mean, positive=False, channels=self.channels))
        object.__setattr__(self, "std", _check_triplet("std", self.std, positive=True, channels=self.channels))

    # -- public API ---------------------------------------------------------------------
    def apply(self, img: Image.Image) -> np.ndarray:
        """Preprocess one PIL image (any mode) into a float32 ``(channels, crop, crop)`` array."""
        return self.normalize(self.pixels(img))

    def pixels(self, img: Image.Image) -> np.ndarray:
        """Resize + centre-crop one PIL image (any mode) into uint8 ``(channels, crop, crop)`` pixels."""
        if not isinstance(img, Image.Image):
            raise DataError("not a PIL image", subject="Preprocess.apply", got=type(img).__name__,
                            expected="a PIL.Image.Image (use apply_array for numpy pixels)")
        rgb = to_rgb(img)
        if self.channels == 1:
            rgb = rgb.convert("L")
        w, h = rgb.size
        if w < 1 or h < 1:
            raise DataError("empty image", got=f"size {w}x{h}", expected="at least 1x1 pixels")
        new_w, new_h, top, left = self.geometry(w, h)
        if (new_w, new_h) != (w, h):
            rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
        pixels = np.asarray(rgb)                 # (H, W, 3) or (H, W) uint8
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        c = self.crop
        return np.ascontiguousarray(pixels[top:top + c, left:left + c].transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(..., channels, H, W)`` pixels -> float32 ``(x / 255 - mean) / std`` (float32 arithmetic)."""
        out = np.array(pixels, dtype=np.float32, order="C")   # a fresh C-contiguous copy
        out /= np.float32(255.0)
        out -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
        out /= np.asarray(self.std, dtype=np.float32)[:, None, None]
        return out

    def normalize_torch(self, pixels):
        """``normalize`` for a uint8 torch tensor (e.g. already on the GPU): the same float32 operations
        in the same order, so the result is bit-identical to the NumPy path."""
        import torch

        out = pixels.to(torch.float32)
        out /= torch.tensor(255.0, device=out.device)   # a tensor: CUDA divides by a host scalar via its reciprocal
        out -= torch.tensor(self.mean, dtype=torch.float32, device=out.device)[:, None, None]
        out /= torch.tensor(self.std, dtype=torch.float32, device=out.device)[:, None, None]
        return out

    def apply_array(self, arr: np.ndarray, *, layout: str | None = None, pixels_only: bool = False) -> np.ndarray:
        """Preprocess one uint8 pixel array: ``HWC`` or ``CHW`` with 3 or 1 channels, or ``HW``.

        ``layout`` ("HWC" / "CHW") resolves shapes that fit both; by default a last axis of
        size 3 or 1 means HWC, else a first axis of size 3 or 1 means CHW. The result equals
        ``apply(Image.fromarray(hwc))``.
        """
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            raise DataError("pixel array has the wrong dtype", subject="image array", got=str(arr.dtype),
                            expected="uint8 pixels (float arrays are taken as model-ready, not preprocessed)")
        if arr.ndim == 2:
            hwc = arr[:, :, None]
        elif arr.ndim == 3:
            if layout is None:
                if arr.shape[-1] in (1, 3):
                    layout = "HWC"
                elif arr.shape[0] in (1, 3):
                    layout = "CHW"
            if layout == "HWC" and arr.shape[-1] in (1, 3):
                hwc = arr
            elif layout == "CHW" and arr.shape[0] in (1, 3):
                hwc = arr.transpose(1, 2, 0)
            else:
                raise DataError("pixel array has the wrong shape", subject="image array",
                                got=f"shape {arr.shape}" + (f" with layout {layout}" if layout else ""),
                                expected="HWC or CHW with 3 (RGB) or 1 (grey) channels")
        else:
            raise DataError("pixel array has the wrong number of dimensions", subject="image array",
                            got=f"shape {arr.shape}", expected="HWC or CHW with 3 or 1 channels")
        hwc = np.ascontiguousarray(hwc)
        img = Image.fromarray(hwc[:, :, 0], "L") if hwc.shape[2] == 1 else Image.fromarray(hwc, "RGB")
        return self.pixels(img) if pixels_only else self.apply(img)

    def as_dict(self) -> dict:
        """JSON-ready description (also hashed into source fingerprints)."""
        d = {"resize": self.resize, "crop": self.crop, "interpolation": "bilinear",
             "mean": list(self.mean), "std": list(self.std)}
        return d if self.channels == 3 else {**d, "channels": self.channels}   # RGB: as before (fingerprints)

    def geometry(self, w: int, h: int) -> tuple[int, int, int, int]:
        """``(new_w, new_h, top, left)``: the resized size of a ``w`` x ``h`` image and the crop's offsets in it."""
        new_w, new_h = self._resized_size(w, h)
        return new_w, new_h, int(round((new_h - self.crop) / 2.0)), int(round((new_w - self.crop) / 2.0))

    # -- helpers ------------------------------------------------------------------------
    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """torchvision ``Resize(int)``: shorter side -> resize, longer side truncated."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(),
    "inception": Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "grayscale": Preprocess(mean=(0.5,), std=(0.5,), channels=1),
}
