"""The latency model and the latency objective: the roofline against hand-computed kernels, the search and the
Pareto front on synthetic tables, GPU resolution, and a sweep that plans for latency end to end."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core.errors import ConfigError
from trtquant.core.gpus import FALLBACK_GPU, GPUS, GpuSpec, resolve_gpu
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.planner.latency import LayerTimesModel, RooflineModel, latency_order
from trtquant.quant.planner.search import greedy_search, pareto_front
from trtquant.quant.settings import SweepSettings
from trtquant.quant.sweep import sweep

# 1 GB/s and 2 / 1 TOPS: every figure below is a count of bytes or operations, in microseconds or nanoseconds
SLOW = GpuSpec("test", "test GPU", int8_tops=2, fp16_tflops=1, bandwidth_gbs=1, pattern=r"^$")


def two_convs(branch: bool = False) -> OnnxGraph:
    """input 1x4x8x8 -> Conv A (8 out, 3x3, pad 1) -> Relu -> Conv B (8 out, 1x1) -> output; with ``branch``
    a Conv C (8 out, 1x1) reads A's output too and an Add sums B and C."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n)
            for n, s in (("wa", (8, 4, 3, 3)), ("wb", (8, 8, 1, 1)), ("wc", (8, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["input", "wa"], ["a"], pads=[1, 1, 1, 1], name="A"),
             helper.make_node("Relu", ["a"], ["ra"], name="relu"),
             helper.make_node("Conv", ["ra", "wb"], ["b"], name="B")]
    out = "b"
    if branch:
        nodes += [helper.make_node("Conv", ["ra", "wc"], ["c"], name="C"),
                  helper.make_node("Add", ["b", "c"], ["sum"], name="add")]
        out = "sum"
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 8, 8, 8])],
                          initializer=init[:3 if branch else 2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return OnnxGraph(model)


X = np.zeros((3, 4, 8, 8), np.float32)


def test_roofline_kernels_by_hand():
    m = RooflineModel(two_convs(), X, SLOW, batch=2, overhead_us=0)
    a, b = m.kernels
    # A: 8x8x8 outputs x (4 x 3 x 3) MACs; the Relu is fused into its epilogue (its output is what A writes)
    assert (a.macs, a.act_in, a.weights, a.out, a.out_elems, a.readers) == (512 * 36, 256, 288, "ra", 512, ["B"])
    assert (b.macs, b.act_in, b.weights, b.readers) == (512 * 8, 512, 64, [""])
    # bytes per kernel at batch 2 (1 GB/s: bytes are nanoseconds), every kernel memory-bound here:
    # all INT8: A reads 2x256 + 288 at 1 B, writes 2x512 at 1 B (B is INT8) = 1824; B reads 2x512 + 64 at 1 B,
    # writes the graph output at 2 B = 1088 + 2048 = 3136; the input is quantized for A: 3 x 2 x 256 = 1536
    assert m.estimate({"A", "B"}) == pytest.approx((1824 + 3136 + 1536) * 1e-9)
    # A in FP16: reads at 2 B, writes INT8 for B (its quantizer fused): 1600 + 1024; no reformat of the input
    assert m.estimate({"B"}) == pytest.approx((2624 + 3136) * 1e-9)
    # B in FP16: A writes FP16 for it: 800 + 2048; B: (1024 + 64) x 2 + 2048; the input reformat stays
    assert m.estimate({"A"}) == pytest.approx((2848 + 4224 + 1536) * 1e-9)
    assert m.estimate(set()) == pytest.approx((3648 + 4224) * 1e-9)
    costs = m.fp16_costs()          # keeping A in FP16 is *cheaper*: it saves the input's reformat
    assert costs["A"] == pytest.approx((5760 - 6496) * 1e-9) and costs["B"] == pytest.approx((8608 - 6496) * 1e-9)
    # one fixed overhead per kernel and per reformat
    assert RooflineModel(two_convs(), X, SLOW, batch=2, overhead_us=1).estimate({"A", "B"}) == pytest.approx(
        (1824 + 3136 + 1536) * 1e-9 + 3e-6)
    # compute-bound: with (almost) unlimited bandwidth the time is 2 MACs / peak, INT8 at twice FP16's peak
    fast = RooflineModel(two_convs(), X, GpuSpec("x", "x", 2, 1, 1e12, r"^$"), batch=2, overhead_us=0)
    flops = 2 * 2 * (512 * 36 + 512 * 8)
    assert fast.estimate({"A", "B"}) == pytest.approx(flops / 2e12, rel=1e-3)
    assert fast.estimate(set()) == pytest.approx(flops / 1e12, rel=1e-3)


def test_a_tensor_read_in_two_precisions_costs_a_reformat():
    m = RooflineModel(two_convs(branch=True), X, SLOW, batch=1, overhead_us=0)
    assert [k.anchor for k in m.kernels] == ["A", "B", "C"]
    assert sorted(m.kernels[0].readers) == ["B", "C"]
    assert m.kernels[1].inputs == ("ra", "c")             # the Add is fused into B: it reads C's output
    mixed = m.breakdown({"A", "B"})                        # C in FP16 reads A's output: A writes FP16 + a reformat
    assert mixed["reformat_s"] == pytest.approx((3 * 256 + 3 * 512) * 1e-9)
    assert m.breakdown({"A", "B", "C"})["reformat_s"] == pytest.approx(3 * 256 * 1e-9)   # the input only


def test_mobilenet_v2_macs_and_int8_is_faster(mobilenet):
    m = RooflineModel(mobilenet.graph, np.zeros((1, 3, 224, 224), np.float32), GPUS["h200"], batch=32)
    # MobileNetV2 1.0 at 224: 300 M multiply-adds (Sandler et al. 2018, table 4)
    assert sum(k.macs for k in m.kernels) == pytest.approx(300.8e6, rel=0.005)
    assert len(m.layers) == 53 and {k.layer for k in m.kernels if k.layer} == set(m.layers)
    int8, fp16 = m.estimate(m.layers), m.estimate(set())
    assert 1.2 < fp16 / int8 < 2.0                         # memory-bound layers: INT8 moves half the bytes
    costs = m.fp16_costs()
    assert max(costs.values()) > 0 and all(np.isfinite(list(costs.values())))


def test_latency_order_and_the_latency_objective():
    regain = {"a": 2.0, "b": 1.5, "c": 0.1, "free": 0.0}
    cost = {"a": 10.0, "b": 1.0, "c": 1.0, "free": -0.5}
    assert latency_order(regain, cost) == ["free", "b", "a", "c"]     # free first, then regain per microsecond
    meets = lambda fp16: 1.0 if ("a" in fp16 or "b" in fp16) else 0.0          # noqa: E731
    plan_cost = lambda fp16: sum(cost[n] for n in fp16)                         # noqa: E731
    by_layers = greedy_search(sorted(regain, key=lambda k: -regain[k]), meets, lambda m: m >= 1)
    by_latency = greedy_search(latency_order(regain, cost), meets, lambda m: m >= 1, cost=plan_cost,
                               prune_order=[n for n in sorted(cost, key=lambda k: -cost[k]) if cost[n] > 0])
    assert by_layers.fp16 == ("a",)
    assert set(by_latency.fp16) == {"free", "b"} and plan_cost(by_latency.fp16) == 0.5
    # the result is the cheapest plan that met, whatever the order the search found them in
    met = [s for s in by_latency.path if s.met]
    assert plan_cost(by_latency.fp16) == min(s.cost for s in met)


def test_pareto_front_by_hand():
    pts = [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.7, 2.0), (0.9, 5.0), (0.4, 1.0)]
    assert pareto_front(pts) == [0, 1, 4]      # (0.6, 3) and (0.4, 1) are dominated, the second (0.7, 2) repeats
    assert pareto_front([]) == [] and pareto_front([(0.1, 9.0)]) == [0]


