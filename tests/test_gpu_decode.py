"""GPU decoding (datasets/gpu_decode.py): Pillow's resize reproduced exactly, JPEG triage, the per-image fallback.

Everything but nvJPEG runs on the CPU here: the resampler on CPU tensors, the decoder with torchvision's CPU
``decode_jpeg``. The nvJPEG comparison is in test_gpu.py (GPU only).
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from trtquant.core.errors import BackendUnavailable, ConfigError
from trtquant.datasets import PRESETS, Preprocess, open_source
from trtquant.datasets import gpu_decode as gd
from trtquant.datasets.base import _BadItem


def _pillow_and_ours(pre, sizes, seed=0):
    rng = np.random.default_rng(seed)
    imgs, plans, refs = [], [], []
    for w, h in sizes:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a = np.clip(a.astype(np.int64) // 2 + np.linspace(0, 127, w, dtype=np.int64)[None, :, None], 0, 255).astype(np.uint8)
        refs.append(pre.pixels(Image.fromarray(a, "RGB")))
        imgs.append(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))
        plans.append(gd._plan(pre, w, h))
    return gd.resize_crop(imgs, plans, pre.crop).numpy(), refs, plans


def test_resize_crop_equals_pillow_bit_for_bit():
    """Downscales by < 1.01 to > 4 (up to 9 filter taps), upscales, portrait/landscape/tall (both pass orders),
    odd sizes: every pixel equals Preprocess.pixels (Pillow's resize + crop)."""
    pre = Preprocess(resize=48, crop=40)
    sizes = [(64, 48), (48, 64), (48, 48), (41, 45), (49, 195), (195, 49), (300, 226), (40, 41), (97, 430), (7, 5),
             (250, 333)]
    out, refs, plans = _pillow_and_ours(pre, sizes)
    assert {p.vertical_first for p in plans} == ({False, True} if gd.pillow_pass_order() == "rule" else {False})
    for (w, h), o, r in zip(sizes, out, refs):
        assert np.array_equal(o, r), (w, h, int(np.abs(o.astype(int) - r).max()))


def test_resize_crop_equals_pillow_with_the_imagenet_preset():
    out, refs, _ = _pillow_and_ours(PRESETS["imagenet"], [(500, 375), (375, 500), (257, 999)], seed=1)
    for o, r in zip(out, refs):
        assert np.array_equal(o, r)


def test_pillow_pass_order_is_detected():
    assert gd.pillow_pass_order() in ("horizontal", "rule")


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_jpeg_triage():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8), "RGB")
    info = gd.jpeg_info(_jpeg(rgb, quality=90))
    assert (info.width, info.height, info.precision, info.sof) == (50, 30, 8, 0xC0) and info.gpu_decodable()
    assert gd.jpeg_info(_jpeg(rgb, subsampling=0)).gpu_decodable()                   # 4:4:4
    assert gd.jpeg_info(_jpeg(rgb, subsampling=1)).gpu_decodable()                   # 4:2:2
    assert gd.jpeg_info(_jpeg(rgb, progressive=True)).gpu_decodable()                # progressive: nvJPEG too
    assert not gd.jpeg_info(_jpeg(rgb.convert("L"))).gpu_decodable()                 # greyscale -> CPU
    assert not gd.jpeg_info(_jpeg(rgb.convert("CMYK"))).gpu_decodable()              # CMYK -> CPU
    data = _jpeg(rgb)
    assert not gd.jpeg_info(data[:len(data) // 2]).gpu_decodable()                   # truncated -> CPU decides
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert gd.jpeg_info(png.getvalue()) is None and gd.jpeg_info(b"") is None
    assert gd.jpeg_info(b"\xff\xd8\xff\xe0\x00") is None                             # cut inside a segment


def _folder(tmp_path):
    rng = np.random.default_rng(3)
    d = tmp_path / "n01440764"
    d.mkdir()
    imgs = {}
    for i, (w, h) in enumerate([(300, 226), (226, 300), (256, 256), (500, 375)]):
        imgs[f"a{i}.jpg"] = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        imgs[f"a{i}.jpg"].save(d / f"a{i}.jpg", quality=92)
    imgs["b_prog.jpg"] = imgs["a0.jpg"]
    imgs["a0.jpg"].save(d / "b_prog.jpg", progressive=True)
    imgs["c.png"] = imgs["a1.jpg"]
    imgs["a1.jpg"].save(d / "c.png")
    imgs["d_grey.jpg"] = imgs["a2.jpg"].convert("L")
    imgs["d_grey.jpg"].save(d / "d_grey.jpg")
    (d / "e_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    return tmp_path


def test_decoder_routes_each_file_and_keeps_the_batch_order(tmp_path):
    """Baseline and progressive JPEGs go to the (here CPU) decode_jpeg + resampler, the rest through the source's CPU path; the
    batch keeps the source's order, the corrupt file is skipped and counted as on the CPU path."""
    src = open_source(str(_folder(tmp_path)), preprocess=PRESETS["imagenet"])
    dec = gd.GpuJpegDecoder(src.preprocess, torch.device("cpu"))
    reads = {p.rsplit("/", 1)[-1]: None for p in src.ids}
    for pos, path in enumerate(src.ids):
        name = path.rsplit("/", 1)[-1]
        try:
            reads[name] = type(dec.read(src, pos, path)[0]).__name__
        except _BadItem:
            reads[name] = "bad"
    assert reads == {"a0.jpg": "_Encoded", "a1.jpg": "_Encoded", "a2.jpg": "_Encoded", "a3.jpg": "_Encoded",
                     "b_prog.jpg": "_Encoded", "c.png": "ndarray", "d_grey.jpg": "ndarray", "e_corrupt.jpg": "bad"}
    cpu = list(src.batches(3, pixels=True, progress=False))
    cpu_skipped = list(src.skipped)
    gpu = list(src.batches(3, pixels=True, progress=False, decoder=dec))
    assert src.skipped == cpu_skipped and len(cpu_skipped) == 1
    assert [b.ids for b in gpu] == [b.ids for b in cpu]
    assert dec.gpu_images == 5 and dec.cpu_images == 2
    for a, b in zip(cpu, gpu):
        assert isinstance(b.images, torch.Tensor) and b.images.dtype == torch.uint8
        diff = np.abs(b.images.numpy().astype(int) - a.images.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05        # libjpeg-turbo in torchvision vs Pillow: same decoder


def test_make_decoder_modes(tmp_path):
    src = open_source(str(_folder(tmp_path)), preprocess=PRESETS["imagenet"])
    assert gd.make_decoder("cpu", src, torch.device("cpu")) is None
    assert gd.make_decoder("auto", src, torch.device("cpu")) is None
    with pytest.raises(BackendUnavailable, match="not CUDA"):
        gd.make_decoder("gpu", src, torch.device("cpu"))
    with pytest.raises(ConfigError, match="--decode"):
        gd.make_decoder("nvjpeg", src, torch.device("cpu"))
    grey = open_source(str(tmp_path), preprocess=PRESETS["grayscale"])
    if torch.cuda.is_available():
        assert gd.make_decoder("auto", grey, torch.device("cuda")) is None


def test_rebatch_keeps_order_and_sizes():
    from trtquant.datasets.base import Batch

    parts = [Batch(images=torch.arange(n * 2, dtype=torch.uint8).reshape(n, 2, 1, 1) + 10 * i,
                   labels=np.arange(n) + 100 * i, ids=tuple(f"{i}-{j}" for j in range(n))) for i, n in enumerate([5, 3, 7])]
    out = list(gd.rebatch(iter(parts), 4))
    assert [len(b) for b in out] == [4, 4, 4, 3]
    assert sum((b.ids for b in out), ()) == sum((p.ids for p in parts), ())
    assert torch.equal(torch.cat([b.images for b in out]), torch.cat([p.images for p in parts]))
    assert np.array_equal(np.concatenate([b.labels for b in out]), np.concatenate([p.labels for p in parts]))
