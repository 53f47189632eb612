"""The divergence debugger: numbers against hand computations on tiny ONNX models, the decomposition
(added vs inherited, weight vs activation), a deliberately broken layer named as the first jump
(a range 100x too small; a weight outlier that ruins one layer's per-channel scales), the suggested
FP16 plan, bad input through the CLI, and MobileNetV2 on the bundled images."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core import metrics
from trtquant.core.cache import read_ranges_json, write_ranges_json
from trtquant.core.records import Debug, read_document
from trtquant.core.types import RangeSet, TensorRange
from trtquant.quant.artifacts.plan import PrecisionPlan, preset_plan
from trtquant.quant.calibrate import calibrate
from trtquant.quant.debug import debug
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.planner.simulate import QuantSim
from trtquant.quant.settings import CalibrationConfig, DebugSettings

from test_multi_input import two_input_model

IMAGES = 8


def _save(path: Path, nodes, inits, out_channels: int) -> Path:
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_channels])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def chain_weights(seed: int = 0) -> dict:
    """conv1 3->8 (output channel 7 is always 0: zero weights, bias -1, then Relu), conv2 8->8, conv3 8->8, Gemm 8->10."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.full(8, 0.1, np.float32)
    w1[7], b1[7] = 0.0, -1.0
    return {"w1": w1, "b1": b1, "w2": rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32),
            "b2": np.zeros(8, np.float32), "w3": rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32),
            "b3": np.zeros(8, np.float32), "fw": rng.normal(0, 0.5, (10, 8)).astype(np.float32),
            "fb": np.zeros(10, np.float32)}


def chain_model(path: Path, weights: dict) -> Path:
    """x -> conv1 -> relu1 -> conv2 -> relu2 -> conv3 -> relu3 -> GlobalAveragePool -> Flatten -> fc."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1, name="fc")]
    return _save(path, nodes, weights, 10)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The chain model, its data (model-ready arrays) and its minmax ranges."""
    d = tmp_path_factory.mktemp("chain")
    model = chain_model(d / "chain.onnx", chain_weights())
    data = d / "x.npy"
    np.save(data, np.random.default_rng(1).normal(0, 1, (IMAGES, 3, 16, 16)).astype(np.float32))
    res = calibrate(CalibrationConfig(onnx=str(model), data=str(data), method="minmax", device="cpu"),
                    cache_path=d / "c.bin", progress=False)
    return d, model, data, d / "c.bin.ranges.json", res.ranges


def settings(model, data, ranges, **kw) -> DebugSettings:
    return DebugSettings(onnx=str(model), data=str(data), ranges=str(ranges), batch_size=4, device="cpu", **kw)


def rows_by_node(doc: Debug) -> dict:
    return {r.node: r for r in doc.tensors}


def with_amax(ranges: RangeSet, tensor: str, factor: float, path: Path) -> Path:
    new = dict(ranges.ranges)
    new[tensor] = TensorRange(tensor, ranges.ranges[tensor].amax * factor)
    write_ranges_json(path, replace(ranges, ranges=new))
    return path


# --- (2) the numbers of a one-node model, by hand ---------------------------------------------------