def test_target_gpu_resolution():
    assert resolve_gpu("auto", "NVIDIA H200")[0].key == "h200"
    assert resolve_gpu("auto", "NVIDIA H100 80GB HBM3")[0].key == "h100-sxm"
    assert resolve_gpu("auto", "NVIDIA H100 PCIe")[0].key == "h100-pcie"
    assert resolve_gpu("auto", "NVIDIA A100-SXM4-80GB")[0].key == "a100"
    assert resolve_gpu("auto", "NVIDIA A10")[0].key == "a10"
    assert resolve_gpu("auto", "NVIDIA L4")[0].key == "l4" and resolve_gpu("auto", "NVIDIA L40S")[0].key == "l40s"
    assert resolve_gpu("auto", "Tesla T4")[0].key == "t4"
    gpu, why = resolve_gpu("auto", "NVIDIA B200")
    assert gpu.key == FALLBACK_GPU and "not in the table" in why
    assert resolve_gpu("auto", None)[0].key == FALLBACK_GPU and resolve_gpu("l4", "NVIDIA H200")[0].key == "l4"
    with pytest.raises(ConfigError) as err:
        SweepSettings(target_gpu="h900")
    assert err.value.subject == "--target-gpu" and "h200" in str(err.value)
    with pytest.raises(ConfigError):
        SweepSettings(objective="speed")


