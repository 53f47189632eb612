"""GPU code paths: the statistics pass on CUDA equals the CPU pass. Skipped without a CUDA GPU."""

import numpy as np
import pytest
import torch

from trtquant.calibrators import gpu_hist, gpu_stats
from trtquant.calibrators.collector import HistogramCollector, collect_batch
from trtquant.quant.settings import CalibrationConfig
from trtquant.quant.calibrate import calibrate
from trtquant.quant.graph.interpreter import TorchGraphExecutor

pytestmark = pytest.mark.gpu


def _collect(graph, x, device):
    ex = TorchGraphExecutor(graph, device)
    col = HistogramCollector(graph.calibration_tensors, device=device)
    for chunk in np.array_split(x, 3):
        t = torch.from_numpy(chunk)
        collect_batch(col, lambda observe, watch: ex.run({"input": t}, observe=observe, watch=watch))
    return col.histograms()


def test_cuda_statistics_equal_cpu(mobilenet, sample_images):
    x = sample_images[0]
    cpu = _collect(mobilenet.graph, x, torch.device("cpu"))
    gpu = _collect(mobilenet.graph, x, torch.device("cuda"))
    assert set(cpu) == set(gpu)
    for name in cpu:
        a, b = cpu[name], gpu[name]
        assert b.amax == pytest.approx(a.amax, rel=1e-5), name          # cuDNN vs CPU FP32 rounding (TF32 off)
        assert b.numel == a.numel and b.counts.sum() == a.counts.sum()
        if a.bin_width == b.bin_width:
            assert np.abs(a.counts - b.counts).sum() <= 1e-3 * a.numel, name


@pytest.mark.parametrize("method,settings", [("minmax", {}), ("percentile", {"percentile": 99.99}),
                                             ("entropy", {})])
def test_cuda_calibration_matches_cpu(tmp_path, method, settings):
    cfg = dict(method=method, **settings)
    cpu = calibrate(CalibrationConfig(device="cpu", **cfg), cache_path=tmp_path / "c.bin", progress=False)
    # the same pixels on both (nvJPEG decodes slightly differently: test_calibration_with_gpu_decoding_...)
    gpu = calibrate(CalibrationConfig(device="cuda", decode="cpu", **cfg), cache_path=tmp_path / "g.bin",
                    progress=False)
    assert gpu.device.startswith("cuda")
    close = 0
    for name, r in cpu.ranges.ranges.items():
        width = cpu.stats.histograms[name].bin_width
        close += abs(gpu.ranges.ranges[name].amax - r.amax) <= 2 * width + 1e-5 * r.amax
    if method == "entropy":
        # the KL minimum can jump between near-equal local minima on a 1e-6 change of the histogram
        assert close >= 0.95 * len(cpu.ranges.ranges)
    else:
        assert close == len(cpu.ranges.ranges)


def test_fused_kernel_equals_histc_on_real_activations(mobilenet, sample_images):
    if not gpu_hist.available(torch.zeros(1, device="cuda")):
        pytest.skip("Triton not installed")
    acts = {}
    TorchGraphExecutor(mobilenet.graph, "cuda").run({"input": torch.from_numpy(sample_images[0]).cuda()},
                                                     observe=lambda n, v: acts.__setitem__(n, v))
    for name, v in acts.items():
        hi = float(v.abs().max()) * 1.01
        lohi, h = gpu_hist.lohi_and_histogram(v, 512, hi)
        ref = torch.histc(v.double().reshape(-1), 1024, -hi, hi)
        assert float(lohi[0]) == float(v.min()) and float(lohi[1]) == float(v.max()), name
        assert int(h.sum()) == v.numel(), name
        assert float((h.double() - ref).abs().sum()) <= 1e-4 * v.numel(), name
    v = acts["input"].clone()
    v[0, 0, 0, 0] = float("nan")
    lohi, _ = gpu_hist.lohi_and_histogram(v, 512, 10.0)
    assert torch.isnan(lohi).all()


