"""GPU statistics kernels vs torch.histc on real MobileNetV2 activations (one table, one run).

    python benchmarks/bench_histogram.py --data ../shared/data/imagenet-sample --batch-size 256

For every calibrated tensor of one batch (101 tensors): the time of torch.aminmax + torch.histc (the
portable path), the per-tensor Triton kernel (calibrators/gpu_hist.py) and the batched CUDA kernel
(calibrators/gpu_stats.py; one launch over all tensors, each warp-aggregation variant), as read
bandwidth against a device-to-device copy of the same bytes; whether their histograms agree with
float64 histc; and the whole statistics pass (forward + every tensor's statistics + the per-batch fold)
against the plain forward, with and without the side stream that overlaps statistics and forward.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    _bootstrap()
    import torch

    from trtquant.calibrators import gpu_hist, gpu_stats
    from trtquant.calibrators.collector import HistogramCollector, _signed_histogram, collect_batch
    from trtquant.datasets import PRESETS, open_source
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.graph.models import resolve_model

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    model = resolve_model("mobilenet_v2")
    src = open_source(args.data, preprocess=PRESETS["imagenet"], num_images=args.batch_size, seed=0)
    x = torch.from_numpy(next(iter(src.batches(args.batch_size, progress=False))).images).to(dev)
    ex = TorchGraphExecutor(model.graph, dev)
    acts = {}
    ex.run({"input": x}, observe=lambda n, v: acts.__setitem__(n, v.detach()))
    acts = {n: v for n, v in acts.items() if n in set(model.graph.calibration_tensors)}
    nb = 2048
    his = {n: float(v.abs().max()) for n, v in acts.items()}
    names = list(acts)
    elems = sum(v.numel() for v in acts.values())
    nbytes = 4 * elems

    def timed(fn, reps=args.reps):
        fn()
        torch.cuda.synchronize()
        best = 1e9
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    def plain():
        ex.run({"input": x})

    big = torch.empty(elems, dtype=torch.float32, device=dev)
    other = torch.empty_like(big)

    def copy():
        other.copy_(big)

    def torch_path():
        for n, v in acts.items():
            torch.aminmax(v)
            flat = v.reshape(-1)
            for s in range(0, flat.numel(), 1 << 24):          # the collector's exact-float32 chunks
                torch.histc(flat[s:s + (1 << 24)], 2 * nb, -his[n], his[n])

    def triton_path():
        for n, v in acts.items():
            gpu_hist.lohi_and_histogram(v, nb, his[n])

    tensors = [acts[n] for n in names]
    bins = [2 * nb] * len(names)
    lo = [-his[n] for n in names]
    hi = [his[n] for n in names]

    def batched(agg, fastdiv, chunk=gpu_stats.CHUNK):
        return lambda: gpu_stats.statistics(tensors, bins, lo, hi, agg=agg, fastdiv=fastdiv, chunk=chunk)

    tp, tc, tt = timed(plain), timed(copy), timed(torch_path)
    rows = [("plain forward", tp, None), ("device-to-device copy of the same bytes (read + write)", tc, None),
            ("torch aminmax + histc, per tensor", tt, tt)]
    if gpu_hist.available(x):
        rows.append(("Triton kernel (gpu_hist), per tensor", timed(triton_path), tt))
    # the same float32 bin formula, in 2**24-element calls (histc counts in float32: exact below 2**24 a bin)
    refs = [_signed_histogram(acts[n], nb, his[n]).long() for n in names]
    checks = {}
    kern = {}
    variants = [(0, 0, "shared atomics", (1 << 17, 1 << 19)), (0, 1, "shared atomics, reciprocal division", (1 << 17, 1 << 19)),
                (1, 0, "+ lane-0 ballot", (1 << 19,)), (2, 0, "+ __match_any_sync", (1 << 19,))]
    if gpu_stats.kernel(dev) is not None:
        for agg, fastdiv, label, chunks in variants:
            k = gpu_stats.kernel(dev, agg, fastdiv)
            if k is None:
                continue
            kern[(agg, fastdiv)] = k
            for chunk in chunks:
                rows.append((f"CUDA kernel (gpu_stats), 1 launch, {label}, chunk {chunk >> 10}K",
                             timed(batched(agg, fastdiv, chunk)), tt))
            lohi, hs = gpu_stats.statistics(tensors, bins, lo, hi, agg=agg, fastdiv=fastdiv)
            moved = sum(int((r - h.long()).abs().sum()) for r, h in zip(refs, hs))
            w = 0.0
            for j, n in enumerate(names):
                v = acts[n]
                ref = torch.histc(v.double().reshape(-1), 2 * nb, -his[n], his[n])
                w = max(w, float((ref - hs[j].double()).abs().sum()) / v.numel())
                assert float(lohi[j, 0]) == float(v.min()) and float(lohi[j, 1]) == float(v.max()), n
            checks[(agg, fastdiv)] = (moved, w)

    # the whole statistics pass at steady state (ranges fixed by a first batch), vs the plain forward
    def stats_pass(overlap, fused=True, prioritize=True, chunk=gpu_stats.CHUNK):
        col = HistogramCollector(model.graph.calibration_tensors, device=dev)
        col.overlap, col.prioritize = overlap, prioritize
        col.fused_kernel = fused
        default, gpu_stats.CHUNK = gpu_stats.CHUNK, chunk       # the collector launches with the module's chunk

        def one():
            collect_batch(col, lambda observe, watch: ex.run({"input": x}, observe=observe, watch=watch))
        try:
            one()
            return timed(one)
        finally:
            gpu_stats.CHUNK = default

    passes = [("statistics pass, torch.histc path", stats_pass(False, fused=False))]
    if kern:
        passes += [("statistics pass, CUDA kernel, same stream", stats_pass(False)),
                   ("statistics pass, CUDA kernel, side stream (overlap)", stats_pass(True, prioritize=False)),
                   ("statistics pass, CUDA kernel, side stream, forward on a high-priority stream", stats_pass(True)),
                   ("  same, chunk 128K", stats_pass(True, chunk=1 << 17)),
                   ("  same, chunk 32K", stats_pass(True, chunk=1 << 15))]

    print(f"\nGPU statistics kernels | {torch.cuda.get_device_name()} | torch {torch.__version__} | batch "
          f"{args.batch_size} | {len(acts)} tensors, {elems / 1e9:.2f} G elements ({nbytes / 1e9:.1f} GB) | "
          f"best of {args.reps}")
    w = max(len(r[0]) for r in rows + passes)
    print(f"{'':<{w}}  {'time':>9}  {'read TB/s':>9}  {'x forward':>9}  {'vs histc':>8}")
    for label, t, ref in rows:
        tb = nbytes / t / 1e12 * (2 if label.startswith("device-to-device") else 1)
        print(f"{label:<{w}}  {t * 1e3:7.2f}ms  {tb:9.2f}  {t / tp:9.2f}  "
              + (f"{ref / t:7.1f}x" if ref else ""))
    for label, t in passes:
        print(f"{label:<{w}}  {t * 1e3:7.2f}ms  {'':>9}  {t / tp:9.2f}  ({args.batch_size / t:,.0f} img/s vs "
              f"{args.batch_size / tp:,.0f} plain)")
    for key, k in kern.items():
        moved, w = checks[key]
        print(f"CUDA kernel agg={key[0]} fastdiv={key[1]}: NVRTC compile + self-test {k.compile_s:.2f} s; counts "
              f"differing from float32 torch.histc: {moved}; vs float64 histc at most {w * 100:.4f}% of a tensor moved")
    print("device-to-device copy: TB/s counts bytes read + written (the memory system's ceiling)")


if __name__ == "__main__":
    main()
