"""Conformance subprocess: our TensorRT code against one version's real bindings (+ the double).

    python driver.py <wheel dir> <out.json>

with LD_LIBRARY_PATH pointing at the stub libraries. Imports the real ``tensorrt_bindings``, puts
the double's ``tensorrt`` module in ``sys.modules`` and runs every scenario of our calibrator and
engine paths; writes {scenario: facts} (or {"error": ...}) plus the signature violations as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, sys.argv[1])
sys.path.insert(1, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

try:
    import tensorrt_bindings as real
except Exception as err:  # a wheel for another Python, a missing stub library, ...
    json.dump({"import_error": f"{type(err).__name__}: {err}"}, open(sys.argv[2], "w"))
    sys.exit(0)

import double  # noqa: E402

trt = double.make_module(real)
sys.modules["tensorrt"] = trt
MAJOR = int(real.__version__.split(".")[0])

# our code runs on the CPU here: no GPU, no real engines (see the seams in trt_backend / calibrators)
torch.cuda.is_available = lambda: True
torch.cuda.get_device_name = lambda *a: "TensorRT double"

from trtquant.calibrators import tensorrt as adapter  # noqa: E402
from trtquant.quant.engines import tensorrt as trt_backend  # noqa: E402
from trtquant.core.cache import TrtCache, trt_version_int  # noqa: E402
from trtquant.quant.graph.onnx_graph import OnnxGraph  # noqa: E402
from trtquant.quant.artifacts.plan import LayerPrecision, PrecisionPlan  # noqa: E402
from trtquant.core.types import RangeSet, TensorRange  # noqa: E402


class Stream:
    def __init__(self, handle):
        self.cuda_stream = handle

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


DEDICATED = 0x5EED
adapter._DEVICE = trt_backend._DEVICE = "cpu"
trt_backend._new_stream = lambda: Stream(DEDICATED)
trt_backend._current_stream = lambda: Stream(0)
trt_backend._use_stream = lambda s: contextlib.nullcontext()


def tiny_model(batch="N") -> onnx.ModelProto:
    """input -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (5 classes)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b0"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "wfc"),
             numpy_helper.from_array(np.zeros(5, np.float32), "bfc")]
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("GlobalAveragePool", ["r0"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wfc", "bfc"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


RANGES = RangeSet({n: TensorRange(n, a) for n, a in
                   {"input": 2.5, "c0": 4.0, "r0": 4.0, "g": 1.5, "f": 1.5, "logits": 8.0}.items()}, "test")


def plan(layers: dict, default="fp32") -> PrecisionPlan:
    return PrecisionPlan(name="test", layers={n: LayerPrecision(n, p, "test") for n, p in layers.items()},
                         default=default)


def engine_facts(engine, batch) -> dict:
    ctx = engine.context
    out = engine.run(np.zeros((batch, 3, 8, 8), np.float32))
    facts = {"out_shape": list(out.shape), "streams": ctx._streams, "input_shape": ctx._shapes.get("input")}
    try:
        engine.run(np.zeros((batch + 1, 3, 8, 8), np.float32))
    except Exception as err:
        facts["other_batch"] = f"{type(err).__name__}: {err}"
    return facts


def build_facts(run_batch=3, **kw) -> dict:
    kw_batch = run_batch
    double.CALLS.clear()
    double.BUILD_ERRORS.clear()
    engine = None
    try:
        engine = trt_backend.build_trt_engine(OnnxGraph(kw.pop("model", tiny_model())), kw.pop("plan"),
                                              kw.pop("ranges", RANGES), out_dir=None, max_batch=64, **kw)
    finally:
        facts = {"build_errors": list(double.BUILD_ERRORS)}
    net_flags = [a[0] for a, _ in double.calls("Builder", "create_network")]
    facts["network_flags"] = sorted(n for n in ("EXPLICIT_BATCH", "STRONGLY_TYPED")
                                    if hasattr(trt.NetworkDefinitionCreationFlag, n)
                                    and net_flags[0] & (1 << int(getattr(trt.NetworkDefinitionCreationFlag, n))))
    facts["flags_set"] = sorted(a[0].name for a, _ in double.calls("IBuilderConfig", "set_flag"))
    facts["flags_cleared"] = sorted(a[0].name for a, _ in double.calls("IBuilderConfig", "clear_flag"))
    facts["profiles"] = {a[0]: [list(map(int, d)) for d in a[1:]]
                         for a, _ in double.calls("IOptimizationProfile", "set_shape")}
    net = LAST_NETWORK[0]
    facts["precisions"] = {layer._name: layer._props["precision"].name for layer in net._layers
                           if "precision" in layer._props}
    tensors = {t.name: t for t in net._inputs} | {t.name: t for layer in net._layers for t in layer._out}
    facts["dynamic_ranges"] = {n: list(t._props["dynamic_range"]) for n, t in tensors.items()
                               if "dynamic_range" in t._props}
    try:
        facts.update(engine_facts(engine, kw_batch))
    except Exception as err:
        facts["run_error"] = f"{type(err).__name__}: {err}"
    return facts


LAST_NETWORK = [None]
_orig_create = double.FakeBuilder.create_network


def _create_network(self, flags=0):
    LAST_NETWORK[0] = _orig_create(self, flags)
    return LAST_NETWORK[0]


double.FakeBuilder.create_network = _create_network


# ------------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------------

def s_calibrator_classes():
    facts = {}
    for method in ("entropy", "minmax"):
        cal = adapter.make_calibrator(method, iter([np.ones((2, 3, 8, 8), np.float32)]), batch_size=2,
                                      input_name="input")
        base = {"entropy": real.IInt8EntropyCalibrator2, "minmax": real.IInt8MinMaxCalibrator}[method]
        ptrs = cal.get_batch(["input"])          # as the trampoline calls it: a list of names
        facts[method] = {"is_real_subclass": isinstance(cal, base) and isinstance(cal, real.IInt8Calibrator),
                         "algorithm": cal.get_algorithm().name, "batch_size": cal.get_batch_size(),
                         "ptrs": [type(p).__name__ for p in ptrs], "next": cal.get_batch(["input"]),
                         "cache": cal.read_calibration_cache()}
        cal.raise_if_failed()
    return facts


def s_calibrate_onnx():
    """calibrate_onnx_with_tensorrt end to end; a stale file at the output path is not served back."""
    tmp = Path(tempfile.mkdtemp())
    onnx.save(tiny_model(), tmp / "m.onnx")
    out = tmp / "calib.bin"
    stale = f"TRT-{trt_version_int(real.__version__)}-EntropyCalibration2\ninput: 3f800000\n"
    out.write_text(stale)
    double.BUILD_ERRORS.clear()
    batches = (np.full((2, 3, 8, 8), i, np.float32) for i in range(3))
    cache = adapter.calibrate_onnx_with_tensorrt(tmp / "m.onnx", batches, method="entropy", batch_size=2,
                                                 input_shape=(3, 8, 8), cache_path=out)
    return {"header": cache.header(), "tensors": sorted(cache.scales), "file_is_new": out.read_text() != stale,
            "build_errors": list(double.BUILD_ERRORS),
            "profile": [list(map(int, d)) for d in double.calls("IOptimizationProfile", "set_shape")[-1][0][1:]]}


def s_serve_cache():
    """Our cache served to TensorRT: it matches the header, so TensorRT skips calibration."""
    tmp = Path(tempfile.mkdtemp())
    onnx.save(tiny_model(), tmp / "m.onnx")
    ours = TrtCache.from_ranges(RANGES, algorithm="EntropyCalibration2", version=trt_version_int(real.__version__))
    cache = adapter.calibrate_onnx_with_tensorrt(tmp / "m.onnx", iter([]), method="entropy", batch_size=1,
                                                 input_shape=(3, 8, 8), cache_path=tmp / "c.bin", serve_cache=ours)
    return {"same": cache.to_text() == ours.to_text()}


def s_explicit_int8():
    return build_facts(plan=plan({"conv0": "int8", "fc": "int8"}))


def s_explicit_mixed():
    return build_facts(plan=plan({"conv0": "int8", "relu0": "fp16", "fc": "fp32"}))


def s_implicit_int8():
    return build_facts(plan=plan({"conv0": "int8", "fc": "int8"}), mode="implicit")


def s_static_batch():
    return build_facts(plan=plan({}), model=tiny_model(batch=4), run_batch=4)


def s_dynamic_hw():
    model = tiny_model()
    for i, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    facts = build_facts(plan=plan({}), model=model, example_shapes={"input": (1, 3, 8, 8)})
    try:
        trt_backend.build_trt_engine(OnnxGraph(model), plan({}), RANGES, out_dir=None, max_batch=64)
    except Exception as err:
        facts["no_example"] = f"{type(err).__name__}: {err}"
    return facts


def s_two_inputs():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3, 8, 8])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"], name="add")], "two", [a, b], [out])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return build_facts(plan=plan({}), model=model)