def test_one_conv_sqnr_cosine_and_views_against_a_hand_computation(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits_map"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Flatten", ["logits_map"], ["logits"], axis=1, name="flatten")]
    model = tmp_path / "one.onnx"
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1024])],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(model))
    x = rng.normal(0, 1, (6, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    amax = 1.5                                       # clips the input's tails: activation error is real
    write_ranges_json(tmp_path / "r.json", RangeSet({"x": TensorRange("x", amax)}, "hand"))
    doc = debug(settings(model, tmp_path / "x.npy", tmp_path / "r.json"), tmp_path / "out", progress=False)

    # by hand: symmetric INT8, round half to even, per-tensor input scale amax/127, per-channel weight max|w_c|/127
    s = np.float32(amax) / np.float32(127)
    xq = np.clip(np.round(x / s), -128, 127) * s
    ws = np.abs(w).reshape(4, -1).max(1) / np.float32(127)
    wq = np.clip(np.round(w / ws[:, None, None, None]), -128, 127) * ws[:, None, None, None]

    def conv(a, k):
        return F.conv2d(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(k, np.float64)),
                        torch.from_numpy(b.astype(np.float64)), padding=1).numpy()

    ref, both, w_only, a_only = conv(x, w), conv(xq, wq), conv(x, wq), conv(xq, w)

    def sqnr(approx):
        return 10 * np.log10((ref ** 2).sum() / ((approx - ref) ** 2).sum())

    cos = np.mean([(r * q).sum() / np.linalg.norm(r) / np.linalg.norm(q) for r, q in zip(ref, both)])
    row = rows_by_node(doc)["conv"]
    assert row.sqnr_db == pytest.approx(sqnr(both), abs=2e-4)
    assert row.added_sqnr_db == pytest.approx(sqnr(both), abs=2e-4)
    assert row.weight_sqnr_db == pytest.approx(sqnr(w_only), abs=2e-4)
    assert row.activation_sqnr_db == pytest.approx(sqnr(a_only), abs=2e-4)
    assert row.cosine == pytest.approx(cos, abs=1e-8)
    assert row.inherited_sqnr_db == math.inf                     # its input is FP32's own
    assert row.activation_sqnr_db < row.weight_sqnr_db           # the clipped input dominates: a real difference
    flat = rows_by_node(doc)["flatten"]                          # no quantizer of its own: adds nothing
    assert flat.added_sqnr_db == math.inf and flat.sqnr_db == pytest.approx(row.sqnr_db, abs=1e-9)
    assert flat.weight_sqnr_db is None and flat.activation_sqnr_db is None and not flat.quantizers
    assert doc.suggestion.output_sqnr_db == pytest.approx(sqnr(both), abs=2e-4)
    assert read_document(Debug, tmp_path / "out" / "debug.json") == doc          # the one codec round-trips


# --- (3) the decomposition ---------------------------------------------------------------------------

def test_added_and_inherited_decompose_the_accumulated_error(chain, tmp_path):
    d, model, data, ranges_path, _ = chain
    doc = debug(settings(model, data, ranges_path), tmp_path / "out", progress=False)
    rows = rows_by_node(doc)
    assert [r.node for r in doc.tensors] == ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "gap", "flatten", "fc"]
    c1 = rows["conv1"]                   # FP32 inputs: nothing inherited, everything added here
    assert c1.inherited_sqnr_db == math.inf and c1.added_sqnr_db == c1.sqnr_db
    for name in ("relu1", "relu2", "relu3", "flatten"):       # no quantizers of their own
        assert rows[name].added_sqnr_db == math.inf and rows[name].inherited_sqnr_db == rows[name].sqnr_db
        assert not rows[name].quantizers and rows[name].layer is None
    gap = rows["gap"]                    # TensorRT's pooling-input quantizer, there because conv3 is INT8
    assert gap.quantizers == ("pooling input r3",) and gap.layer == "conv3" and gap.weight_sqnr_db is None
    assert gap.activation_sqnr_db == gap.added_sqnr_db and math.isfinite(gap.added_sqnr_db)
    for name in ("conv2", "conv3", "fc"):
        r = rows[name]
        assert r.quantizers and r.layer == name and math.isfinite(r.inherited_sqnr_db)
        # independent small errors: noise powers add (added + inherited = accumulated, within 25 %)
        noise = 10 ** (-r.added_sqnr_db / 10) + 10 ** (-r.inherited_sqnr_db / 10)
        assert noise == pytest.approx(10 ** (-r.sqnr_db / 10), rel=0.25)
        # weight and activation alone each add less than both together
        assert r.weight_sqnr_db > r.added_sqnr_db and r.activation_sqnr_db > r.added_sqnr_db
    assert doc.first_jump is None                            # minmax on its own data: every layer adds > 30 dB
    assert min(rows[n].added_sqnr_db for n in ("conv1", "conv2", "conv3", "fc")) > 30


# --- (1) a deliberately broken layer is named first ----------------------------------------------

def test_a_range_100x_too_small_is_named_as_the_first_jump(chain, tmp_path):
    d, model, data, _, ranges = chain
    broken = with_amax(ranges, "r1", 0.01, tmp_path / "broken.json")      # conv2's input range, 100x too small
    doc = debug(settings(model, data, broken), tmp_path / "out", progress=False)
    j = doc.first_jump
    assert (j.node, j.tensor, j.cause, j.layer) == ("conv2", "c2", "activation", "conv2")
    rows = rows_by_node(doc)
    assert rows["conv2"].activation_sqnr_db < 5 and rows["conv2"].weight_sqnr_db > 30
    assert rows["conv3"].added_sqnr_db > 30                  # downstream layers add their usual error...
    assert rows["conv3"].inherited_sqnr_db < 5               # ...and inherit conv2's
    assert doc.suggestion.fp16_layers[0] == "conv2"


