"""A TensorRT double checked against the real Python bindings of one TensorRT version.

Runs inside the conformance subprocess, after the real ``tensorrt_bindings`` module was imported
(over the stub libraries). ``make_module(real)`` returns a ``tensorrt`` module that *is* the real
one (enums, calibrator base classes, ``Dims``, ``Logger``, data types) except for the classes whose
C++ factories the stub cannot provide: ``Builder``, ``OnnxParser``, ``Runtime`` and everything they
return (network, config, profile, layers, tensors, timing cache, engine, context). Those are fakes
whose every method call, property read and property write is checked against the real class:

- the member must exist on the real class of this version (else a violation);
- a call must bind to one of the real pybind11 overloads (parsed from the docstring signatures:
  arity, keyword names, defaults) and each argument must fit the annotated type (int, float, str,
  bool, buffer, Dims, lists, and TensorRT enums/classes checked with ``isinstance`` on the real ones);
- a property write needs a real, writable property.

Behind the checks the fakes behave like TensorRT where our code depends on it: the parser makes
layers named after ONNX nodes (a Gemm becomes a MatrixMultiply plus a parser-made bias ElementWise
with an unnamed output, as onnx-tensorrt does), the builder enforces the optimization-profile rule
for static dims, refuses precision flags on strongly typed networks, fails an OBEY INT8 layer with
unranged tensors, and drives an ``int8_calibrator`` the way TensorRT does (read cache, get_batch
until None, write cache).
"""

from __future__ import annotations

import inspect
import itertools
import re
import types

import onnx

VIOLATIONS: list[str] = []
CALLS: list[tuple] = []         # (class, member, args, kwargs)
BUILD_ERRORS: list[str] = []    # what the emulated builder would log as errors
REAL = None                     # the real tensorrt_bindings module
_SIG = re.compile(r"^(?:\d+\.\s+)?(\w+)\((.*)\)\s*->\s*(.+)$")
_NODEFAULT = inspect.Parameter.empty


class Conformance(AssertionError):
    pass


def violation(msg: str):
    VIOLATIONS.append(f"TensorRT {REAL.__version__}: {msg}")
    raise Conformance(VIOLATIONS[-1])


