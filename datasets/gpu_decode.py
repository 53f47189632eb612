"""JPEG decoding and resize/crop on the GPU: nvJPEG (through torchvision) plus Pillow's resampling, exactly.

``GpuJpegDecoder`` plugs into an image source's pass (``source.batches(n, pixels=True, decoder=...)``):

* in the decoding threads, ``read`` loads the file and parses the JPEG header. A Huffman-coded (baseline,
  extended or progressive) 8-bit, 3-component YCbCr JPEG with common chroma subsampling that ends with its
  EOI marker is kept as bytes, with the resampling coefficients of its size; anything else (PNG, greyscale,
  CMYK/YCCK, Adobe RGB, arithmetic-coded, 12-bit, truncated, not an image) goes through the CPU path of the source,
  unchanged (Pillow decode + resize + crop), so its pixels, conversions and bad-image handling are the
  CPU path's;
* on the main thread, ``stack`` decodes the batch's JPEGs with one batched ``torchvision.io.decode_jpeg(
  ..., device="cuda")`` (nvJPEG: the hardware decoder on A100/H100/H200), resizes and centre-crops them on
  the GPU, and returns one uint8 ``(N, 3, crop, crop)`` CUDA tensor with the CPU-decoded images in their
  places. An image nvJPEG refuses falls back to the CPU path alone.

The resize is Pillow's ``Image.resize(size, BILINEAR)`` (a triangle filter whose support grows with the
downscale factor, i.e. antialiased), reproduced bit for bit: the same double-precision coefficients
(``precompute_coeffs``) rounded to 22-bit fixed point, a horizontal pass rounded to uint8, then a vertical
pass, with Pillow's rounding and clipping; only the rows and columns the centre crop keeps are computed.
So on the same decoded pixels the output equals ``Preprocess.pixels`` exactly (tested on the CPU); what
differs is the decoder: nvJPEG's IDCT and chroma upsampling vs libjpeg-turbo's (README: the measured
difference).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import math
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..core.errors import BackendUnavailable, ConfigError
from .base import Batch, ImageSource, _BadItem
from .preprocess import Preprocess
from .sources import _FileSource

__all__ = ["DECODE_BATCH", "DECODE_MODES", "rebatch", "GpuJpegDecoder", "JpegInfo", "jpeg_info", "make_decoder", "resample_coefficients",
           "resize_crop"]

log = logging.getLogger(__name__)

DECODE_MODES = ("auto", "cpu", "gpu")
PRECISION_BITS = 22                  # Pillow's fixed point for 8-bit images (32 - 8 - 2)
_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)    # baseline, extended sequential, progressive (Huffman): nvJPEG decodes them
_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)     # lossless, hierarchical, arithmetic
_LUMA_SAMPLING = ((1, 1), (2, 1), (1, 2), (2, 2))   # 4:4:4, 4:2:2, 4:4:0, 4:2:0 with chroma at 1x1
_MAX_ELEMENTS = 1 << 26              # one resampling step's working set (elements) on the device
_MAX_SIDE = 16384


# ---------------------------------------------------------------------------------------
# JPEG header
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JpegInfo:
    """What the header of a JPEG says: frame type (SOF marker), precision, size, components."""

    sof: int
    precision: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]     # (id, h sampling, v sampling)
    adobe_transform: int | None                       # APP14 "Adobe" colour transform, None without it
    complete: bool                                    # the data ends with the EOI marker

    def gpu_decodable(self) -> bool:
        """Huffman-coded 8-bit YCbCr, common subsampling, complete: the images nvJPEG decodes as libjpeg does
        (baseline ones on the hardware decoder, progressive ones in nvJPEG's CUDA decoder, one by one)."""
        if self.sof not in _SOF_HUFFMAN or self.precision != 8 or len(self.components) != 3 or not self.complete:
            return False
        if not (0 < self.width <= _MAX_SIDE and 0 < self.height <= _MAX_SIDE):
            return False
        if self.adobe_transform == 0 or tuple(c[0] for c in self.components) == (82, 71, 66):   # stored as RGB
            return False
        (_, h0, v0), (_, h1, v1), (_, h2, v2) = self.components
        return (h0, v0) in _LUMA_SAMPLING and (h1, v1) == (h2, v2) == (1, 1)


def jpeg_info(data: bytes) -> JpegInfo | None:
    """Parse the markers of a JPEG up to its first scan; None if ``data`` is not a well-formed JPEG header."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, n = 2, len(data)
    sof = None
    adobe = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:                       # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        seg = data[pos + 4:pos + 2 + length]
        if length < 2 or len(seg) != length - 2:
            return None
        if marker in _SOF_HUFFMAN + _SOF_OTHER:
            if len(seg) < 6:
                return None
            precision, height, width, ncomp = seg[0], *struct.unpack(">HH", seg[1:5]), seg[5]
            if len(seg) < 6 + 3 * ncomp:
                return None
            comps = tuple((seg[6 + 3 * i], seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(ncomp))
            sof = (marker, precision, width, height, comps)
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        elif marker == 0xDA:                     # start of scan: the header is over
            if sof is None:
                return None
            end = data.rstrip(b"\x00")
            marker_, precision, width, height, comps = sof
            return JpegInfo(sof=marker_, precision=precision, width=width, height=height, components=comps,
                            adobe_transform=adobe, complete=end[-2:] == b"\xff\xd9")
        pos += 2 + length
    return None


# ---------------------------------------------------------------------------------------
# Pillow's bilinear resampling, as integer tables
# ---------------------------------------------------------------------------------------
def resample_coefficients(in_size: int, out_size: int, first: int, count: int) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` (bilinear) + ``normalize_coeffs_8bpc`` for outputs ``first .. first+count-1``.

    Returns ``(start, weights, taps)``: output ``o`` is ``clip8((sum_k in[start[o] + k] * weights[o, k] + 2**21)
    >> 22)`` over ``k < taps[o]`` (int32 weights, zero from ``taps[o]`` on), the same double-precision arithmetic as
    Pillow's C code.
    """
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale                         # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    xx = np.arange(first, first + count, dtype=np.float64)
    center = 0.0 + (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = np.trunc(center - support + 0.5).astype(np.int64)
    xmin = np.maximum(xmin, 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    k = np.arange(ksize, dtype=np.int64)
    arg = ((k[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * ss
    a = np.abs(arg)
    w = np.where(a < 1.0, 1.0 - a, 0.0)
    w = np.where(k[None, :] < xmax[:, None], w, 0.0)
    ww = np.cumsum(w, axis=1)[:, -1]                     # Pillow sums in order (np.sum would pair)
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
    return xmin, fixed.astype(np.int32), xmax


@dataclass(frozen=True)
class _Axis:
    """One axis of a resampling restricted to the crop: output ``o`` reads source ``first + start[o] + k``."""

    first: int                   # first source index the crop needs
    span: int                    # source indices the crop needs
    start: np.ndarray            # (crop,) first tap of each output, relative to `first`
    weights: np.ndarray          # (crop, K) int32, zero past each output's taps


@dataclass(frozen=True)
class _Plan:
    """The resampling of one image: its size, both axes, and which pass Pillow runs first."""

    width: int
    height: int
    cols: _Axis
    rows: _Axis
    vertical_first: bool


def _axis(in_size: int, out_size: int, first_out: int, count: int) -> _Axis:
    start, weights, taps = resample_coefficients(in_size, out_size, first_out, count)
    first = int(start[0])
    return _Axis(first, max(int((start + taps).max()) - first, 1), start - first, weights)


@functools.lru_cache(maxsize=1)
def pillow_pass_order() -> str | None:
    """Which pass the installed Pillow runs first: ``"horizontal"`` (always, Pillow <= 11), ``"rule"`` (vertical
    first when the height shrinks by more than twice the width, as Pillow 12+ does), or None (neither matches
    this Pillow: GPU decoding is then off, to keep the CPU path's pixels). Found by resizing a probe image."""
    from PIL import Image

    pre = Preprocess(resize=16, crop=8)
    a = np.random.default_rng(0).integers(0, 256, (80, 20, 3), dtype=np.uint8)   # 20x80 -> 16x64: the rule says V
    ref = pre.pixels(Image.fromarray(a, "RGB"))
    src = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))]
    for order, vfirst in (("horizontal", False), ("rule", True)):
        plan = _plan(pre, 20, 80, vfirst_rule=vfirst)
        if np.array_equal(_resize_group(src, [plan], pre.crop).numpy()[0], ref):
            return order
    return None


def _plan(pre: Preprocess, width: int, height: int, *, vfirst_rule: bool | None = None) -> _Plan:
    if vfirst_rule is None:
        return _cached_plan(pre, width, height, pillow_pass_order() == "rule")
    return _make_plan(pre, width, height, vfirst_rule)


@functools.lru_cache(maxsize=4096)
def _cached_plan(pre: Preprocess, width: int, height: int, vfirst_rule: bool) -> _Plan:
    """Plans by image size (photo collections repeat a few sizes: ImageNet's 500x375 and 375x500 ...)."""
    return _make_plan(pre, width, height, vfirst_rule)


def _make_plan(pre: Preprocess, width: int, height: int, vfirst_rule: bool) -> _Plan:
    new_w, new_h, top, left = pre.geometry(width, height)
    c = pre.crop
    vfirst = vfirst_rule and (height - new_h) > 0 and (height - new_h) > (width - new_w) * 2
    return _Plan(width, height, _axis(width, new_w, left, c), _axis(height, new_h, top, c), vfirst)


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8`` of an accumulator that already holds the rounding half."""
    return torch.clamp(acc >> PRECISION_BITS, 0, 255).to(torch.uint8)


def resize_crop(images: Sequence[torch.Tensor], plans: Sequence[_Plan], crop: int) -> torch.Tensor:
    """Resize + centre-crop uint8 ``(C, H, W)`` images (one device) by their plans: ``(N, C, crop, crop)`` uint8.

    Bit-identical to Pillow's ``resize(BILINEAR)`` followed by the crop (``Preprocess.pixels``). Images are
    processed in groups of one pass order whose working set stays under ``_MAX_ELEMENTS`` elements, a few
    kernels per filter tap.
    """
    dev = images[0].device
    c = images[0].shape[0]
    out = torch.empty((len(images), c, crop, crop), dtype=torch.uint8, device=dev)

    def inner(p: _Plan) -> int:                   # the first pass's output extent along the other axis
        return p.cols.span if p.vertical_first else p.rows.span

    order = sorted(range(len(images)), key=lambda i: (plans[i].vertical_first, inner(plans[i])))
    group: list[int] = []
    for i in order + [None]:
        if i is not None and (not group or (plans[i].vertical_first == plans[group[0]].vertical_first and
                                            (len(group) + 1) * c * inner(plans[i]) * crop <= _MAX_ELEMENTS)):
            group.append(i)
            continue
        out[_pinned(np.array(group), dev)] = _resize_group([images[j] for j in group], [plans[j] for j in group],
                                                           crop)
        group = [i] if i is not None else []
    return out


def _pinned(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t


def _taps(axes: Sequence[_Axis], crop: int, clamp: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(b, K, crop) tap indices (relative to each axis' first, clamped to ``clamp``) and int32 weights; computed
    once per distinct (axis, clamp): plans are shared between images of one size."""
    k = max(a.weights.shape[1] for a in axes)
    idx = np.zeros((len(axes), k, crop), dtype=np.int64)
    w = np.zeros((len(axes), k, crop), dtype=np.int32)
    done: dict[tuple[int, int], int] = {}
    for j, (a, top) in enumerate(zip(axes, clamp)):
        key = (id(a), top)
        if key in done:
            idx[j], w[j] = idx[done[key]], w[done[key]]
            continue
        done[key] = j
        idx[j] = np.minimum(a.start[None, :] + np.arange(k)[:, None], top)
        w[j, :a.weights.shape[1]] = a.weights.T
    return idx, w


def _resize_group(images: Sequence[torch.Tensor], plans: Sequence[_Plan], crop: int) -> torch.Tensor:
    """One pass order for every image: the first pass gathers from the images' concatenated pixels, the second
    from the first's uint8 output (``torch.gather``); int32 accumulators with Pillow's rounding."""
    dev = images[0].device
    b, c = len(images), images[0].shape[0]
    vfirst = plans[0].vertical_first
    first = [p.rows if vfirst else p.cols for p in plans]       # the axis of the first pass
    second = [p.cols if vfirst else p.rows for p in plans]
    n_in = max(a.span for a in second)                          # extent of the first pass along the second axis
    w_img = np.array([p.width for p in plans])
    h_img = np.array([p.height for p in plans])
    sizes = w_img * h_img
    base = np.concatenate([[0], np.cumsum(sizes * c)[:-1]])
    chan = base[:, None] + np.arange(c)[None, :] * sizes[:, None]                                 # (b, c)
    # the second axis' source lines the crop needs (clamped into the image), as offsets into each plane
    lines = np.minimum(np.array([a.first for a in second])[:, None] + np.arange(n_in)[None, :],
                       ((w_img if vfirst else h_img) - 1)[:, None])                                # (b, n_in)
    stride_first, stride_second = (w_img, 1) if vfirst else (1, w_img)
    line_off = lines * (stride_second if np.isscalar(stride_second) else stride_second[:, None])
    idx1, w1 = _taps(first, crop, [(p.height if vfirst else p.width) - 1 - a.first for p, a in zip(plans, first)])
    idx1 = idx1 + np.array([a.first for a in first])[:, None, None]
    idx1 = idx1 * (stride_first[:, None, None] if not np.isscalar(stride_first) else stride_first)
    idx2, w2 = _taps(second, crop, [n_in - 1] * b)
    flat = torch.cat([im.reshape(-1) for im in images])
    offs = _pinned(chan[:, :, None] + line_off[:, None, :], dev)                                  # (b, c, n_in)
    idx1_t, w1_t, idx2_t, w2_t = (_pinned(a, dev) for a in (idx1, w1, idx2, w2))
    half = 1 << (PRECISION_BITS - 1)
    # first pass -> mid (b, c, n_in, crop): mid[.., l, o] = sum_k src(line l, first-axis index idx1[o, k])
    acc = torch.full((b, c, n_in, crop), half, dtype=torch.int32, device=dev)
    for k in range(idx1.shape[1]):
        acc += flat[offs[:, :, :, None] + idx1_t[:, None, None, k, :]].to(torch.int32) * w1_t[:, None, None, k, :]
    mid = _clip8(acc)
    # second pass -> (b, c, crop_second, crop_first)
    acc = torch.full((b, c, crop, crop), half, dtype=torch.int32, device=dev)
    for k in range(idx2.shape[1]):
        sel = idx2_t[:, None, k, :, None].expand(b, c, crop, crop)
        acc += torch.gather(mid, 2, sel).to(torch.int32) * w2_t[:, None, k, :, None]
    out = _clip8(acc)                            # (b, c, second-axis outputs, first-axis outputs)
    return out if vfirst is False else out.transpose(2, 3).contiguous()


# ---------------------------------------------------------------------------------------
# the decoder
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Encoded:
    """A JPEG to decode on the GPU (from a decoding thread)."""

    position: int
    payload: Any
    data: bytes
    plan: _Plan


_IMAGE_EXTENSIONS = ("image", "image_stable")   # torchvision's image extension (<= 0.28, >= 0.29)
_MODE_RGB = 3                                    # torchvision.io.ImageReadMode.RGB


@functools.lru_cache(maxsize=1)
def _decode_jpeg():
    """``decode(list of encoded uint8 tensors, device)``: torchvision's batched nvJPEG op
    ``torch.ops.image.decode_jpegs_cuda`` (its CPU ``decode_jpeg`` on a CPU device), or None.

    The op is loaded from torchvision's image extension without ``import torchvision``: that import pulls in
    ``torch._dynamo`` (through ``torchvision.ops``), 3.3 s of a cold start measured on the H200 machine. Where
    the extension cannot be loaded alone, ``torchvision.io.decode_jpeg`` is used."""
    if _image_op() is not None:
        ops = torch.ops.image

        def decode(data, device):
            if device.type == "cuda":
                return ops.decode_jpegs_cuda(data, _MODE_RGB, device)
            return [ops.decode_jpeg(d, _MODE_RGB, False) for d in data]      # libjpeg-turbo (tests on the CPU)
        return decode
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, OSError, RuntimeError):
        return None
    return lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _image_op():
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    finder = importlib.machinery.FileFinder(list(spec.submodule_search_locations)[0],
                                            (importlib.machinery.ExtensionFileLoader,
                                             importlib.machinery.EXTENSION_SUFFIXES))
    for name in _IMAGE_EXTENSIONS:
        found = finder.find_spec(name)
        if found is not None and found.origin:
            try:
                torch.ops.load_library(found.origin)
                return torch.ops.image.decode_jpegs_cuda
            except (OSError, RuntimeError, AttributeError) as err:
                log.debug("loading %s alone failed (%s): importing torchvision", found.origin, err)
                return None
    return None


class GpuJpegDecoder:
    """A device decoder for ``ImageSource.batches(..., pixels=True, decoder=...)`` (module docstring)."""

    def __init__(self, preprocess: Preprocess, device: torch.device):
        self.preprocess = preprocess
        self.device = torch.device(device)
        self._decode = _decode_jpeg()
        self.gpu_images = 0           # decoded by nvJPEG
        self.cpu_images = 0           # through the source's CPU path (not a JPEG nvJPEG takes, or refused)
        self._stream: torch.cuda.Stream | None = None

    # worker threads
    def read(self, source: ImageSource, position: int, payload: Any, pixels: bool = True):
        """The file's bytes and resampling plan when nvJPEG can decode it, else the source's CPU decode."""
        if isinstance(payload, (str, bytes)) or hasattr(payload, "__fspath__"):
            try:
                with open(payload, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = b""
            info = jpeg_info(data)
            if info is not None and info.gpu_decodable():
                return _Encoded(position, payload, data, _plan(self.preprocess, info.width, info.height)), None
        return source._decode(position, payload, pixels=True)

    # the pass's assembling thread
    def stack(self, source: ImageSource, items: list):
        """``(images, lost, ready)``: one uint8 ``(N, 3, crop, crop)`` tensor on the device for the batch's items,
        the items lost (index, _BadItem: a JPEG that nvJPEG refused and Pillow could not read either), and
        ``ready()``, which makes the consumer's CUDA stream wait for this batch (the work runs on a stream of the
        decoder's own, so decoding the next batch overlaps the model running on this one)."""
        if self.device.type != "cuda":
            return (*self._stack(source, items), None)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            out, lost = self._stack(source, items)
            done = torch.cuda.Event()
            done.record(self._stream)

        def ready() -> None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            out.record_stream(stream)                  # allocated on the decoder's stream, used on this one
        return out, lost, ready

    def _stack(self, source: ImageSource, items: list) -> tuple[torch.Tensor, list[tuple[int, _BadItem]]]:
        c = self.preprocess.crop
        enc = [(i, it) for i, it in enumerate(items) if isinstance(it, _Encoded)]
        decoded = self._decode_all([it for _, it in enc])
        cpu: dict[int, np.ndarray] = {i: it for i, it in enumerate(items) if not isinstance(it, _Encoded)}
        lost: list[tuple[int, _BadItem]] = []
        gpu_idx, gpu_imgs, gpu_plans = [], [], []
        for (i, it), img in zip(enc, decoded):
            if img is not None and tuple(img.shape) == (3, it.plan.height, it.plan.width):
                gpu_idx.append(i)
                gpu_imgs.append(img)
                gpu_plans.append(it.plan)
                continue
            try:                                       # nvJPEG refused it: the CPU path alone
                cpu[i] = source._decode(it.position, it.payload, pixels=True)[0]
            except _BadItem as bad:
                lost.append((i, bad))
        self.gpu_images += len(gpu_idx)
        self.cpu_images += len(cpu)
        out = torch.empty((len(items), 3, c, c), dtype=torch.uint8, device=self.device)
        if gpu_idx:
            out[_pinned(np.array(gpu_idx), self.device)] = resize_crop(gpu_imgs, gpu_plans, c)
        if cpu:
            keys = sorted(cpu)
            out[_pinned(np.array(keys), self.device)] = _pinned(np.stack([cpu[k] for k in keys]), self.device)
        if lost:
            gone = {i for i, _ in lost}
            out = out[_pinned(np.array([i for i in range(len(items)) if i not in gone]), self.device)]
        return out, lost

    def _decode_all(self, encoded: list[_Encoded]) -> list[torch.Tensor | None]:
        if not encoded:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")             # torchvision >= 0.29 deprecates its decoders for TorchCodec
            try:
                return list(self._decode([torch.frombuffer(e.data, dtype=torch.uint8) for e in encoded], self.device))
            except RuntimeError as err:                 # one bad image fails the batch: retry one by one
                log.debug("batched nvJPEG decode failed (%s): decoding one by one", err)
            out: list[torch.Tensor | None] = []
            for e in encoded:
                try:
                    out.append(self._decode([torch.frombuffer(e.data, dtype=torch.uint8)], self.device)[0])
                except RuntimeError as err:
                    log.info("nvJPEG refused %s (%s): decoded on the CPU", e.payload, str(err).splitlines()[0])
                    out.append(None)
            return out


DECODE_BATCH = 256
"""Images per nvJPEG call in ``calibrate``: each call has a fixed cost (25 ms a call at batch 32 in calibrate on the
H200, 8 ms for 256 images alone), so the pass decodes at least this many at once and ``rebatch`` re-cuts them."""


def rebatch(batches: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Re-cut a stream of (device) batches into batches of ``size`` (the last may be shorter), in order."""
    held: list[Batch] = []
    count = 0
    for b in batches:
        held.append(b)
        count += len(b)
        while count >= size:
            yield _take(held, size)
            count -= size
    if count:
        yield _take(held, count)


def _take(held: list[Batch], n: int) -> Batch:
    """The first ``n`` images of the held batches (consumed from ``held``)."""
    parts, got = [], 0
    while got < n:
        b = held[0]
        k = min(n - got, len(b))
        parts.append(Batch(images=b.images[:k], labels=None if b.labels is None else b.labels[:k], ids=b.ids[:k]))
        if k == len(b):
            held.pop(0)
        else:
            held[0] = Batch(images=b.images[k:], labels=None if b.labels is None else b.labels[k:], ids=b.ids[k:])
        got += k
    if len(parts) == 1:
        return parts[0]
    cat = torch.cat if isinstance(parts[0].images, torch.Tensor) else np.concatenate
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    return Batch(images=cat([p.images for p in parts]), labels=labels, ids=sum((p.ids for p in parts), ()))


def make_decoder(mode: str, source: ImageSource, device: torch.device, *, flag: str = "--decode") \
        -> GpuJpegDecoder | None:
    """The GPU decoder ``mode`` asks for (``auto``: on a CUDA device, for image files, when torchvision's
    nvJPEG decoder is there), or None for the CPU path."""
    if mode not in DECODE_MODES:
        raise ConfigError("unknown decode mode", subject=flag, got=repr(mode), expected=" | ".join(DECODE_MODES))
    if mode == "cpu":
        return None
    why = None
    if torch.device(device).type != "cuda":
        why = f"the device is {device}, not CUDA"
    elif not isinstance(source, _FileSource):
        why = f"{source.name} is not a source of image files"
    elif source.preprocess.channels != 3:
        why = "the preprocessing is greyscale (decoded on the CPU with Pillow's luma conversion)"
    elif _decode_jpeg() is None:
        why = "torchvision's decode_jpeg is not available"
    if why is None:
        return GpuJpegDecoder(source.preprocess, torch.device(device))
    if mode == "gpu":
        raise BackendUnavailable("cannot decode on the GPU", subject=f"{flag} gpu", got=why,
                                 hint=f"use {flag} cpu (or auto, which falls back)")
    log.debug("decoding on the CPU: %s", why)
    return None
