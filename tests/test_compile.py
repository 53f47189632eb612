"""torch.compile of the interpreter's graph (quant/graph/compiled.py): the same numbers as the interpreter,
one compiled graph for every INT8 plan, the compile seconds apart, and the interpreter when compiling fails.

On the tiny registered model (5 convolutions): each inductor compilation takes ~10-25 s on two CPU cores,
so the module compiles twice (the simulator's graph, the engine's simulated-INT8 Q/DQ graph)."""

import logging
import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from trtquant.core.errors import ConfigError
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.calibrate import calibrate
from trtquant.quant.engines.registry import build
from trtquant.quant.graph.compiled import CompiledGraph, compile_enabled
from trtquant.quant.graph.models import resolve_model
from trtquant.quant.planner.simulate import QuantSim
from trtquant.quant.settings import CalibrationConfig

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rm = resolve_model("tiny_cnn")
    res = calibrate(CalibrationConfig(model="tiny_cnn", device="cpu", method="minmax"),
                    cache_path=tmp_path_factory.mktemp("tiny") / "c.bin", progress=False)
    x = np.random.default_rng(3).uniform(-2, 2, size=(6, 3, 64, 64)).astype(np.float32)
    return rm.graph, res.ranges, x


def test_compile_choice():
    assert compile_enabled("on", "cpu") and not compile_enabled("off", "cuda")
    assert compile_enabled("auto", "cuda") and not compile_enabled("auto", "cpu")
    with pytest.raises(ConfigError):
        compile_enabled("yes", "cpu")


@needs_compiler
def test_one_compiled_simulator_serves_every_plan(tiny):
    graph, ranges, x = tiny
    eager = QuantSim(graph, ranges, torch.device("cpu"))
    sim = QuantSim(graph, ranges, torch.device("cpu"), compile=True)
    layers = sorted(sim.layers)
    plans = [set(), set(layers), set(layers[:2]), {layers[-1]}]
    graphs_before = counters["stats"]["unique_graphs"]
    for int8 in plans:
        want, got = eager.logits(x, int8), sim.logits(x, int8)
        # the same fake-quant grid (the same float32 scale, round-half-even, clamp): what differs is the float
        # rounding of fused bias/ReLU6 epilogues. Measured on this CPU: max |diff| 1.8e-7 (FP32), 2.4e-7 (mixed
        # plans), 0 (all INT8) on logits of ~0.43. A rounding tie flipped by such a difference would move one
        # activation by one LSB (~1e-2 here) and the logits by ~1e-4 at most: the bound allows that, no more
        assert np.abs(want - got).max() <= 1e-4, (sorted(int8), np.abs(want - got).max())
        assert (want.argmax(1) == got.argmax(1)).all()
    assert np.abs(eager.logits(x, set()) - eager.logits(x, set(layers))).max() > 1e-3   # INT8 does change them
    assert sim.compiled is not None and sim.compiled.compiles == 1 and not sim.compiled.failed   # one graph, 4 plans
    assert counters["stats"]["unique_graphs"] - graphs_before == 1      # and no recompilation inside dynamo either
    assert sim.compile_s > 0
    # a new weight (accuracy recovery) is an input value: no recompilation, the new numbers
    w = next(q.tensor for q in sim.placement(sim.layers).weights())
    for s in (sim, eager):
        s.set_constant(w, s.ex.consts[w] * 0.5)
    assert np.abs(eager.logits(x, set(layers)) - sim.logits(x, set(layers))).max() <= 1e-4
    assert sim.compiled.compiles == 1


@needs_compiler
def test_compiled_engine_simulated_int8_matches_the_interpreter(tiny):
    graph, ranges, x = tiny
    plan = resolve_plan("int8", graph)
    eager = build("torch", graph, plan, ranges, device="cpu")
    comp = build("torch", graph, plan, ranges, device="cpu", compile="on")
    assert comp.compiled is not None and "torch.compile" in comp.info.description and comp.compile_s == 0
    want, got = eager.run(x), comp.run(x)
    assert comp.compile_s > 0 and comp.compiled.compiles == 1
    # the Q/DQ graph (QuantizeLinear to int8, DequantizeLinear back): measured identical on this CPU
    assert np.abs(want - got).max() <= 1e-4 and (want.argmax(1) == got.argmax(1)).all()
    again = comp.compile_s
    comp.run(x)
    assert comp.compile_s == again                     # the same shape: no second compilation


def test_a_failed_compilation_runs_the_interpreter(tiny, monkeypatch, caplog):
    graph, ranges, x = tiny

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    eager = QuantSim(graph, ranges, torch.device("cpu"))
    sim = QuantSim(graph, ranges, torch.device("cpu"), compile=True)
    layers = set(sim.layers)
    with caplog.at_level(logging.WARNING):
        got = sim.logits(x, layers)
    assert "torch.compile of the quantization simulator failed" in caplog.text
    assert sim.compile is False and np.array_equal(got, eager.logits(x, layers))
    engine = build("torch", graph, resolve_plan("fp32", graph), device="cpu", compile="on")
    ref = build("torch", graph, resolve_plan("fp32", graph), device="cpu").run(x)
    assert np.array_equal(engine.run(x), ref) and engine.compiled.failed


