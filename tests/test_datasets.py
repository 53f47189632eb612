"""Tests of trtquant.datasets on real ImageNet images (foolbox's 20 labelled JPEGs)."""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from trtquant.datasets import (
    IMAGENET_VAL_ENV,
    PRESETS,
    SOURCE_NAMES,
    ArraySource,
    Batch,
    FlatValSource,
    FolderSource,
    Preprocess,
    imagenet_classes,
    open_source,
)
from trtquant.core.errors import ConfigError, DataError

IMAGENET = PRESETS["imagenet"]


# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def foolbox_images() -> list[tuple[Path, int]]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox is not installed (pip install --no-deps foolbox==3.3.4)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(data.glob("imagenet_*.jpg"))
    assert len(files) == 20
    return [(f, int(re.match(r"imagenet_\d+_(\d+)\.jpg$", f.name).group(1))) for f in files]


def reference(preprocess: Preprocess, img: Image.Image) -> np.ndarray:
    """torchvision's evaluation transform, the ground truth for Preprocess."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(preprocess.resize), T.CenterCrop(preprocess.crop), T.ToTensor(),
                    T.Normalize(preprocess.mean, preprocess.std)])
    return tf(img.convert("RGB")).numpy()


def collect(src, batch_size: int = 8, **kw):
    """All batches of one pass: (batch sizes, images, labels or None, ids)."""
    batches = list(src.batches(batch_size, progress=False, **kw))
    assert all(isinstance(b, Batch) for b in batches)
    images = np.concatenate([b.images for b in batches])
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    ids = tuple(i for b in batches for i in b.ids)
    return [len(b.ids) for b in batches], images, labels, ids


def wnid_of(label: int) -> str:
    return imagenet_classes()[label][0]


def copy_into(dst: Path, src: Path, name: str | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / (name or src.name)
    shutil.copyfile(src, out)
    return out


def flat_val_dir(tmp_path: Path, foolbox_images, n: int = 5) -> tuple[Path, list[tuple[str, int]]]:
    """The flat official layout: ILSVRC2012_val_0000000{i}.JPEG made of real images."""
    root = tmp_path / "val"
    items = []
    for i, (path, label) in enumerate(foolbox_images[:n], 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        copy_into(root, path, name)
        items.append((name, label))
    return root, items


# ---------------------------------------------------------------------------------------
# Preprocess
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["imagenet", "inception"])
def test_preprocess_matches_torchvision(foolbox_images, preset):
    pre = PRESETS[preset]
    # includes imagenet_10_541.jpg, the one non-square (1024x683) image
    for path, _ in [foolbox_images[i] for i in (0, 3, 10, 17)]:
        with Image.open(path) as img:
            ref = reference(pre, img)
            out = pre.apply(img)
            pixels = np.asarray(img.convert("RGB"))
        assert out.dtype == np.float32 and out.shape == (3, 224, 224) and out.flags.c_contiguous
        assert np.abs(out - ref).max() < 1e-5
        assert np.array_equal(pre.apply_array(pixels), out)                               # HWC
        assert np.array_equal(pre.apply_array(np.ascontiguousarray(pixels.transpose(2, 0, 1))), out)  # CHW


def test_preprocess_other_sizes_match_torchvision(foolbox_images):
    pre = Preprocess(resize=160, crop=128)
    with Image.open(foolbox_images[10][0]) as img:
        small = img.resize((301, 199))            # odd sizes exercise the rounding of crop offsets
        assert np.abs(pre.apply(small) - reference(pre, small)).max() < 1e-5
        tall = img.transpose(Image.Transpose.ROTATE_90)
        assert np.abs(pre.apply(tall) - reference(pre, tall)).max() < 1e-5


def test_preprocess_apply_array_grey(foolbox_images):
    with Image.open(foolbox_images[1][0]) as img:
        grey = np.asarray(img.convert("L"))
    expected = IMAGENET.apply(Image.fromarray(grey))
    assert np.array_equal(IMAGENET.apply_array(grey[:, :, None]), expected)
    assert np.array_equal(IMAGENET.apply_array(grey[None]), expected)
    assert np.abs(expected - reference(IMAGENET, Image.fromarray(grey))).max() < 1e-5
    with pytest.raises(DataError, match="dtype"):
        IMAGENET.apply_array(grey.astype(np.float32))


def test_preprocess_validation_and_dict():
    assert Preprocess().as_dict()["mean"] == [0.485, 0.456, 0.406]
    assert PRESETS["inception"].as_dict()["std"] == [0.5, 0.5, 0.5]
    assert Preprocess(mean=[0.5, 0.5, 0.5]).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="crop"):
        Preprocess(resize=200, crop=224)
    with pytest.raises(ConfigError, match="resize"):
        Preprocess(resize=0)
    with pytest.raises(ConfigError, match="std"):
        Preprocess(std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match="mean"):
        Preprocess(mean=(0.5, 0.5))
    with pytest.raises(Exception):
        Preprocess().crop = 100                   # frozen


def test_imagenet_classes():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({w for w, _ in classes}) == 1000
    assert classes[0] == ("n01440764", "tench")
    assert classes[999][0] == "n15075141"
    assert classes[243] == ("n02108422", "bull mastiff")


# ---------------------------------------------------------------------------------------
# imagenet_sample
# ---------------------------------------------------------------------------------------
def test_imagenet_sample(foolbox_images):
    src = open_source("imagenet_sample", preprocess=IMAGENET)
    assert len(src) == 20 and src.has_labels and src.name == "imagenet_sample"
    sizes, images, labels, ids = collect(src, 8)
    assert sizes == [8, 8, 4]
    assert labels.dtype == np.int64 and labels.tolist() == [label for _, label in foolbox_images]
    assert ids == tuple(str(p) for p, _ in foolbox_images)
    assert images.shape == (20, 3, 224, 224) and images.dtype == np.float32
    with Image.open(foolbox_images[5][0]) as img:
        assert np.abs(images[5] - reference(IMAGENET, img)).max() < 1e-5
    # a second pass (with other threading) is identical
    sizes2, images2, labels2, ids2 = collect(src, 8, workers=1)
    assert sizes2 == sizes and ids2 == ids and np.array_equal(labels2, labels) and np.array_equal(images2, images)
    # fingerprint: stable, and changes with preprocessing
    fp = src.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert open_source("imagenet_sample", preprocess=Preprocess()).fingerprint() == fp
    assert open_source("imagenet_sample", preprocess=PRESETS["inception"]).fingerprint() != fp
    assert open_source("imagenet_sample", preprocess=IMAGENET, num_images=10).fingerprint() != fp


def test_abandoned_pass_then_new_pass():
    src = open_source("imagenet_sample", preprocess=IMAGENET)
    it = src.batches(4, progress=False, workers=2)
    first = next(it)
    it.close()                                    # the caller stops early
    again = next(iter(src.batches(4, progress=False)))
    assert again.ids == first.ids and np.array_equal(again.images, first.images)


def test_batch_option_errors():
    src = open_source("imagenet_sample", preprocess=IMAGENET)
    with pytest.raises(ConfigError, match="--batch-size"):
        src.batches(0)
    with pytest.raises(ConfigError, match="--workers"):
        src.batches(4, workers=0)


# ---------------------------------------------------------------------------------------
# subsetting
# ---------------------------------------------------------------------------------------
def test_num_images_seed_determinism(caplog):
    a = open_source("imagenet_sample", preprocess=IMAGENET, num_images=5, seed=0)
    b = open_source("imagenet_sample", preprocess=IMAGENET, num_images=5, seed=0)
    c = open_source("imagenet_sample", preprocess=IMAGENET, num_images=5, seed=1)
    full = open_source("imagenet_sample", preprocess=IMAGENET).ids
    expected = [full[i] for i in sorted(np.random.default_rng(0).permutation(20)[:5])]
    assert len(a) == 5 and a.ids == b.ids and list(a.ids) == expected
    assert c.ids != a.ids and len(c) == 5
    assert list(a.ids) == sorted(a.ids, key=full.index)          # original order kept
    assert collect(a, 2)[3] == a.ids
    with caplog.at_level(logging.WARNING):
        big = open_source("imagenet_sample", preprocess=IMAGENET, num_images=1000)
    assert len(big) == 20 and "1000" in caplog.text
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="--num-images"):
            open_source("imagenet_sample", preprocess=IMAGENET, num_images=bad)


# ---------------------------------------------------------------------------------------
# directories
# ---------------------------------------------------------------------------------------
def test_imagefolder_wnid_labels(tmp_path, foolbox_images, monkeypatch):
    # 3 classes only: 243, 559 and 609 (two images); labels must stay the standard index
    chosen = [foolbox_images[i] for i in (0, 1, 6, 7)]
    for path, label in chosen:
        copy_into(tmp_path / "val" / wnid_of(label), path)
    (tmp_path / "val" / wnid_of(609) / ".hidden.jpg").write_bytes(b"not an image")
    (tmp_path / "val" / wnid_of(609) / "notes.txt").write_text("ignored")
    copy_into(tmp_path / "val" / wnid_of(243) / "sub", foolbox_images[2][0], "NESTED.JPEG")   # upper case ext
    src = open_source(str(tmp_path / "val"), preprocess=IMAGENET)
    assert src.name == f"folder:{tmp_path / 'val'}" and len(src) == 5
    _, images, labels, ids = collect(src, 2)
    by_name = dict(zip((Path(i).name for i in ids), labels.tolist()))
    assert by_name == {"imagenet_00_243.jpg": 243, "NESTED.JPEG": 243, "imagenet_01_559.jpg": 559,
                       "imagenet_06_609.jpg": 609, "imagenet_07_609.jpg": 609}
    assert list(ids) == sorted(ids)
    # the same directory as imagenet_val, through --data-dir and through the environment
    val = open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(tmp_path / "val"))
    assert val.name.startswith("imagenet_val:") and val.ids == src.ids and np.array_equal(val.labels, labels)
    monkeypatch.setenv(IMAGENET_VAL_ENV, str(tmp_path / "val"))
    assert open_source("imagenet_val", preprocess=IMAGENET).ids == src.ids


def test_imagefolder_plain_names_sorted_indices(tmp_path, foolbox_images, caplog):
    for cls, (path, _) in zip(["zebra", "cat", "dog", "cat"], foolbox_images[:4]):
        copy_into(tmp_path / "pets" / cls, path)
    with caplog.at_level(logging.INFO):
        src = open_source(str(tmp_path / "pets"), preprocess=IMAGENET)
    assert "folder indices" in caplog.text
    _, _, labels, ids = collect(src)
    by_class = {Path(i).parent.name: lab for i, lab in zip(ids, labels.tolist())}
    assert by_class == {"cat": 0, "dog": 1, "zebra": 2}
    assert src.label_space == "folder"
    with pytest.raises(DataError, match="not an ImageNet validation directory"):
        open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(tmp_path / "pets"))


def test_flat_folder_unlabelled(tmp_path, foolbox_images):
    for path, _ in foolbox_images[:3]:
        copy_into(tmp_path / "flat", path)
    src = open_source(str(tmp_path / "flat"), preprocess=IMAGENET)
    assert not src.has_labels and src.labels is None
    sizes, images, labels, _ = collect(src, 2)
    assert sizes == [2, 1] and labels is None and images.shape == (3, 3, 224, 224)
    with pytest.raises(DataError, match="ground-truth"):
        open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(tmp_path / "flat"))


@pytest.mark.parametrize("variant", ["index", "wnid"])
def test_flat_layout_val_txt(tmp_path, foolbox_images, variant):
    root, items = flat_val_dir(tmp_path, foolbox_images)
    lines = [f"{name} {label if variant == 'index' else wnid_of(label)}" for name, label in items[:-1]]
    (root / "val.txt").write_text("\n".join(lines) + "\n")          # the last image has no label
    src = open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(root))
    assert isinstance(src, FlatValSource) and src.name == f"imagenet_val:{root}"
    _, _, labels, ids = collect(src, 3)
    assert [Path(i).name for i in ids] == [n for n, _ in items]
    assert labels.tolist() == [lab for _, lab in items[:-1]] + [-1]


def test_flat_layout_kaggle_csv(tmp_path, foolbox_images):
    root, items = flat_val_dir(tmp_path, foolbox_images)
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageId", "PredictionString"])
        for name, label in reversed(items):
            w.writerow([name[:-5], f"{wnid_of(label)} 10 20 200 220 {wnid_of(label)} 1 2 3 4"])
    src = open_source(str(root), preprocess=IMAGENET)              # a plain path finds the ground truth too
    assert src.labels.tolist() == [lab for _, lab in items]


def test_flat_layout_devkit(tmp_path, foolbox_images):
    import scipy.io

    root, items = flat_val_dir(tmp_path, foolbox_images, n=3)
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    # devkit IDs are a permutation of the classes, not the standard index
    order = np.random.default_rng(7).permutation(1000)
    ids_of_index = np.empty(1000, dtype=np.int64)
    ids_of_index[order] = np.arange(1, 1001)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids_of_index[lab]}\n" for _, lab in items))
    with pytest.raises(DataError, match="meta.mat") as err:
        open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(root))
    assert "not the standard" in str(err.value).lower()
    synsets = np.zeros(1000, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    for index, (wnid, _) in enumerate(imagenet_classes()):
        synsets[index] = (int(ids_of_index[index]), wnid)
    scipy.io.savemat(str(data / "meta.mat"), {"synsets": synsets})
    src = open_source("imagenet_val", preprocess=IMAGENET, data_dir=str(root))
    assert src.labels.tolist() == [lab for _, lab in items]


def test_imagenet_val_not_configured(monkeypatch):
    monkeypatch.delenv(IMAGENET_VAL_ENV, raising=False)
    with pytest.raises(DataError, match="IMAGENET_VAL_DIR") as err:
        open_source("imagenet_val", preprocess=IMAGENET)
    assert "--data-dir" in str(err.value) and "n01440764" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        open_source("imagenet_val", preprocess=IMAGENET, data_dir="/nonexistent/imagenet/val")


def test_missing_empty_unknown(tmp_path):
    with pytest.raises(DataError, match="not found.*/no/such/dir"):
        open_source("/no/such/dir", preprocess=IMAGENET)
    with pytest.raises(DataError, match="not found.*missing.h5"):
        open_source(str(tmp_path / "missing.h5"), preprocess=IMAGENET)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found \| .*empty"):
        open_source(str(tmp_path / "empty"), preprocess=IMAGENET)
    with pytest.raises(DataError, match="unknown data source") as err:
        open_source("imagenet_train", preprocess=IMAGENET)
    assert all(name in str(err.value) for name in SOURCE_NAMES) and ".h5" in str(err.value)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported data file"):
        open_source(str(tmp_path / "x.txt"), preprocess=IMAGENET)
    with pytest.raises(ConfigError, match="--on-bad-image"):
        open_source("imagenet_sample", preprocess=IMAGENET, on_bad_image="ignore")


# ---------------------------------------------------------------------------------------
# corrupt images and colour modes
# ---------------------------------------------------------------------------------------
@pytest.fixture()
def bad_folder(tmp_path, foolbox_images) -> Path:
    root = tmp_path / "bad"
    for path, _ in foolbox_images[:2]:
        copy_into(root, path)
    data = foolbox_images[2][0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a JPEG\n")
    return root


def test_bad_images_skipped(bad_folder, caplog):
    src = open_source(str(bad_folder), preprocess=IMAGENET)
    assert len(src) == 5
    with caplog.at_level(logging.WARNING):
        sizes, images, _, ids = collect(src, 4)
    assert sizes == [2] and len(ids) == 2          # first batch lost 2 items, the second its only one
    assert sorted(Path(i).name for i, _ in src.skipped) == ["text.jpg", "truncated.jpg", "zero.jpg"]
    assert "truncated.jpg" in caplog.text
    assert np.isfinite(images).all()
    collect(src, 4)                                # a new pass resets the list
    assert len(src.skipped) == 3


def test_bad_images_error(bad_folder):
    src = open_source(str(bad_folder), preprocess=IMAGENET, on_bad_image="error")
    with pytest.raises(DataError, match=r"text\.jpg.*--on-bad-image skip"):
        collect(src, 8)
    (bad_folder / "text.jpg").unlink()
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        collect(FolderSource(bad_folder, IMAGENET, on_bad_image="error"), 8)


def test_all_bad_is_an_error(bad_folder):
    for path in bad_folder.glob("imagenet_*"):
        path.unlink()
    with pytest.raises(DataError, match="no readable images"):
        collect(open_source(str(bad_folder), preprocess=IMAGENET), 2)


def test_colour_modes(tmp_path, foolbox_images, caplog):
    root = tmp_path / "modes"
    root.mkdir()
    with Image.open(foolbox_images[4][0]) as img:
        rgb = img.convert("RGB")
    rgb.convert("L").save(root / "a_grey.png")
    rgb.convert("CMYK").save(root / "b_cmyk.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(root / "c_rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "d_palette.png")
    grey16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey16).save(root / "e_grey16.png")
    rgb.convert("L").convert("LA").save(root / "f_la.png")
    with caplog.at_level(logging.INFO):
        src = open_source(str(root), preprocess=IMAGENET)
        _, images, _, ids = collect(src, 4)
    assert [Path(i).name for i in ids] == sorted(p.name for p in root.iterdir())
    assert images.shape == (6, 3, 224, 224)
    for out, path in zip(images, ids):
        with Image.open(path) as img:
            if img.mode.startswith("I;16"):
                ref = reference(IMAGENET, rgb.convert("L"))      # 16-bit scaled back to 8 bits
            else:
                ref = reference(IMAGENET, img)                    # convert("RGB") drops the alpha
        assert np.abs(out - ref).max() < 1e-5, path
    assert sum(src.converted.values()) == 6 and src.converted["CMYK"] == 1
    assert "converted 6 image(s) to RGB" in caplog.text


# ---------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pixel_array(foolbox_images) -> tuple[np.ndarray, np.ndarray]:
    """(6, 512, 512, 3) uint8 real images and their labels."""
    imgs, labels = [], []
    for path, label in foolbox_images[:7]:
        with Image.open(path) as img:
            if img.size == (512, 512):
                imgs.append(np.asarray(img.convert("RGB")))
                labels.append(label)
    return np.stack(imgs[:6]), np.array(labels[:6], dtype=np.int64)


def test_h5_uint8_nhwc(tmp_path, pixel_array):
    pixels, labels = pixel_array
    path = tmp_path / "calib.h5"
    with h5py.File(path, "w") as f:
        f["images"] = pixels
        f["labels"] = labels.astype(np.int32)
        f.create_group("meta")["note"] = np.arange(3)
    src = open_source(str(path), preprocess=IMAGENET)
    assert isinstance(src, ArraySource) and src.name == f"hdf5:{path}" and len(src) == 6
    sizes, images, got_labels, ids = collect(src, 4)
    assert sizes == [4, 2] and ids[2] == f"{path}:images[2]"
    assert np.array_equal(got_labels, labels)
    for i in range(6):
        assert np.array_equal(images[i], IMAGENET.apply(Image.fromarray(pixels[i])))
    sub = open_source(str(path), preprocess=IMAGENET, num_images=3, seed=5)
    rows = sorted(np.random.default_rng(5).permutation(6)[:3])
    _, sub_images, _, sub_ids = collect(sub, 2)
    assert sub_ids == tuple(f"{path}:images[{r}]" for r in rows)
    assert np.array_equal(sub_images, images[rows])
    fp = src.fingerprint()
    with h5py.File(path, "r+") as f:
        f["images"][0, 0, 0, 0] ^= 1
    assert open_source(str(path), preprocess=IMAGENET).fingerprint() != fp
    with pytest.raises(DataError, match="pixels") as err:
        open_source(str(path), preprocess=IMAGENET, h5_images="pixels")
    assert "images" in str(err.value) and "labels" in str(err.value) and "meta/note" in str(err.value)


def test_h5_float_model_ready(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 3, 224, 224)).astype(np.float32)
    path = tmp_path / "ready.hdf5"
    with h5py.File(path, "w") as f:
        f["x"] = data
    src = open_source(str(path), preprocess=IMAGENET, h5_images="x")
    assert not src.has_labels
    sizes, images, labels, _ = collect(src, 2)
    assert sizes == [2, 2, 1] and labels is None
    assert np.array_equal(images, data)
    # preprocessing is not applied to model-ready arrays, so it does not change the fingerprint
    assert src.fingerprint() == open_source(str(path), preprocess=PRESETS["inception"], h5_images="x").fingerprint()


def test_npy_and_npz(tmp_path, pixel_array):
    pixels, labels = pixel_array
    nchw = np.ascontiguousarray(pixels[:3].transpose(0, 3, 1, 2))
    np.save(tmp_path / "imgs.npy", nchw)
    src = open_source(str(tmp_path / "imgs.npy"), preprocess=IMAGENET)
    _, images, got, _ = collect(src, 2)
    assert got is None and src.name == f"npy:{tmp_path / 'imgs.npy'}"
    expected = np.stack([IMAGENET.apply(Image.fromarray(p)) for p in pixels[:3]])
    assert np.array_equal(images, expected)
    np.savez(tmp_path / "xy.npz", x=pixels[:3], y=labels[:3])
    _, images, got, _ = collect(open_source(str(tmp_path / "xy.npz"), preprocess=IMAGENET), 2)
    assert np.array_equal(images, expected) and np.array_equal(got, labels[:3])
    np.savez(tmp_path / "named.npz", images=pixels[:2], labels=labels[:2])
    assert open_source(str(tmp_path / "named.npz"), preprocess=IMAGENET).labels.tolist() == labels[:2].tolist()
    np.savez(tmp_path / "wrong.npz", pics=pixels[:2])
    with pytest.raises(DataError, match="pics"):
        open_source(str(tmp_path / "wrong.npz"), preprocess=IMAGENET)


def test_array_shape_and_dtype_errors(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((2, 3, 8, 8), dtype=np.int32))
    with pytest.raises(DataError, match="dtype.*ints.npy|ints.npy.*int32"):
        open_source(str(tmp_path / "ints.npy"), preprocess=IMAGENET)
    np.save(tmp_path / "flat.npy", np.zeros((2, 64), dtype=np.uint8))
    with pytest.raises(DataError, match="wrong shape"):
        open_source(str(tmp_path / "flat.npy"), preprocess=IMAGENET)
    np.save(tmp_path / "fl.npy", np.zeros((2, 1, 1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"wrong rank.*\(2, 1, 1, 8, 8, 3\).*rank 2 to 5"):
        open_source(str(tmp_path / "fl.npy"), preprocess=IMAGENET)
    np.save(tmp_path / "nhwc.npy", np.ones((2, 8, 8, 3), dtype=np.float32))   # model-ready, any layout
    src = open_source(str(tmp_path / "nhwc.npy"), preprocess=IMAGENET)
    assert src.model_ready and next(iter(src.batches(2, progress=False))).images.shape == (2, 8, 8, 3)
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["images"] = np.zeros((2, 8, 8, 3), dtype=np.uint8)
        f["labels"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(DataError, match="labels do not match"):
        open_source(str(tmp_path / "lab.h5"), preprocess=IMAGENET)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5"):
        open_source(str(tmp_path / "junk.h5"), preprocess=IMAGENET)


def test_pixels_mode_normalizes_bit_identically():
    import torch

    src = open_source("imagenet_sample", preprocess=PRESETS["inception"], num_images=6)
    floats = np.concatenate([b.images for b in src.batches(4, progress=False)])
    pix = [b.images for b in src.batches(4, progress=False, pixels=True)]
    assert all(p.dtype == np.uint8 for p in pix)
    pix = np.concatenate(pix)
    assert np.array_equal(src.preprocess.normalize(pix), floats)
    assert np.array_equal(src.preprocess.normalize_torch(torch.from_numpy(pix)).numpy(), floats)