def test_fused_and_torch_paths_give_the_same_statistics(mobilenet, sample_images, monkeypatch):
    if not gpu_hist.available(torch.zeros(1, device="cuda")):
        pytest.skip("Triton not installed")
    fused = _collect(mobilenet.graph, sample_images[0], torch.device("cuda"))
    monkeypatch.setenv("TRTQUANT_FUSED_KERNEL", "0")
    plain = _collect(mobilenet.graph, sample_images[0], torch.device("cuda"))
    for name in fused:
        assert fused[name].amax == plain[name].amax
        assert np.abs(fused[name].counts - plain[name].counts).sum() <= 1e-4 * fused[name].numel, name


def _need_batched_kernel():
    if not gpu_stats.available(torch.zeros(1, device="cuda")):
        pytest.skip("the NVRTC statistics kernel is unavailable (torch.cuda._compile_kernel)")


VARIANTS = [(0, 0), (0, 1), (1, 0), (2, 0)]      # (warp aggregation, reciprocal division) compiled variants


@pytest.mark.parametrize("agg,fastdiv", VARIANTS)
def test_batched_kernel_equals_histc_on_real_activations(mobilenet, sample_images, agg, fastdiv):
    """One launch over all 101 activations equals torch.histc (same float32 bin formula) and aminmax, exactly."""
    _need_batched_kernel()
    acts = {}
    TorchGraphExecutor(mobilenet.graph, "cuda").run({"input": torch.from_numpy(sample_images[0]).cuda()},
                                                     observe=lambda n, v: acts.__setitem__(n, v))
    names = list(acts)
    tensors = [acts[n] for n in names]
    bins = [(4096, 1000, 2 * 2048 + 6)[j % 3] for j in range(len(names))]     # as the collector's grown ranges
    # every third range ends exactly at the tensor's max (the collector's first batch: ReLU6's 6.0s are == hi)
    hi = [float(v.abs().max()) * (1.01 if j % 3 else 1.0) for j, v in enumerate(tensors)]
    lohi, hists = gpu_stats.statistics(tensors, bins, [-h for h in hi], hi, agg=agg, fastdiv=fastdiv, chunk=1 << 14)
    for j, (n, v) in enumerate(zip(names, tensors)):
        mn, mx = torch.aminmax(v)
        assert float(lohi[j, 0]) == float(mn) and float(lohi[j, 1]) == float(mx), n
        ref = torch.histc(v, bins[j], -hi[j], hi[j])
        moved = int((ref.long() - hists[j].long()).abs().sum())
        assert moved == 0, f"{n}: {moved} of {v.numel()} values in another bin than torch.histc's"


@pytest.mark.parametrize("agg,fastdiv", VARIANTS)
def test_batched_kernel_edge_cases(agg, fastdiv):
    """Zeros and -0.0, values at hi and outside, NaN, negative-only and one-element tensors, unaligned views
    and tails, many tensors of different bin counts in one launch: equal to torch.histc and aminmax."""
    _need_batched_kernel()
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(1_000_003, device="cuda", generator=g)
    a[:1000] = 0.0
    a[1000:1100] = -0.0
    a[5000:6000] = 2.5                                   # == hi: the last bin
    a[7000:7100] = 3.0                                   # above hi: not counted
    relu6 = (torch.randn(3_000_000, device="cuda", generator=g) * 3).clamp(0, 6)   # hot bins at 0 and 6
    nan = torch.randn(10_000, device="cuda", generator=g)
    nan[123] = float("nan")
    e = torch.linspace(-2.5, 2.5, 4097, device="cuda")      # bin edges and their float neighbours
    edges = torch.cat([e, torch.nextafter(e, torch.full_like(e, 9.0)), torch.nextafter(e, torch.full_like(e, -9.0))])
    cases = [(edges, 4096, -2.5, 2.5), (edges * 0.37, 3001, -1.1, 0.9), (a, 4096, -2.5, 2.5), (a[1:], 1000, -2.5, 2.5), (torch.full((5,), 2.5, device="cuda"), 7, -2.5, 2.5),
             (relu6, 4096, -6.0, 6.0), (-relu6[:777_777] - 0.5, 2048, -7.0, 7.0),
             (torch.tensor([1.5], device="cuda"), gpu_stats.max_bins(), -3.0, 3.0), (a[3:100_003], 333, -1.0, 2.0),
             (nan, 64, -4.0, 4.0)]
    for chunk in (1 << 10, gpu_stats.CHUNK):
        lohi, hists = gpu_stats.statistics([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases],
                                           [c[3] for c in cases], agg=agg, fastdiv=fastdiv, chunk=chunk)
        for j, (t, bins, lo, hi) in enumerate(cases):
            ref = torch.histc(t, bins, lo, hi)
            assert torch.equal(hists[j].long(), ref.long()), (j, chunk)
            if j == len(cases) - 1:
                assert torch.isnan(lohi[j]).all()
            else:
                mn, mx = torch.aminmax(t)
                assert float(lohi[j, 0]) == float(mn) and float(lohi[j, 1]) == float(mx), (j, chunk)