def _split(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + ([cur.strip()] if cur.strip() else [])


def signatures(real_cls, name: str) -> list[tuple[list, str]]:
    """Every pybind11 overload of ``real_cls.name``: ([(param, annotation, has_default, kwonly)], return)."""
    doc = getattr(real_cls, name).__doc__ or ""
    sigs = []
    for line in doc.splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group(1) != name or m.group(2).strip() == "*args, **kwargs":
            continue
        params, kwonly = [], False
        for p in _split(m.group(2)):
            if p == "*":
                kwonly = True
                continue
            pname, _, rest = p.partition(":")
            ann, eq, _ = rest.partition("=")
            params.append((pname.strip(), ann.strip(), bool(eq), kwonly))
        sigs.append((params, m.group(3).strip()))
    return sigs


def _short(ann: str) -> str:
    return ann.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt.", "")


def _type_error(ann: str, value) -> str | None:
    a = _short(ann)
    if a in ("int", "typing.SupportsInt"):
        ok = isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float))
    elif a in ("float", "typing.SupportsFloat"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif a == "str":
        ok = isinstance(value, str)
    elif a == "bool":
        ok = isinstance(value, bool)
    elif a in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        try:
            memoryview(value)
            ok = True
        except TypeError:
            ok = False
    elif a == "Dims" or a.startswith("Dims"):
        ok = isinstance(value, REAL.Dims) or (isinstance(value, (tuple, list))
                                               and all(isinstance(d, int) for d in value))
    elif a.startswith(("List[", "list[", "typing.List", "collections.abc.Sequence")):
        ok = isinstance(value, (list, tuple))
    elif isinstance(getattr(REAL, a, None), type):
        cls = getattr(REAL, a)
        ok = isinstance(value, cls) or (isinstance(value, Fake) and issubclass(_real(value), cls))
    else:
        return None      # an annotation we do not model: accept
    return None if ok else f"{type(value).__name__} {value!r:.60} is not {a}"


def check_call(cls_name: str, name: str, args: tuple, kwargs: dict) -> None:
    real_cls = getattr(REAL, cls_name)
    if _static(real_cls, name) is None:
        violation(f"{cls_name}.{name} does not exist")
    sigs = signatures(real_cls, name)
    if not sigs:
        violation(f"{cls_name}.{name}: no pybind11 signature in its docstring")
    why = []
    for params, _ in sigs:
        ps = params[1:] if params and params[0][0] == "self" else params
        sig = inspect.Signature([inspect.Parameter(
            p, inspect.Parameter.KEYWORD_ONLY if kw else inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None if has_default else _NODEFAULT) for p, _, has_default, kw in ps])
        try:
            bound = sig.bind(*args, **kwargs).arguments
        except TypeError as err:
            why.append(str(err))
            continue
        errs = [f"{p}: {e}" for p, ann, _, _ in ps if p in bound and (e := _type_error(ann, bound[p]))]
        if not errs:
            return
        why.append("; ".join(errs))
    violation(f"{cls_name}.{name}(*{args!r:.120}, **{kwargs!r}) fits no signature: {' | '.join(why)}")


def _static(real_cls, name):
    for k in real_cls.__mro__:
        if name in vars(k):
            return vars(k)[name]
    return None


def _real(obj):
    real = getattr(REAL, type(obj)._real_name, None)
    if real is None:
        violation(f"class {type(obj)._real_name} does not exist")
    return real


class Fake:
    """Base of the fakes: unknown members are looked up on the real class and checked."""

    _real_name = ""

    def __init__(self, **state):
        object.__setattr__(self, "_props", dict(state))

    def __getattr__(self, name):           # only for members the fake does not define
        if name.startswith("_"):
            raise AttributeError(name)
        attr = _static(_real(self), name)
        if attr is None:
            violation(f"{self._real_name}.{name} does not exist")
        if isinstance(attr, property):
            CALLS.append((self._real_name, name, "get", ()))
            return self._props.get(name)
        raise NotImplementedError(f"the double does not implement {self._real_name}.{name}")

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        attr = _static(_real(self), name)
        if not isinstance(attr, property):
            violation(f"{self._real_name}.{name} is not a property" if attr is not None
                      else f"{self._real_name}.{name} does not exist")
        if attr.fset is None:
            violation(f"{self._real_name}.{name} is read-only")
        CALLS.append((self._real_name, name, "set", (value,)))
        self._props[name] = value


def conform(real_name: str, constructible: bool = False):
    """Class decorator: every public method/property of the fake is checked against ``real_name``."""
    def deco(cls):
        cls._real_name = real_name
        for name, val in list(vars(cls).items()):
            if isinstance(val, property):
                setattr(cls, name, property(_checked_get(name, val.fget)))
            elif callable(val) and (not name.startswith("_") or (name == "__init__" and constructible)):
                setattr(cls, name, _checked(name, val))
        return cls
    return deco


def _checked(name, fn):
    def wrapper(self, *args, **kwargs):
        cls_name = type(self)._real_name
        check_call(cls_name, name, args, kwargs)
        CALLS.append((cls_name, name, args, kwargs))
        return fn(self, *args, **kwargs)
    wrapper.__name__ = name
    return wrapper


def _checked_get(name, fget):
    def getter(self):
        attr = _static(_real(self), name)
        if not isinstance(attr, property):
            violation(f"{self._real_name}.{name} is not a property" if attr is not None
                      else f"{self._real_name}.{name} does not exist")
        CALLS.append((self._real_name, name, "get", ()))
        return fget(self)
    return getter


def calls(cls_name: str, member: str) -> list[tuple]:
    return [(a, k) for c, m, a, k in CALLS if c == cls_name and m == member]


# ------------------------------------------------------------------------------------------------
# the fakes
# ------------------------------------------------------------------------------------------------

@conform("ITensor")
class FakeTensor(Fake):
    def __init__(self, name, shape=(), network_input=False):
        super().__init__()
        self._name, self._shape, self._input = name, tuple(shape), network_input

    name = property(lambda self: self._name)
    shape = property(lambda self: REAL.Dims(list(self._shape)))
    is_network_input = property(lambda self: self._input)

    def set_dynamic_range(self, min, max):  # noqa: A002  (TensorRT's names)
        if min > max:
            return False
        self._props["dynamic_range"] = (min, max)
        return True


@conform("ILayer")
class FakeLayer(Fake):
    def __init__(self, name, type_, inputs, outputs):
        super().__init__()
        self._name, self._type, self._in, self._out = name, type_, list(inputs), list(outputs)

    name = property(lambda self: self._name)
    type = property(lambda self: self._type)
    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, index):
        return self._in[index]

    def get_output(self, index):
        return self._out[index]