def test_a_weight_outlier_that_ruins_one_layers_scales_is_named_as_the_first_jump(chain, tmp_path):
    d, _, data, _, _ = chain
    weights = chain_weights()
    w2 = weights["w2"]
    w2[:, 7, 1, 1] = 100 * np.abs(w2).max()        # reads input channel 7, always 0: FP32 unchanged, scales 100x
    model = chain_model(tmp_path / "outlier.onnx", weights)
    doc = debug(DebugSettings(onnx=str(model), data=str(data), method="minmax", batch_size=4, device="cpu"),
                tmp_path / "out", progress=False)
    j = doc.first_jump
    assert (j.node, j.cause) == ("conv2", "weight")
    rows = rows_by_node(doc)
    assert rows["conv2"].weight_sqnr_db < 10 and rows["conv2"].activation_sqnr_db > 30
    assert rows["conv1"].added_sqnr_db > 30 and rows["conv3"].added_sqnr_db > 30


def test_debug_calibrates_with_method_auto(chain, tmp_path):
    """``debug --method auto`` runs the auto pass on its calibration images (it used to stop after the
    statistics pass: the auto method had no model and images to measure its candidates on)."""
    d, model, data, _, _ = chain
    doc = debug(DebugSettings(onnx=str(model), data=str(data), method="auto", batch_size=4, device="cpu"),
                tmp_path / "out", progress=False)
    assert doc.calibration.startswith("auto ranges from")
    ranges = json.loads((tmp_path / "out" / "debug.json").read_text())
    assert {r["node"] for r in ranges["tensors"]} >= {"conv1", "conv2", "conv3"}


# --- (4) the suggested plan ----------------------------------------------------------------------

def test_the_suggested_plan_keeps_the_worst_layers_fp16_and_improves_sqnr(chain, tmp_path):
    d, model, data, _, ranges = chain
    with_amax(ranges, "r1", 0.01, tmp_path / "b1.json")                      # conv2 and conv3 broken
    broken = with_amax(read_ranges_json(tmp_path / "b1.json"), "r2", 0.05, tmp_path / "b2.json")
    out = tmp_path / "out"
    doc = debug(settings(model, data, broken, worst=2), out, progress=False)
    s = doc.suggestion
    rows = rows_by_node(doc)
    assert set(s.fp16_layers) == {"conv2", "conv3"}
    assert rows[s.fp16_layers[0]].added_sqnr_db <= rows[s.fp16_layers[1]].added_sqnr_db   # worst first
    plan = PrecisionPlan.load(out / "plan.json")
    assert sorted(plan.nodes("fp16")) == ["conv2", "conv3"] and sorted(plan.nodes("int8")) == ["conv1", "fc"]
    assert s.layer_precisions == ",".join(f"{n}:fp16" for n in plan.nodes("fp16"))
    # simulated independently: the suggested plan's output is closer to FP32, by the number the report gives
    graph = OnnxGraph.load(model)
    sim = QuantSim(graph, read_ranges_json(broken), torch.device("cpu"))
    x = np.load(data)
    ref = sim.logits(x, set())
    assert metrics.sqnr_db(ref, sim.logits(x, set(plan.nodes("int8")))) == pytest.approx(s.suggested_output_sqnr_db,
                                                                                         abs=1e-6)
    assert metrics.sqnr_db(ref, sim.logits(x, set(sim.layers))) == pytest.approx(s.output_sqnr_db, abs=1e-3)
    assert s.suggested_output_sqnr_db > s.output_sqnr_db + 10
    html = (out / "debug.html").read_text()
    assert "<svg" in html and 'class="jump"' in html and "--layerPrecisions=conv2:fp16" in html
    # debugging the suggested plan (into the same folder: its own files are replaced): the FP16 layers have no
    # quantizers left, and no layer jumps
    again = debug(settings(model, data, broken, precision=str(out / "plan.json")), out, progress=False)
    again_rows = rows_by_node(again)
    assert not again_rows["conv2"].quantizers and again_rows["conv2"].added_sqnr_db == math.inf
    assert again.first_jump is None and again.plan.name == plan.name
    assert read_document(Debug, out / "debug.json") == again and 'class="jump"' not in (out / "debug.html").read_text()


# --- (5) bad input -------------------------------------------------------------------------------