def test_overlapped_and_same_stream_statistics_are_identical(mobilenet, sample_images):
    _need_batched_kernel()
    ex = TorchGraphExecutor(mobilenet.graph, "cuda")
    out = []
    for overlap, group in ((True, 1 << 30), (False, 1 << 30), (True, 1 << 20)):
        col = HistogramCollector(mobilenet.graph.calibration_tensors, device="cuda")
        col.overlap, col.group_bytes = overlap, group
        for chunk in np.array_split(sample_images[0], 3):
            t = torch.from_numpy(chunk).cuda()
            collect_batch(col, lambda observe, watch: ex.run({"input": t}, observe=observe, watch=watch))
        out.append(col.histograms())
    for name in out[0]:
        for other in out[1:]:
            assert out[0][name].amax == other[name].amax
            assert np.array_equal(out[0][name].counts, other[name].counts), name


@pytest.mark.parametrize("precision,min_sqnr", [("tf32", 30), ("fp16", 30), ("bf16", 18)])
def test_torch_engines_on_cuda_track_fp32(mobilenet, sample_images, precision, min_sqnr):
    from trtquant.quant.engines.registry import build
    from trtquant.core.metrics import sqnr_db
    from trtquant.quant.artifacts.plan import resolve_plan

    x, _ = sample_images
    plan = resolve_plan("fp32", mobilenet.graph)
    ref = build("torch", mobilenet.graph, plan, device="cpu").run(x)
    eng = build("torch", mobilenet.graph, plan, torch_precision=precision, device="cuda")
    assert "CUDA graphs" in eng.info.description
    out = eng.run(x)
    again = eng.run(x)                                    # a graph replay gives the same answer
    assert np.array_equal(out, again)
    assert sqnr_db(torch.from_numpy(ref), torch.from_numpy(out)) > min_sqnr
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_simulated_int8_on_cuda_equals_cpu(mobilenet, sample_images, tmp_path):
    from trtquant.quant.engines.registry import build
    from trtquant.core.metrics import sqnr_db
    from trtquant.quant.artifacts.plan import resolve_plan

    ranges = calibrate(CalibrationConfig(device="cpu"), cache_path=tmp_path / "c.bin", progress=False).ranges
    plan = resolve_plan("int8", mobilenet.graph)
    x = sample_images[0]
    cpu = build("torch", mobilenet.graph, plan, ranges, device="cpu").run(x)
    gpu = build("torch", mobilenet.graph, plan, ranges, device="cuda").run(x)
    assert (cpu.argmax(1) == gpu.argmax(1)).mean() >= 0.9
    assert sqnr_db(torch.from_numpy(cpu), torch.from_numpy(gpu)) > 15