def test_sweep_plans_for_latency_and_draws_the_front(tmp_path):
    """tiny_cnn all-INT8 is at 30 dB SQNR: a 35 dB target needs FP16 layers. At batch 256 on a T4 the fastest plan
    that meets it (estimated) keeps the stem FP16 as well (that saves the input's reformat) where the fewest-layers
    plan keeps one layer; at batch 8 every INT8 saving is smaller than the reformats and all FP16 is fastest."""
    common = dict(model="tiny_cnn", target="sqnr:35dB", proxy_images=6, device="cpu", num_images=12,
                  calib_images=12, target_gpu="t4")
    lat = sweep(SweepSettings(objective="latency", latency_batch=256, **common), tmp_path / "lat", progress=False)
    fewest = sweep(SweepSettings(objective="layers", latency_batch=256, **common), tmp_path / "few", progress=False)
    for doc, name in ((lat, "lat"), (fewest, "few")):
        steps = doc.search.path
        assert doc.search.met and doc.latency.kind == "roofline" and not doc.latency.measured
        assert doc.latency.gpu == "t4" and doc.latency.batch == 256
        assert all(s.latency_ms is not None and s.latency_ms > 0 for s in steps)
        assert doc.latency.all_fp16_ms > doc.latency.all_int8_ms
        # the front: no point beats another on both axes, sorted by latency, every step point a real step
        f = doc.front
        assert [p.latency_ms for p in f] == sorted(p.latency_ms for p in f)
        assert all(not (q.metric >= p.metric and q.latency_ms < p.latency_ms) for p in f for q in f)
        assert all(steps[p.step].latency_ms == p.latency_ms and steps[p.step].metric == p.metric
                   for p in f if p.step is not None)
        chosen = [s for s in steps if s.met and s.fp16 == doc.search.fp16_layers]
        assert chosen and doc.latency.plan_ms == pytest.approx(chosen[0].latency_ms)
        html = (tmp_path / name / "sweep.html").read_text()
        assert 'aria-label="accuracy vs estimated latency"' in html and "estimated, not measured" in html
        assert all(r.fp16_cost_ms is not None for r in doc.sensitivity)
    assert lat.objective == "latency" and fewest.objective == "layers"
    # each objective wins on its own axis; the latency plan is on the front, marked chosen
    assert lat.latency.plan_ms == min(s.latency_ms for s in lat.search.path if s.met) < fewest.latency.plan_ms
    assert len(fewest.search.fp16_layers) == min(len(s.fp16) for s in fewest.search.path if s.met)
    assert len(fewest.search.fp16_layers) < len(lat.search.fp16_layers)
    assert [p.chosen for p in lat.front].count(True) == 1
    saved = json.loads((tmp_path / "lat" / "sweep.json").read_text())
    assert saved["objective"] == "latency" and saved["latency"]["kind"] == "roofline" and saved["front"]
    # batch 8: all FP16 is estimated fastest, and it meets the target (FP16 simulated as FP32)
    small = sweep(SweepSettings(objective="latency", latency_batch=8, **common), tmp_path / "small", progress=False)
    assert small.latency.all_fp16_ms < min(s.latency_ms for s in small.search.path[:-1] if s.met)
    assert small.search.path[-1].action.startswith("all FP16") and len(small.search.fp16_layers) == small.layers
    assert small.latency.plan_ms == small.latency.all_fp16_ms and "reformats" in " ".join(small.notes)


def test_cli_refuses_an_unknown_target_gpu_before_any_work(tmp_path, capsys):
    rc = cli.main(["sweep", "--target-gpu", "h900", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--target-gpu" in err and "h200" in err and not (tmp_path / "s").exists()


def test_layer_times_model_by_hand():
    """TensorRT's per-layer times (ms, names as TensorRT gives them: fused layers joined by ' + ')."""
    g = two_convs()
    int8 = {"Reformatting CopyNode for Input Tensor 0 to A + relu": 0.01, "A + relu": 0.10, "B": 0.20}
    fp16 = {"A + relu": 0.15, "B": 0.30}
    m = LayerTimesModel(g, int8, fp16, gpu="test", batch=4)
    assert m.estimate({"A", "B"}) == pytest.approx((0.01 + 0.10 + 0.20) * 1e-3)
    assert m.estimate({"B"}) == pytest.approx((0.01 + 0.15 + 0.20) * 1e-3)      # A's layers at FP16's times
    assert m.estimate(set()) == pytest.approx((0.01 + 0.15 + 0.30) * 1e-3)
    assert m.fp16_costs() == pytest.approx({"A": 0.05e-3, "B": 0.10e-3})
    assert "measured" in m.describe() and "reformats between precisions not included" in m.describe()


def test_tensorrt_latency_model_needs_tensorrt_and_a_gpu(tmp_path, capsys):
    rc = cli.main(["sweep", "--model", "tiny_cnn", "--latency-model", "tensorrt", "--device", "cpu", "--num-images",
                   "8", "--calib-images", "8", "--proxy-images", "4", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--latency-model tensorrt" in err and "roofline" in err and not (tmp_path / "s").exists()