def s_layer_times():
    """TensorRT's profiler on an engine of ours: every layer's mean time, the sweep's latency model from them."""
    from trtquant.quant.planner.latency import LayerTimesModel
    engine = trt_backend.build_trt_engine(OnnxGraph(tiny_model()), plan({"conv0": "int8", "fc": "int8"}), RANGES,
                                          out_dir=None, max_batch=64)
    times = engine.layer_times(np.zeros((2, 3, 8, 8), np.float32), iters=4)
    model = LayerTimesModel(OnnxGraph(tiny_model()), times, {k: 2 * v for k, v in times.items()}, gpu="double",
                            batch=2)
    return {"times": times, "runs": len(engine.context._streams), "profiler": type(engine.context._props["profiler"]).__mro__[1].__name__,
            "int8_s": model.estimate({"conv0", "fc"}), "fc_fp16_s": model.estimate({"conv0"}), "layers": model.layers}


def s_sweep_latency_model():
    """The sweep's --latency-model tensorrt: two engines of the graph (all INT8, all FP16) timed by the profiler."""
    from trtquant.quant.settings import SweepSettings
    from trtquant.quant.sweep import latency_model
    model, kind, gpu, why = latency_model(SweepSettings(latency_model="tensorrt", latency_batch=2),
                                          OnnxGraph(tiny_model()), RANGES, np.zeros((1, 3, 8, 8), np.float32),
                                          torch.device("cuda"))
    return {"kind": kind, "gpu": gpu, "why": why, "costs": model.fp16_costs(), "int8_s": model.estimate(model.layers),
            "fp16_s": model.estimate(set())}


SCENARIOS = {n[2:]: f for n, f in dict(globals()).items() if n.startswith("s_")}


def main():
    results = {}
    for name, fn in SCENARIOS.items():
        double.VIOLATIONS.clear()
        try:
            results[name] = fn()
        except Exception as err:  # reported to the test, which decides
            results[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-1500:]}
        results[name]["violations"] = list(double.VIOLATIONS)
    json.dump({"version": real.__version__, "results": results}, open(sys.argv[2], "w"), default=repr, indent=1)


if __name__ == "__main__":
    main()