def test_the_compiled_forward_bakes_the_shape_arithmetic(tiny):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (an exported flatten) is shape-only: evaluated once
    per input shape and baked, so the traced function has no data-dependent shapes."""
    import onnx
    from onnx import TensorProto, helper

    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.graph.onnx_graph import OnnxGraph

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["b"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["bu"], name="unsq"),
             helper.make_node("Concat", ["bu", "minus1"], ["shp"], name="concat", axis=0),
             helper.make_node("Reshape", ["r", "shp"], ["y0"], name="reshape"),
             helper.make_node("Flatten", ["y0"], ["y"], name="flatten", axis=1)]     # MobileNetV2's classifier input
    inits = [helper.make_tensor("zero", TensorProto.INT64, [], [0]), helper.make_tensor("ax0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]
    g = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    ex = TorchGraphExecutor(OnnxGraph(model))
    seen = []
    compiled = CompiledGraph(ex, label="flatten")
    compiled._build_fn = compiled._build
    monkey = lambda *a: (seen.append(a[0]), compiled._build_fn(*a))[1]      # noqa: E731
    compiled._build = monkey
    # eager torch.compile backend: the graph logic without a C++ compilation
    compiled.backend = "eager"
    xin = torch.randn(4, 2, 3)
    out = compiled.run({"x": xin})
    assert out is not None and torch.equal(out["y"], torch.relu(xin).reshape(4, 6))
    assert set(seen[0]) == {"s", "b", "bu", "shp"}                              # the baked shape values
    assert not compiled._partial            # traced whole (fullgraph=True): no graph break (Flatten's arithmetic)
    out = compiled.run({"x": torch.randn(5, 2, 3)})                             # another batch: baked again
    assert out["y"].shape == (5, 6) and compiled.compiles == 2


def test_the_compile_flag_and_its_one_default():
    from trtquant import cli
    from trtquant.core.defaults import DEFAULT_COMPILE
    from trtquant.quant.settings import EvalSettings, SweepSettings

    parser = cli.build_parser()
    ev = parser.parse_args(["evaluate", "--out", "x"])
    sw = parser.parse_args(["sweep", "--compile", "auto"])
    assert ev.compile == EvalSettings().compile == SweepSettings().compile == DEFAULT_COMPILE == "off"
    assert sw.compile == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--out", "x", "--compile", "yes"])
    with pytest.raises(ConfigError):
        EvalSettings(compile="yes")


# ------------------------------------------------------------------------------------------------
# on a CUDA GPU (benchmarks/gpu_fast_check.sh runs these): inductor's Triton kernels, inside CUDA graphs
# ------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_compiled_engine_matches_the_cuda_graph_engine(tiny, precision):
    graph, _, x = tiny
    plan = resolve_plan("fp32", graph)
    eager = build("torch", graph, plan, torch_precision=precision, device="cuda")
    # inductor's default mode keeps the test short; the benchmark measures max-autotune
    comp = build("torch", graph, plan, torch_precision=precision, device="cuda", compile="on", compile_mode="default")
    xt = torch.from_numpy(x).cuda()
    want = eager.run_tensor(xt).float().cpu().numpy()
    got = comp.run_tensor(xt).float().cpu().numpy()          # compiled, then captured in the engine's CUDA graph
    assert comp.compile_s > 0 and not comp.compiled.failed and len(comp._graphs) == 1
    # the same math, other kernels (Triton epilogues vs cuDNN + ATen): float rounding only
    tol = 1e-4 if precision == "fp32" else 2e-2 * np.abs(want).max()
    assert np.abs(want - got).max() <= tol and (want.argmax(1) == got.argmax(1)).all()
    np.testing.assert_array_equal(comp.run_tensor(xt).float().cpu().numpy(), got)      # replay: the same


@pytest.mark.gpu
def test_cuda_compiled_simulator_matches_the_interpreter(tiny):
    graph, ranges, x = tiny
    eager = QuantSim(graph, ranges, torch.device("cuda"))
    sim = QuantSim(graph, ranges, torch.device("cuda"), compile=True)
    layers = set(sim.layers)
    for int8 in (set(), layers):
        want, got = eager.logits(x, int8), sim.logits(x, int8)
        # eager CUDA divides by a Python scale as x * (1/s), the compiled kernel as x / s: a value on a rounding
        # tie may land one LSB away (a handful of positions); that moves the logits by ~1e-3 of their range
        assert np.abs(want - got).max() <= 1e-2 * np.abs(want).max(), (len(int8), np.abs(want - got).max())
        assert (want.argmax(1) == got.argmax(1)).mean() >= 5 / 6
    assert sim.compiled.compiles == 1 and not sim.compiled.failed


def test_a_graph_break_compiles_in_pieces(caplog, monkeypatch):
    """An operator dynamo cannot trace into one graph (here a Relu with an explicit graph break): the compiled
    forward retries without ``fullgraph`` (logged) and still gives the interpreter's values."""
    from onnx import TensorProto, helper

    from trtquant.quant.graph import interpreter
    from trtquant.quant.graph.onnx_graph import OnnxGraph

    def relu(x, **a):
        torch._dynamo.graph_break()
        return torch.relu(x)
    monkeypatch.setitem(interpreter.OPS, "Relu", relu)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    g = helper.make_graph(nodes, "brk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    ex = interpreter.TorchGraphExecutor(OnnxGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    compiled = CompiledGraph(ex, label="relu", backend="eager")
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING):
        out = compiled.run({"x": x})
    assert "does not trace into one torch.compile graph" in caplog.text and compiled._partial and not compiled.failed
    assert torch.equal(out["y"], -torch.relu(x))
