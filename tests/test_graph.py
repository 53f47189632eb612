"""The ONNX graph is the source of truth for names; the PyTorch executor runs exactly that graph."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from trtquant.core.errors import ModelError
from trtquant.quant.graph.onnx_graph import OnnxGraph
from trtquant.quant.graph.executors import OrtGraphExecutor, make_executor
from trtquant.quant.graph.interpreter import TorchGraphExecutor, unsupported_ops
from trtquant.quant.graph.models import resolve_model


def _observe_all(executor, x):
    seen = {}
    out = executor.run({executor.graph.inputs[0].name: torch.from_numpy(x)},
                       observe=lambda n, v: seen.__setitem__(n, v.detach().cpu().clone()))
    return seen, out


@pytest.mark.parametrize("fixture,images", [("mobilenet", "sample_images"), ("lite0", "sample_images_inception")])
def test_torch_executor_matches_onnxruntime_on_every_tensor(fixture, images, request):
    model = request.getfixturevalue(fixture)
    x = request.getfixturevalue(images)[0][:8]
    t_seen, t_out = _observe_all(TorchGraphExecutor(model.graph), x)
    o_seen, o_out = _observe_all(OrtGraphExecutor(model.graph), x)
    assert set(t_seen) == set(o_seen) == set(model.graph.calibration_tensors)
    for name in o_seen:
        ref = o_seen[name]
        err = (t_seen[name] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
        assert err < 1e-4, name
    assert (t_out["logits"].argmax(1) == o_out["logits"].argmax(1)).all()


def test_exported_models_predict_the_labels(mobilenet, lite0, sample_images, sample_images_inception):
    # real weights, real images: a broken export or preprocessing preset would show here
    for model, (x, y) in ((mobilenet, sample_images), (lite0, sample_images_inception)):
        logits = TorchGraphExecutor(model.graph).run({"input": torch.from_numpy(x)})["logits"]
        acc = (logits.argmax(1).numpy() == y).mean()
        assert acc >= 0.8, (model.name, acc)


def test_mobilenet_calibration_tensors_are_onnx_value_names(mobilenet):
    g = mobilenet.graph
    names = g.calibration_tensors
    assert names[0] == "input" and names[-1] == "logits"
    node_outputs = {o for n in g.model.graph.node for o in n.output}
    assert all(n in node_outputs for n in names[1:])
    convs = [n.output[0] for n in g.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 52 and set(convs) <= set(names)
    # no Constant outputs and no integer shape tensors
    consts = {n.output[0] for n in g.model.graph.node if n.op_type == "Constant"}
    assert not consts & set(names)
    assert len(names) == 1 + 52 + 35 + 10 + 3   # input, Conv, Clip, Add, pool/flatten/gemm


def test_export_is_deterministic_and_cached(mobilenet, tmp_path, monkeypatch):
    # a fresh export into an empty cache gives the very same graph (names and weights) ...
    monkeypatch.setenv("TRTQUANT_CACHE_DIR", str(tmp_path))
    fresh = resolve_model("mobilenet_v2")
    assert fresh.onnx_path.parent == tmp_path / "onnx" and fresh.onnx_path.is_file()
    assert fresh.graph.fingerprint() == mobilenet.graph.fingerprint()
    first = fresh.onnx_path.read_bytes()
    fresh.onnx_path.unlink()
    assert resolve_model("mobilenet_v2").onnx_path.read_bytes() == first      # byte-identical re-export
    # ... and a second resolve reuses the cached file instead of exporting again
    mtime = fresh.onnx_path.stat().st_mtime_ns
    assert resolve_model("mobilenet_v2").onnx_path.stat().st_mtime_ns == mtime


def _tiny_model(op="Relu", domain=""):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    node = helper.make_node(op, ["x"], ["y"], name="the node", domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    # IR version 8: readable by every ONNX Runtime we meet (the GPU machine's 1.30 stops at IR 13)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets, ir_version=8)


def test_unsupported_operator_falls_back_to_onnxruntime(tmp_path):
    m = _tiny_model("Softplus")
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    g = OnnxGraph.load(p)
    assert unsupported_ops(g) == ["Softplus"]
    ex = make_executor(g, "auto", torch.device("cpu"))
    assert isinstance(ex, OrtGraphExecutor)
    seen, out = _observe_all(ex, np.array([[-1, 0, 1, 2]], dtype=np.float32))
    np.testing.assert_allclose(out["y"].numpy(), np.log1p(np.exp([[-1, 0, 1, 2]])), rtol=1e-6)
    with pytest.raises(ModelError, match="Softplus"):
        make_executor(g, "torch", torch.device("cpu"))


def test_invalid_and_missing_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\x01")
    with pytest.raises(ModelError, match="invalid ONNX model"):
        OnnxGraph.load(bad)
    with pytest.raises(ModelError, match="ONNX file not found"):
        OnnxGraph.load(tmp_path / "missing.onnx")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_run_batched_pads_the_tail_to_one_shape_and_drops_the_padding(as_tensor):
    from trtquant.quant.graph.onnx_graph import run_batched

    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    rows = (lambda lo, hi: torch.from_numpy(x[lo:hi])) if as_tensor else (lambda lo, hi: x[lo:hi])
    shapes = []

    def run(chunk):                                   # a row-wise model: each row's output is its own
        shapes.append(tuple(chunk.shape))
        return np.asarray(chunk) * 2 + 1

    out = run_batched(run, rows, 10, 4, 4)
    assert shapes == [(4, 3)] * 3                     # the tail of 2 rows ran as 4: one shape throughout
    np.testing.assert_array_equal(out, x * 2 + 1)     # and only the 10 real rows came back
    shapes.clear()
    np.testing.assert_array_equal(run_batched(run, rows, 10, 4), x * 2 + 1)
    assert shapes == [(4, 3), (4, 3), (2, 3)]         # without a fixed batch the tail is its own shape
