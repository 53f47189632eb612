"""A model with two inputs through every stage (issue 12 item 2): named arrays in .npz/.h5, statistics and a
cache line per input, Q/DQ on both inputs, ONNX Runtime and simulated engines, evaluate, sweep, build, and the
errors for data that does not name the model's inputs."""

import struct

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core.cache import read_trt_cache
from trtquant.core.metrics import sqnr_db
from trtquant.core.types import Inputs
from trtquant.datasets import PRESETS, open_source
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.engines.registry import build
from trtquant.quant.graph.interpreter import TorchGraphExecutor
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.planner.simulate import QuantSim

T = ["--no-progress"]
N = 24


def run(args, capsys):
    rc = cli.main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def two_input_model(path):
    """image [N,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten [N,4];  aux [N,5] -> Gemm [N,4];
    Add -> Gemm -> logits [N,10]."""
    rng = np.random.default_rng(0)
    inits = {"wc": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "bc": np.zeros(4, np.float32),
             "wa": rng.standard_normal((4, 5)).astype(np.float32), "ba": np.zeros(4, np.float32),
             "wo": rng.standard_normal((10, 4)).astype(np.float32), "bo": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["image", "wc", "bc"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["aux", "wa", "ba"], ["aux_fc"], name="aux_fc", transB=1),
             helper.make_node("Add", ["flat", "aux_fc"], ["joined"], name="join"),
             helper.make_node("Gemm", ["joined", "wo", "bo"], ["logits"], name="head", transB=1)]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
                                          helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture
def two(tmp_path):
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    image = rng.standard_normal((N, 3, 8, 8)).astype(np.float32)
    aux = (rng.standard_normal((N, 5)) * 4).astype(np.float32)
    logits = TorchGraphExecutor(OnnxGraph.load(model)).run(
        {"image": torch.from_numpy(image), "aux": torch.from_numpy(aux)})["logits"].numpy()
    labels = logits.argmax(1)
    labels[:3] = (labels[:3] + 1) % 10                  # FP32 top-1 = 21/24: labels are real, not the model's argmax
    np.savez(tmp_path / "d.npz", image=image, aux=aux, labels=labels)
    return tmp_path, model, image, aux, labels


def test_named_arrays_batch_as_inputs(two):
    d, _, image, aux, labels = two
    src = open_source(str(d / "d.npz"), preprocess=PRESETS["imagenet"], inputs=("image", "aux"))
    batches = list(src.batches(10, progress=False))
    assert [len(b) for b in batches] == [10, 10, 4] and isinstance(batches[0].images, Inputs)
    np.testing.assert_array_equal(np.concatenate([b.images.arrays["aux"] for b in batches]), aux)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)


def test_every_input_gets_its_cache_line_bit_exact(two, capsys):
    d, model, image, aux, _ = two
    rc, out, err = run(["calibrate", "--onnx", model, "--data", d / "d.npz", "--method", "minmax",
                        "--cache", d / "c.bin", *T], capsys)
    assert rc == 0, err
    lines = (d / "c.bin").read_text().splitlines()
    for name, x in (("image", image), ("aux", aux)):
        want = struct.pack(">f", np.float32(np.float32(np.abs(x).max()) / np.float32(127))).hex()
        assert f"{name}: {want}" in lines
    assert set(read_trt_cache(d / "c.bin").scales) >= {"image", "aux", "conv", "relu", "flat", "aux_fc", "joined"}


def test_both_inputs_are_quantized_and_the_engines_agree(two, capsys):
    d, model, image, aux, _ = two
    assert run(["calibrate", "--onnx", model, "--data", d / "d.npz", "--method", "minmax", "--cache", d / "c.bin",
                *T], capsys)[0] == 0
    from trtquant.quant.artifacts.ranges import load_ranges

    ranges = load_ranges(d / "c.bin")[0]
    g = OnnxGraph.load(model)
    plan = resolve_plan("int8", g)
    qdq, summary = build_qdq_model(g, ranges, plan)
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert {"image", "aux", "joined"} <= quantized and summary.weight_quantizers == 3
    x = Inputs({"image": image, "aux": aux})
    fp32 = build("onnxruntime", g, resolve_plan("fp32", g)).run(x)
    ort = build("onnxruntime", g, plan, ranges).run(x)
    sim = build("torch", g, plan, ranges, device="cpu").run(x)
    qsim = QuantSim(g, ranges, torch.device("cpu")).logits(x, set(QuantSim(g, ranges, torch.device("cpu")).layers))
    assert fp32.shape == (N, 10) and sqnr_db(fp32, ort) > 25
    np.testing.assert_allclose(sim, qsim, rtol=1e-5, atol=1e-5)       # the planner simulates the shipped model
    assert sqnr_db(sim, ort) > 40


