"""The OpenVINO CPU engine runs the shipped Q/DQ model; its one rewrite is value-preserving, checked
with OpenVINO's own kernels; INT8 is refused where OpenVINO's integer convolutions saturate."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant.quant.engines.registry import build
from trtquant.core.errors import BackendUnavailable
from trtquant.core.metrics import sqnr_db
from trtquant.quant.artifacts.plan import resolve_plan
from trtquant.quant.artifacts.qdq import build_qdq_model
from trtquant.quant.planner.simulate import QuantSim

ov = pytest.importorskip("openvino", reason="openvino not installed (bash setup.sh --dev installs it)")
from trtquant.quant.engines.openvino import _compile, int8_is_exact, quantize_before_zero_pads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_ov(model, x):
    return _compile(model, "LATENCY").create_infer_request().infer({0: x})[0].copy()


def pad_then_quantize(scale=0.05, pads=(0, 0, 1, 2, 0, 0, 2, 1)):
    """x -> Pad(0) -> Q -> DQ -> Relu: the pattern of EfficientNet-Lite's "same" padding before a convolution."""
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    g = helper.make_graph(nodes, "padq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8, 9])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_moving_a_quantizer_in_front_of_a_zero_pad_is_value_preserving_in_openvino():
    model = pad_then_quantize()
    moved, n = quantize_before_zero_pads(model)
    assert n == 1
    ops = [node.op_type for node in moved.graph.node]
    assert ops.index("QuantizeLinear") < ops.index("DequantizeLinear") < ops.index("Pad")
    x = np.random.default_rng(0).normal(scale=3.0, size=(2, 3, 5, 6)).astype(np.float32)
    x.flat[:7] = [0.025, -0.025, 0.075, 6.35, 6.4, -6.4, -7.0]        # ties and saturation
    ref, got = run_ov(model, x), run_ov(moved, x)
    assert ref.shape == (2, 3, 8, 9)
    np.testing.assert_array_equal(got, ref)
    # and the values are what the Q/DQ graph means (numpy: round half to even, saturate)
    q = np.clip(np.rint(x / np.float32(0.05)), -128, 127) * np.float32(0.05)
    np.testing.assert_array_equal(ref[:, :, 1:6, 2:8], np.maximum(q, 0))


def test_a_pad_with_a_nonzero_value_or_another_reader_is_left_alone():
    model = pad_then_quantize()
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    model.graph.node[0].input.extend(["one"])
    assert quantize_before_zero_pads(model)[1] == 0
    model = pad_then_quantize()
    model.graph.node.append(helper.make_node("Relu", ["p"], ["p2"]))
    model.graph.output.append(helper.make_tensor_value_info("p2", TensorProto.FLOAT, [2, 3, 8, 9]))
    assert quantize_before_zero_pads(model)[1] == 0


def test_fp32_engine_is_fp32_and_splits_batches_in_order(mobilenet, sample_images):
    x, _ = sample_images
    g = mobilenet.graph
    ref = build("onnxruntime", g, resolve_plan("fp32", g)).run(x)
    engine = build("openvino", g, resolve_plan("fp32", g))
    assert not engine.info.simulated and engine.info.backend == "openvino"
    assert engine.precisions.get("Convolution f32") == 52 and not engine.integer_kernels
    whole = engine.run(x)                                  # 20 images, over the asynchronous request queue
    one = np.concatenate([engine.run(x[i:i + 1]) for i in range(len(x))])
    # FP32 (not BF16, which AMX CPUs would pick by default): within float rounding of ONNX Runtime
    assert sqnr_db(torch.from_numpy(ref), torch.from_numpy(whole)) > 80
    np.testing.assert_allclose(one, whole, rtol=1e-4, atol=1e-4)


def _by_op(kernels: dict) -> dict:
    """{"Convolution i8": 52, ...} -> {"Convolution": 52, ...}: every kernel integer (i8 or u8 activations)."""
    out = {}
    for name, n in kernels.items():
        op, dtype = name.rsplit(" ", 1)
        assert dtype in ("i8", "u8"), name
        out[op] = out.get(op, 0) + n
    return out


def test_int8_engine_runs_integer_convolutions_and_agrees_with_the_simulation(mobilenet, mobilenet_ranges,
                                                                              sample_images):
    x, y = sample_images
    g, plan = mobilenet.graph, resolve_plan("int8", mobilenet.graph)
    if not int8_is_exact():
        with pytest.raises(BackendUnavailable, match="saturate"):
            build("openvino", g, plan, mobilenet_ranges)
        pytest.skip("this CPU has no exact INT8 dot product (no VNNI/AMX): the engine refuses INT8, as checked")
    engine = build("openvino", g, plan, mobilenet_ranges)
    # OpenVINO names the kernel by its activation type: i8 (AMX, Intel), u8 (AVX-512 VNNI with a shift, AMD)
    assert _by_op(engine.integer_kernels) == {"Convolution": 52, "FullyConnected": 1}
    assert "the shipped TensorRT Q/DQ model" in engine.info.description
    sim = QuantSim(g, mobilenet_ranges, torch.device("cpu"))
    s = sim.logits(x, set(sim.layers), batch=20)
    a = engine.run(x)
    assert (a.argmax(1) == s.argmax(1)).mean() >= 0.95
    assert abs(int((a.argmax(1) == y).sum()) - int((s.argmax(1) == y).sum())) <= 1
    # the floor: the simulation against itself in float64 (same graph, more exact arithmetic)
    sim64 = QuantSim(g, mobilenet_ranges, torch.device("cpu"))
    sim64.ex.consts = {k: v.double() if v.is_floating_point() else v for k, v in sim64.ex.consts.items()}
    s64 = sim64.run(torch.from_numpy(x).double(), set(sim.layers)).numpy()
    floor = sqnr_db(torch.from_numpy(s64), torch.from_numpy(s))
    assert sqnr_db(torch.from_numpy(s), torch.from_numpy(a)) >= floor - 3


def test_lite0_pads_are_folded_into_integer_convolutions(lite0, sample_images_inception):
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    if not int8_is_exact():
        pytest.skip("this CPU has no exact INT8 dot product (no VNNI/AMX): OpenVINO INT8 is refused here")
    x, _ = sample_images_inception
    g = lite0.graph
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ranges = calibrate(CalibrationConfig(model="efficientnet_lite0", device="cpu"), cache_path=Path(tmp) / "c.bin",
                           progress=False).ranges
    plan = resolve_plan("int8", g)
    engine = build("openvino", g, plan, ranges)
    assert "17 quantizer(s) moved in front of a zero Pad" in engine.info.description
    assert _by_op(engine.integer_kernels) == {"Convolution": 49, "FullyConnected": 1}
    shipped, _ = build_qdq_model(g, ranges, plan)
    plain = run_ov(shipped, x)
    a = engine.run(x)
    assert (a.argmax(1) == plain.argmax(1)).mean() >= 0.95
    sim = QuantSim(g, ranges, torch.device("cpu"))
    s = sim.logits(x, set(sim.layers), batch=20)
    assert (a.argmax(1) == s.argmax(1)).mean() >= 0.95


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 (Debian qemu-user) not installed: cannot emulate an AVX2-only CPU here")
def test_on_an_emulated_avx2_only_cpu_the_probe_sees_saturation(tmp_path):
    script = textwrap.dedent("""
        from trtquant.quant.engines.openvino import int8_is_exact
        print("probe", int8_is_exact())
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO.parent)}
    proc = subprocess.run(["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["probe", "False"], proc.stdout


def test_cli_build_int8_on_openvino_refuses_a_saturating_cpu_and_builds_on_an_exact_one(mobilenet_ranges, tmp_path,
                                                                                      capsys, monkeypatch):
    from trtquant import cli
    from trtquant.quant.engines import openvino as ov_backend
    from trtquant.core.cache import write_ranges_json

    ranges = tmp_path / "r.json"
    write_ranges_json(ranges, mobilenet_ranges)
    args = ["build", "--precision", "int8", "--backend", "openvino", "--ranges", str(ranges)]
    exact = int8_is_exact()
    monkeypatch.setattr(ov_backend, "int8_is_exact", lambda: False)
    assert cli.main(args + ["--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "OpenVINO's INT8 convolutions saturate on this CPU" in err and "--backend onnxruntime" in err
    assert "Traceback" not in err
    if not exact:
        pytest.skip("this CPU has no exact INT8 dot product: the build itself is refused (checked above)")
    monkeypatch.setattr(ov_backend, "int8_is_exact", lambda: True)
    assert cli.main(args + ["--out", str(tmp_path / "yes")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"52 Convolution [iu]8", out) and (tmp_path / "yes" / "model_qdq.onnx").is_file()