def test_gpu_decode_matches_the_cpu_path(tmp_path):
    """nvJPEG + the Pillow-exact resampler vs Pillow, on the 20 bundled (progressive) JPEGs and on baseline
    re-encodings of them (the hardware decoder's path): every image goes through nvJPEG, and the pixels differ
    only by the decoder's IDCT/upsampling (numbers in the README)."""
    from pathlib import Path

    from PIL import Image

    from trtquant.datasets import PRESETS, open_source
    from trtquant.datasets import gpu_decode as gd

    pre = PRESETS["imagenet"]
    bundled = open_source("imagenet_sample", preprocess=pre)
    folder = tmp_path / "n01440764"
    folder.mkdir()
    for p in bundled.ids:
        with Image.open(p) as im:
            im.convert("RGB").save(folder / (Path(p).stem + ".jpg"), quality=90)
    for src in (bundled, open_source(str(tmp_path), preprocess=pre)):
        dec = gd.make_decoder("gpu", src, torch.device("cuda"))
        cpu = np.concatenate([b.images for b in src.batches(8, pixels=True, progress=False)])
        gpu = torch.cat([b.images for b in src.batches(8, pixels=True, progress=False, decoder=dec)]).cpu().numpy()
        assert dec.gpu_images == len(src) and dec.cpu_images == 0
        diff = np.abs(cpu.astype(np.int16) - gpu.astype(np.int16))
        ndiff = np.abs(pre.normalize(cpu) - pre.normalize(gpu))
        print(f"\n{src.name}: max |diff| {diff.max()} levels ({ndiff.max():.4f} normalised), mean {diff.mean():.4f}, "
              f"99.9th pct {np.percentile(diff, 99.9):.0f}, {(diff > 0).mean() * 100:.2f}% differ")
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 4 and diff.max() <= 48, src.name


def test_calibration_with_gpu_decoding_matches_cpu_decoding(tmp_path):
    kw = dict(device="cuda", method="percentile", percentile=99.99)
    cpu = calibrate(CalibrationConfig(decode="cpu", **kw), cache_path=tmp_path / "c.bin", progress=False)
    gpu = calibrate(CalibrationConfig(decode="gpu", **kw), cache_path=tmp_path / "g.bin", progress=False)
    close = sum(abs(gpu.ranges.ranges[n].amax - r.amax) <= 0.01 * r.amax for n, r in cpu.ranges.ranges.items())
    assert close >= 0.95 * len(cpu.ranges.ranges)


def test_fused_fake_quant_kernel_equals_the_cpu_bit_for_bit(mobilenet, sample_images):
    """The one-pass Triton fake quantization gives the CPU's values exactly: on every real activation of
    MobileNetV2 (contiguous and channels-last, into a new tensor and in place) and on rounding ties and their
    float neighbours, saturation, NaN and -0.0 (what PyTorch's own CUDA division by a scalar does not)."""
    from trtquant.core import fake_quant_cuda
    from trtquant.core.numerics import QMAX, QMIN, fake_quant

    if fake_quant_cuda._kernel() is None:
        pytest.skip("no Triton")
    acts = {}
    TorchGraphExecutor(mobilenet.graph, "cpu").run({"input": torch.from_numpy(sample_images[0][:4])},
                                                   observe=lambda n, v: acts.__setitem__(n, v))
    s = 0.0472440943
    ties = (torch.arange(-140, 140, dtype=torch.float32) + 0.5) * torch.tensor(s, dtype=torch.float32)
    acts["ties"] = torch.cat([ties, torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1),
                              torch.tensor([float("nan"), -0.0, 1e30, -1e30])])
    used = 0
    for name, v in acts.items():
        if name == "ties":
            scale = s
        else:                                    # 0.9 of the range: the largest values saturate
            scale = float(v.abs().amax()) / 127 * 0.9 or 1.0
        ref = fake_quant(v, scale)                                       # the CPU's ops
        forms = [v.cuda()] + ([v.cuda().contiguous(memory_format=torch.channels_last)] if v.dim() == 4 else [])
        for x in forms:
            y = fake_quant_cuda.fake_quant_cuda(x, scale, float(QMIN), float(QMAX))
            assert y is not None and y.stride() == x.stride()
            inplace = torch.empty_like(x)
            assert fake_quant(x, scale, out=inplace) is inplace
            for got in (y, inplace, fake_quant(x, scale)):
                got = got.cpu().contiguous()
                nan = torch.isnan(ref)
                assert torch.equal(torch.isnan(got), nan), name
                assert torch.equal(got[~nan].view(torch.int32), ref[~nan].view(torch.int32)), name
            used += 1
    assert used > 100