def test_evaluate_sweep_and_build_take_two_inputs(two, capsys):
    d, model, *_ = two
    rc, out, err = run(["evaluate", "--onnx", model, "--data", d / "d.npz", "--configs", "fp32,int8:minmax",
                        "--calib-images", "24", "--latency-iters", "2", "--out", d / "ev", *T], capsys)
    assert rc == 0, err
    from trtquant.core.records import Evaluation, read_document

    doc = read_document(Evaluation, d / "ev" / "results.json")
    rows = {r.config: r for r in doc.results}
    assert rows["fp32"].top1 == pytest.approx(21 / 24) and rows["int8:minmax"].sqnr_db > 25
    rc, out, err = run(["sweep", "--onnx", model, "--data", d / "d.npz", "--target-drop", "agree:100%",
                        "--calib-images", "24", "--proxy-images", "24", "--out", d / "sw", *T], capsys)
    assert rc == 0, err
    assert "--shapes=image:1x3x8x8,aux:1x5" in (d / "sw" / "sweep.md").read_text()
    rc, out, err = run(["build", "--onnx", model, "--precision", "int8", "--backend", "onnxruntime",
                        "--ranges", d / "sw" / "calib.bin", "--out", d / "b"], capsys)
    assert rc == 0, err
    assert "--shapes=image:1x3x8x8,aux:1x5" in (d / "b" / "engine.json").read_text()


@pytest.mark.parametrize("arrays,needle", [
    ({"image": np.zeros((4, 3, 8, 8), np.float32)}, "missing: 'aux'"),
    ({"image": np.zeros((4, 3, 8, 8), np.float32), "aux": np.zeros((4, 5), np.float32),
      "depth": np.zeros((4, 1), np.float32)}, "extra: 'depth'"),
    ({"image": np.zeros((4, 3, 8, 8), np.float32), "aux": np.zeros((3, 5), np.float32)}, "different numbers of rows"),
    ({"image": np.zeros((4, 3, 8, 8), np.float32), "aux": np.zeros((4, 6), np.float32)}, "model input 'aux'"),
])
def test_arrays_that_do_not_name_the_inputs_are_exit_2_listing_both_sets(tmp_path, capsys, arrays, needle):
    model = two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "bad.npz", **arrays)
    rc, _, err = run(["calibrate", "--onnx", model, "--data", tmp_path / "bad.npz", "--cache", tmp_path / "c.bin", *T],
                     capsys)
    assert rc == 2 and needle in err and "Traceback" not in err
    if "missing" in needle or "extra" in needle:
        assert "model inputs 'image', 'aux'" in err
    assert not (tmp_path / "c.bin").exists()


def test_images_cannot_feed_a_two_input_model(tmp_path, capsys):
    model = two_input_model(tmp_path / "two.onnx")
    rc, _, err = run(["calibrate", "--onnx", model, "--cache", tmp_path / "c.bin", *T], capsys)
    assert rc == 2 and "a model with several inputs needs named arrays" in err and "'image', 'aux'" in err
    assert not (tmp_path / "c.bin").exists()


def test_hdf5_named_arrays(two, capsys):
    h5py = pytest.importorskip("h5py")
    d, model, image, aux, labels = two
    with h5py.File(d / "d.h5", "w") as f:
        f["image"], f["aux"], f["labels"] = image, aux, labels
    rc, _, err = run(["calibrate", "--onnx", model, "--data", d / "d.h5", "--method", "minmax", "--cache", d / "h.bin",
                      *T], capsys)
    assert rc == 0, err
    assert run(["calibrate", "--onnx", model, "--data", d / "d.npz", "--method", "minmax", "--cache", d / "n.bin", *T],
               capsys)[0] == 0
    assert (d / "h.bin").read_text() == (d / "n.bin").read_text()