@conform("INetworkDefinition")
class FakeNetwork(Fake):
    def __init__(self, flags):
        super().__init__()
        self._flags, self._inputs, self._layers, self._outputs = flags, [], [], []

    num_inputs = property(lambda self: len(self._inputs))
    num_layers = property(lambda self: len(self._layers))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index):
        return self._inputs[index]

    def get_layer(self, index):
        return self._layers[index]

    def get_output(self, index):
        return self._outputs[index]

    def _flag(self, name):
        member = getattr(REAL.NetworkDefinitionCreationFlag, name, None)
        return member is not None and bool(self._flags & (1 << int(member)))


_ONNX_LAYER = {"Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Relu": "ACTIVATION", "Clip": "ACTIVATION",
               "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Cast": "CAST",
               "GlobalAveragePool": "REDUCE", "Flatten": "SHUFFLE", "Add": "ELEMENTWISE", "MatMul": "MATRIX_MULTIPLY"}


def _dims(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def populate(network: FakeNetwork, model: onnx.ModelProto) -> None:
    """What onnx-tensorrt makes of the model, as far as our code can see it."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    lt = REAL.LayerType
    tensors = {}
    for vi in g.input:
        if vi.name not in inits:
            tensors[vi.name] = FakeTensor(vi.name, _dims(vi), network_input=True)
            network._inputs.append(tensors[vi.name])
    unnamed = itertools.count(len(g.node))

    def constant(name):
        if name not in tensors:
            tensors[name] = FakeTensor(name)
            network._layers.append(FakeLayer(f"{name} (Constant)", lt.CONSTANT, [], [tensors[name]]))
        return tensors[name]

    for node in g.node:
        ins = []
        for k, name in enumerate(node.input):
            if not name:
                continue
            if name in inits:
                if node.op_type in ("Conv", "ConvTranspose") and k > 0:
                    continue            # kernel weights and bias: layer weights, not network tensors
                ins.append(constant(name))
            else:
                ins.append(tensors.setdefault(name, FakeTensor(name)))
        outs = [FakeTensor(o) for o in node.output]
        if node.op_type == "Gemm":      # MatrixMultiply named after the node + a parser-made bias add
            mm = FakeTensor(f"(Unnamed Layer* {next(unnamed)}) [Matrix Multiply]_output")
            network._layers.append(FakeLayer(node.name, lt.MATRIX_MULTIPLY, ins[:2], [mm]))
            network._layers.append(FakeLayer(f"(Unnamed Layer* {next(unnamed)}) [ElementWise]", lt.ELEMENTWISE,
                                             [mm] + ins[2:], outs))
        else:
            network._layers.append(FakeLayer(node.name, getattr(lt, _ONNX_LAYER.get(node.op_type, "SHUFFLE")),
                                             ins, outs))
        tensors.update((t.name, t) for t in outs)
    for vi in g.output:
        t = tensors[vi.name]
        t._shape = tuple(_dims(vi))
        network._outputs.append(t)


@conform("OnnxParser", constructible=True)
class FakeParser(Fake):
    def __init__(self, network, logger):
        super().__init__()
        self._network = network

    def parse(self, model, path=None):
        populate(self._network, onnx.load_from_string(bytes(model)))
        return True

    def parse_from_file(self, model):
        populate(self._network, onnx.load(model))
        return True

    num_errors = property(lambda self: 0)

    def get_error(self, index):
        raise IndexError(index)


@conform("IOptimizationProfile")
class FakeProfile(Fake):
    def __init__(self):
        super().__init__()
        self._shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002
        self._shapes[input] = tuple(tuple(int(d) for d in s) for s in (min, opt, max))


@conform("ITimingCache")
class FakeTimingCache(Fake):
    def serialize(self):
        return b"timing-cache"


@conform("IBuilderConfig")
class FakeConfig(Fake):
    def __init__(self):
        super().__init__()
        self._flags, self._cleared, self._profiles, self._calib_profile = set(), set(), [], None

    def set_memory_pool_limit(self, pool, pool_size):
        pass

    def set_flag(self, flag):
        self._flags.add(flag.name)

    def clear_flag(self, flag):
        self._flags.discard(flag.name)
        self._cleared.add(flag.name)

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile):
        self._calib_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache):
        return FakeTimingCache()

    def set_timing_cache(self, cache, ignore_mismatch):
        return True


ENGINES: dict[bytes, FakeNetwork] = {}


@conform("Builder", constructible=True)
class FakeBuilder(Fake):
    def __init__(self, logger):
        super().__init__()

    def create_network(self, flags=0):
        return FakeNetwork(flags)

    def create_builder_config(self):
        return FakeConfig()

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        major = int(REAL.__version__.split(".")[0])
        errors = []
        typed = network._flag("STRONGLY_TYPED") or major >= 11
        if major < 10 and not network._flag("EXPLICIT_BATCH"):
            errors.append("the ONNX parser needs an EXPLICIT_BATCH network")
        if typed and config._flags & {"FP16", "INT8", "BF16", "FP8"}:
            errors.append(f"precision flags {sorted(config._flags & {'FP16', 'INT8'})} on a strongly typed network")
        profiles = [p._shapes for p in config._profiles] or [{}]
        for t in network._inputs:
            for shapes in profiles:
                if t.name not in shapes:
                    errors.append(f"input {t.name!r} has no shape in an optimization profile")
                    continue
                for dims in shapes[t.name]:
                    if len(dims) != len(t._shape) or any(d != -1 and d != s for d, s in zip(t._shape, dims)):
                        errors.append(f"profile {dims} of {t.name!r} does not keep the static dims of {t._shape}")
        cal = config._props.get("int8_calibrator")
        scaled = set()                      # tensors with a scale from the calibrator's cache
        if cal is not None:
            drive_errors, scaled = _drive_calibrator(cal, network)
            errors += drive_errors
        if "INT8" in config._flags and "OBEY_PRECISION_CONSTRAINTS" in config._flags:
            constants = {t.name for layer in network._layers if layer._type == REAL.LayerType.CONSTANT
                         for t in layer._out}
            for layer in network._layers:
                if layer._props.get("precision") == REAL.int8:
                    bad = [t.name for t in layer._in + layer._out
                           if t.name not in constants and "dynamic_range" not in t._props and t.name not in scaled]
                    if bad:
                        errors.append(f"INT8 constraint of layer {layer._name!r} not met: no range for {bad}")
        if errors:
            BUILD_ERRORS.extend(errors)
            return None
        key = f"engine-{len(ENGINES)}".encode()
        ENGINES[key] = network
        return key


def _drive_calibrator(cal, network) -> tuple[list[str], set[str]]:
    """What TensorRT <= 10 does with an int8_calibrator (pyInt8.cpp trampolines): (errors, scaled tensors)."""
    if not isinstance(cal, REAL.IInt8Calibrator):
        return [f"int8_calibrator {type(cal).__name__} is not an IInt8Calibrator"], set()
    algo = cal.get_algorithm()
    header_algo = {"ENTROPY_CALIBRATION_2": "EntropyCalibration2", "MINMAX_CALIBRATION": "MinMaxCalibration",
                   "ENTROPY_CALIBRATION": "EntropyCalibration", "LEGACY_CALIBRATION": "LegacyCalibration"}[algo.name]
    major, minor, patch = (int(x) for x in REAL.__version__.split(".")[:3])
    version = major * (10000 if major >= 10 else 1000) + minor * 100 + patch
    header = f"TRT-{version}-{header_algo}"
    cache = cal.read_calibration_cache()
    if cache is not None and len(bytes(memoryview(cache))):
        text = bytes(memoryview(cache)).decode()
        if text.splitlines()[0] == header:  # TensorRT skips calibration and uses the cache
            return [], {line.rpartition(": ")[0] for line in text.splitlines()[1:] if line.strip()}
    if not isinstance(cal.get_batch_size(), int):
        return ["get_batch_size did not return an int"], set()
    names = [t.name for t in network._inputs]
    batches = 0
    while True:
        ptrs = cal.get_batch(names)
        if not ptrs:
            break
        if not isinstance(ptrs, list) or len(ptrs) != len(names) or not all(isinstance(p, int) for p in ptrs):
            return [f"get_batch returned {ptrs!r}: TensorRT copies {len(names)} device pointers"], set()
        batches += 1
    if batches == 0:
        return ["calibration failure: no batches"], set()
    tensors = [t.name for t in network._inputs] + [t.name for layer in network._layers for t in layer._out]
    cal.write_calibration_cache(memoryview("\n".join([header] + [f"{n}: 3c010204" for n in tensors]).encode() + b"\n"))
    return [], set(tensors)


@conform("IExecutionContext")
class FakeContext(Fake):
    def __init__(self, network):
        super().__init__()
        self._network, self._shapes, self._addresses, self._streams = network, {}, {}, []

    def set_input_shape(self, name, shape):
        t = next(t for t in self._network._inputs if t.name == name)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(t._shape) or any(d != -1 and d != s for d, s in zip(t._shape, shape)):
            return False
        self._shapes[name] = shape
        return True

    def set_tensor_address(self, name, memory):
        self._addresses[name] = memory
        return True

    def get_tensor_shape(self, name):
        t = next(t for t in self._network._outputs if t.name == name)
        batch = next(iter(self._shapes.values()))[0]
        return REAL.Dims([batch if d == -1 else d for d in t._shape])

    def execute_async_v3(self, stream_handle):
        self._streams.append(stream_handle)
        profiler = self._props.get("profiler")
        if profiler is not None:               # TensorRT reports each layer's time to the profiler set on it
            if not isinstance(profiler, REAL.IProfiler):
                violation("IExecutionContext.profiler: not an IProfiler")
            for i, layer in enumerate(self._network._layers):
                profiler.report_layer_time(layer._name, 0.125 * (i + 1))
        return True


@conform("ICudaEngine")
class FakeEngine(Fake):
    def __init__(self, network):
        super().__init__()
        self._network = network
        self._io = [t.name for t in network._inputs] + [t.name for t in network._outputs]

    num_io_tensors = property(lambda self: len(self._io))

    def get_tensor_name(self, index):
        return self._io[index]

    def get_tensor_mode(self, name):
        inputs = {t.name for t in self._network._inputs}
        return REAL.TensorIOMode.INPUT if name in inputs else REAL.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return REAL.float32

    def create_execution_context(self):
        self._props["context"] = FakeContext(self._network)
        return self._props["context"]


@conform("Runtime", constructible=True)
class FakeRuntime(Fake):
    def __init__(self, logger):
        super().__init__()

    def deserialize_cuda_engine(self, serialized_engine):
        network = ENGINES.get(bytes(serialized_engine))
        return None if network is None else FakeEngine(network)


def make_module(real) -> types.ModuleType:
    global REAL
    REAL = real
    m = types.ModuleType("tensorrt")
    for name in dir(real):
        if not name.startswith("__"):
            setattr(m, name, getattr(real, name))
    m.__version__ = real.__version__
    m.Builder, m.OnnxParser, m.Runtime = FakeBuilder, FakeParser, FakeRuntime
    return m