def test_normalisation_on_the_gpu_equals_numpy_bit_for_bit():
    """Every uint8 level of every channel, for each preset: what evaluate and the statistics pass compute on
    the GPU is the NumPy path's float32, bit for bit."""
    from trtquant.datasets import PRESETS

    px = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, None, :, None], (2, 3, 256, 4)).copy()
    for name, pre in PRESETS.items():
        cpu = pre.normalize(px[:, :len(pre.mean)])
        gpu = pre.normalize_torch(torch.from_numpy(px[:, :len(pre.mean)]).cuda()).cpu().numpy()
        assert np.array_equal(cpu.view(np.int32), gpu.view(np.int32)), name


def test_fused_qdq_pairs_on_cuda_equal_the_pairs_as_written(mobilenet, mobilenet_ranges, sample_images):
    """The engines' executor runs each activation Q/DQ pair of the shipped all-INT8 model as one fused fake
    quantization: on the GPU, fed the same real activations, every fused node gives what the QuantizeLinear
    and DequantizeLinear nodes as written give (equal values; a zero may come out as -0.0, which no consumer
    tells apart)."""
    import onnx

    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.artifacts.qdq import build_qdq_model
    from trtquant.quant.graph.onnx_graph import OnnxGraph

    shipped, _ = build_qdq_model(mobilenet.graph, mobilenet_ranges, resolve_plan("int8", mobilenet.graph))
    g = OnnxGraph(onnx.load_from_string(shipped.SerializeToString()))
    written = TorchGraphExecutor(g, "cuda", fuse_qdq=False)
    fused = TorchGraphExecutor(g, "cuda")
    by_output = {n.output[0]: i for i, (n, a, _) in enumerate(fused.nodes) if "_fake_quant" in a}
    q_input, dq_output = {}, {}

    def tap(i, inputs, outs):
        node = written.nodes[i][0]
        if node.op_type == "QuantizeLinear":
            q_input[node.output[0]] = inputs[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in by_output:
            dq_output[node.output[0]] = (q_input[node.input[0]], outs[0])
    written.run({"input": torch.from_numpy(sample_images[0][:8]).cuda()}, tap=tap)
    assert len(dq_output) == len(by_output) >= 50          # MobileNetV2: 54 activation quantizers
    with torch.inference_mode():
        for name, (x, ref) in dq_output.items():
            j = by_output[name]
            got = fused.run_node(j, [x] + [fused.consts[n] for n in fused.nodes[j][2][1:]])[0]
            assert got.dtype == ref.dtype and torch.equal(got, ref), name


def test_evaluate_on_cuda_feeds_the_torch_engine_full_batches_only(tmp_path, monkeypatch):
    """20 images at batch 8: the tail of 4 runs padded to 8 (outputs dropped), so the engines meet batch 8 (the
    accuracy pass and throughput) and batch 1 (latency) only; FP32 top-1 is the CPU's (18 of 20)."""
    import json

    from trtquant.quant import evaluate as ev
    from trtquant.quant.engines import torch as torch_engine

    seen = []
    real = torch_engine.TorchEngine.run_tensor
    monkeypatch.setattr(torch_engine.TorchEngine, "run_tensor",
                        lambda self, x: seen.append(len(x)) or real(self, x))
    settings = ev.EvalSettings(configs="fp32,int8:entropy", backend="torch", device="cuda", latency_iters=5,
                               batch_size=8, bootstrap=200)
    ev.evaluate(settings, tmp_path / "out", progress=False)
    rows = {r["config"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["results"]}
    assert set(seen) == {8, 1}
    assert rows["fp32"]["top1"] == pytest.approx(0.9)
    assert rows["int8:entropy"]["status"] == "ok" and rows["int8:entropy"]["agreement"] >= 0.85
