"""Issue 12: models whose input is not an (N, 3, 224, 224) image, and models with a fixed batch.

Every model is built here with onnx.helper; the caches are checked bit-exact against amax / 127
computed by hand (minmax), the evaluations against the FP32 run of the same graph.
"""

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core.cache import read_ranges_json, read_trt_cache

T = ["--no-progress"]


def run(args, capsys):
    rc = cli.main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def save(path, nodes, inp, out, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, inp)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
                          initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def scale_hex(amax: float) -> str:
    return struct.pack(">f", np.float32(np.float32(amax) / np.float32(127))).hex()


def test_the_issue_example_one_channel_float_array_calibrates(tmp_path, capsys):
    """relu.onnx with input [N, 1, 32, 32] and a matching float32 array: the issue's command, as it was typed."""
    save(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["N", 1, 32, 32], ["N", 1, 32, 32])
    x = np.random.default_rng(0).standard_normal((64, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, _, err = run(["calibrate", "--onnx", tmp_path / "relu.onnx", "--data", tmp_path / "x.npy", "--method", "minmax",
                      "--cache", tmp_path / "e.bin", *T], capsys)
    assert rc == 0, err
    lines = (tmp_path / "e.bin").read_text().splitlines()
    assert lines[1:] == [f"x: {scale_hex(np.abs(x).max())}", f"y: {scale_hex(np.maximum(x, 0).max())}"]
    assert read_ranges_json(tmp_path / "e.bin.ranges.json").num_images == 64


@pytest.mark.parametrize("case", ["nhwc", "rank2", "rank5", "nonsquare"])
def test_arrays_shaped_like_the_model_input_feed_as_they_are(tmp_path, capsys, case):
    rng = np.random.default_rng(1)
    if case == "nhwc":        # an NHWC model: Transpose into a 1x1 conv with 4 channels
        w = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                 helper.make_node("Conv", ["t", "w"], ["y"])]
        inp, out, inits, shape = ["N", 12, 10, 4], ["N", 5, 12, 10], [("w", w)], (6, 12, 10, 4)
    elif case == "rank2":     # a tabular MLP: Gemm on (N, 16)
        w = rng.standard_normal((16, 3)).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inp, out, inits, shape = ["N", 16], ["N", 3], [("w", w)], (6, 16)
    elif case == "rank5":     # a volume (N, C, D, H, W), e.g. a CT scan
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        inp, out, inits, shape = ["N", 2, 3, 4, 5], ["N", 2, 3, 4, 5], [], (6, 2, 3, 4, 5)
    else:                     # non-square, dynamic H and W
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        inp, out, inits, shape = ["N", 3, "H", "W"], ["N", 3, "H", "W"], [], (6, 3, 20, 36)
    save(tmp_path / "m.onnx", nodes, inp, out, inits)
    x = rng.standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc, _, err = run(["calibrate", "--onnx", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", "--method", "minmax",
                      "--cache", tmp_path / "c.bin", *T], capsys)
    assert rc == 0, err
    assert read_trt_cache(tmp_path / "c.bin").scales["x"] == pytest.approx(float(np.abs(x).max()) / 127, rel=1e-6)


def test_an_array_that_does_not_match_the_input_names_both_shapes_and_writes_nothing(tmp_path, capsys):
    save(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["N", 1, 32, 32], ["N", 1, 32, 32])
    np.save(tmp_path / "x.npy", np.zeros((8, 3, 32, 32), np.float32))
    rc, _, err = run(["calibrate", "--onnx", tmp_path / "relu.onnx", "--data", tmp_path / "x.npy",
                      "--cache", tmp_path / "e.bin", *T], capsys)
    assert rc == 2 and "input shape mismatch" in err and "model input 'x'" in err
    assert "(8, 3, 32, 32)" in err and "('N', 1, 32, 32)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx", "x.npy"]


def fixed_batch_model(path, batch):
    """A classifier whose graph hard-codes its batch: Reshape to [batch, 48] then MatMul to 10 classes."""
    w = np.random.default_rng(2).standard_normal((48, 10)).astype(np.float32)
    save(path, [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])],
         [batch, 3, 4, 4], [batch, 10], [("w", w), ("shape", np.array([batch, 48], np.int64))])
    return w