def run(args, capsys):
    rc = cli.main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def test_bad_input_is_exit_2_with_nothing_written(chain, tmp_path, capsys):
    d, model, data, ranges_path, _ = chain
    base = ["debug", "--onnx", model, "--data", data, "--ranges", ranges_path, "--device", "cpu", "--no-progress"]
    out = tmp_path / "out"
    (tmp_path / "notaplan.json").write_text('{"theme": "dark"}\n')
    unknown = json.loads(PrecisionPlan.load(_plan(tmp_path, model)).to_json())
    unknown["layers"].append({"node": "conv_2", "precision": "fp16", "reason": "typo"})
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    cases = [(["--plan", tmp_path / "notaplan.json"], "not a plan file"),
             (["--precision", tmp_path / "unknown.json"], "conv_2"),
             (["--precision", "fp32"], "nothing to debug"),
             (["--precision", "int9"], "unknown precision"),
             (["--method", "minmax"], "--method has no effect with --ranges")]
    for extra, words in cases:
        rc, _, err = run(base + ["--out", out] + extra, capsys)
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, (extra, err)
        assert words is None or words in err, (extra, err)
        assert not out.exists()
    rc, _, err = run(base[:5] + ["--ranges", tmp_path / "missing.json", "--out", out], capsys)
    assert rc == 2 and "--ranges" in err and not out.exists()
    rc, _, err = run(base[:5] + ["--method", "mse2", "--out", out], capsys)          # calibrating here
    assert rc == 2 and "mse2" in err and not out.exists()
    with pytest.raises(SystemExit) as e:                                             # argparse: the flag's type
        cli.main([str(a) for a in base + ["--out", out, "--worst", "0"]])
    assert e.value.code == 2 and "--worst: got 0" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "debug.json").write_text('{"mine": 1}\n')                  # a user's file under an output name
    rc, _, err = run(base + ["--out", out], capsys)
    assert rc == 2 and "refusing to overwrite" in err and (out / "debug.json").read_text() == '{"mine": 1}\n'


def _plan(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "int8_plan.json"
    preset_plan("int8", OnnxGraph.load(model)).save(path)
    return path


# --- MobileNetV2 on the bundled images -------------------------------------------------------------

def test_mobilenet_v2_names_a_broken_layer_first(mobilenet_ranges, tmp_path, capsys):
    """The output of features.0 feeds only the depthwise conv of features.1: a range 100x too small there is
    the first jump, blamed on the activation, and the CLI prints and writes it."""
    tensor = "/features/features.0/features.0.2/Clip_output_0"
    broken = with_amax(mobilenet_ranges, tensor, 0.01, tmp_path / "broken.json")
    out = tmp_path / "out"
    rc, printed, _ = run(["debug", "--ranges", broken, "--num-images", 4, "--batch-size", 4, "--device", "cpu",
                          "--worst", 2, "--out", out, "--no-progress"], capsys)
    assert rc == 0
    doc = read_document(Debug, out / "debug.json")
    j = doc.first_jump
    assert j.node == "/features/features.1/conv/conv.0/conv.0.0/Conv" and j.cause == "activation"
    assert j.node in printed and "--layerPrecisions=" in printed
    assert len(doc.tensors) == 100 and doc.data.images == 4 and doc.suggestion.fp16_layers[0] == j.node
    assert doc.suggestion.suggested_output_sqnr_db > doc.suggestion.output_sqnr_db


def test_a_model_with_two_inputs_is_fed_by_name(tmp_path):
    """Each input's first layer reads FP32's own input: nothing inherited; the join inherits both branches."""
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "two.npz", image=rng.normal(0, 1, (IMAGES, 3, 8, 8)).astype(np.float32),
             aux=rng.normal(0, 1, (IMAGES, 5)).astype(np.float32))
    doc = debug(DebugSettings(onnx=str(model), data=str(tmp_path / "two.npz"), method="minmax", batch_size=4,
                              device="cpu"), tmp_path / "out", progress=False)
    rows = rows_by_node(doc)
    assert doc.batches == 2 and doc.data.images == IMAGES
    assert rows["conv"].inherited_sqnr_db == math.inf and rows["aux_fc"].inherited_sqnr_db == math.inf
    assert math.isfinite(rows["join"].inherited_sqnr_db) and math.isfinite(rows["head"].inherited_sqnr_db)
    assert rows["head"].sqnr_db == pytest.approx(doc.suggestion.output_sqnr_db, abs=1e-4)