def test_a_fixed_batch_model_calibrates_on_full_batches_only(tmp_path, capsys, caplog):
    caplog.set_level("WARNING")
    fixed_batch_model(tmp_path / "b2.onnx", 2)
    x = np.random.default_rng(3).standard_normal((5, 3, 4, 4)).astype(np.float32)
    x[4] *= 100                                 # the fifth image (left out: it does not fill a batch of 2)
    np.save(tmp_path / "x.npy", x)
    rc, _, err = run(["calibrate", "--onnx", tmp_path / "b2.onnx", "--data", tmp_path / "x.npy", "--method", "minmax",
                      "--batch-size", "32", "--cache", tmp_path / "c.bin", *T], capsys)
    assert rc == 0, err
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("fixed batch of 2" in m and "not --batch-size 32" in m for m in msgs) == 1
    assert any("the last 1 image(s) do not fill the model's fixed batch of 2" in m for m in msgs)
    rs = read_ranges_json(tmp_path / "c.bin.ranges.json")
    assert rs.num_images == 4
    assert read_trt_cache(tmp_path / "c.bin").scales["x"] == pytest.approx(float(np.abs(x[:4]).max()) / 127, rel=1e-6)


def test_a_fixed_batch_model_evaluates_every_image(tmp_path, capsys):
    """10 images on a batch-4 model: the last batch is padded and the padding's outputs dropped."""
    w = fixed_batch_model(tmp_path / "b4.onnx", 4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 3, 4, 4)).astype(np.float32)
    labels = (x.reshape(10, 48) @ w).argmax(1)          # FP32 is right on every image
    np.savez(tmp_path / "d.npz", images=x, labels=labels)
    rc, out, err = run(["evaluate", "--onnx", tmp_path / "b4.onnx", "--data", tmp_path / "d.npz", "--configs",
                        "fp32,int8:minmax", "--calib-images", "8", "--latency-iters", "3",
                        "--out", tmp_path / "ev", *T], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert doc["data"]["images"] == 10
    fp32 = next(r for r in doc["results"] if r["config"] == "fp32")
    assert fp32["top1"] == 1.0 and fp32["latency_ms"]["batch"] == 4 and fp32["throughput"]["batch"] == 4
    assert doc["calibration"]["images"] == 8


# ---- greyscale models fed from image folders ---------------------------------------------------

def foolbox_jpgs():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox is not installed (pip install --no-deps foolbox==3.3.4)")
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("imagenet_*.jpg"))


def test_the_grayscale_preset_matches_torchvision():
    from PIL import Image
    from torchvision import transforms as TV

    from trtquant.datasets import PRESETS

    pre = PRESETS["grayscale"]
    ref_tf = TV.Compose([TV.Grayscale(1), TV.Resize(pre.resize), TV.CenterCrop(pre.crop), TV.ToTensor(),
                         TV.Normalize(pre.mean, pre.std)])
    for path in [foolbox_jpgs()[i] for i in (0, 10)]:          # 10: the non-square 1024x683 image
        with Image.open(path) as img:
            out = pre.apply(img)
            ref = ref_tf(img.convert("RGB")).numpy()
            grey = np.asarray(img.convert("L"))
        assert out.shape == (1, 224, 224) and out.dtype == np.float32
        assert np.abs(out - ref).max() < 1e-5
        assert np.array_equal(pre.apply_array(grey), out)       # a uint8 greyscale array: the same pixels


def grey_conv(path, size):
    w = np.random.default_rng(5).standard_normal((4, 1, 3, 3)).astype(np.float32)
    save(path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], ["N", 1, size, size],
         ["N", 4, size, size], [("w", w)])


def test_a_grayscale_model_calibrates_on_an_image_folder(tmp_path, capsys):
    import shutil

    grey_conv(tmp_path / "g.onnx", 64)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in foolbox_jpgs()[:4]:
        shutil.copy(p, folder / p.name)
    args = ["calibrate", "--onnx", tmp_path / "g.onnx", "--data", folder, "--method", "minmax", *T]
    rc, _, err = run([*args, "--cache", tmp_path / "rgb.bin"], capsys)      # the default preset makes RGB
    assert rc == 2 and "the preprocessing preset cannot produce the model's input" in err
    assert "model input 'x'" in err and "3-channel" in err and "--preset grayscale" in err
    assert not (tmp_path / "rgb.bin").exists()
    rc, _, err = run([*args, "--preset", "grayscale", "--cache", tmp_path / "g.bin"], capsys)
    assert rc == 0, err
    # the crop followed the model's 64x64 input; the input's amax is that of the preprocessed pixels
    from PIL import Image
    from trtquant.datasets import PRESETS
    from dataclasses import replace

    pre = replace(PRESETS["grayscale"], crop=64, resize=73)          # 73 = round(64 * 256 / 224)
    amax = 0.0
    for p in sorted(folder.iterdir()):
        with Image.open(p) as img:
            amax = max(amax, float(np.abs(pre.apply(img)).max()))
    assert read_trt_cache(tmp_path / "g.bin").scales["x"] == pytest.approx(amax / 127, rel=1e-6)
