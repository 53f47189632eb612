"""GPU statistics kernel vs torch.histc on real MobileNetV2 activations (one table, one run).

    python benchmarks/bench_histogram.py --data ../shared/data/imagenet-sample --batch-size 256

For every calibrated tensor of one batch: time of torch.aminmax + torch.histc (the portable path)
vs the fused Triton kernel (calibrators/gpu_hist.py), and whether their histograms agree.
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
    args = ap.parse_args()
    _bootstrap()
    import torch

    from trtquant.calibrators import gpu_hist
    from trtquant.datasets import PRESETS, open_source
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.graph.models import resolve_model

    if not torch.cuda.is_available() or not gpu_hist.available(torch.zeros(1, device="cuda")):
        sys.exit("needs a CUDA GPU and Triton")
    model = resolve_model("mobilenet_v2")
    src = open_source(args.data, preprocess=PRESETS["imagenet"], num_images=args.batch_size, seed=0)
    x = torch.from_numpy(next(iter(src.batches(args.batch_size, progress=False))).images).cuda()
    ex = TorchGraphExecutor(model.graph, "cuda")
    acts = {}
    ex.run({"input": x}, observe=lambda n, v: acts.__setitem__(n, v))
    his = {n: float(v.abs().max()) for n, v in acts.items()}
    nb = 2048

    def torch_path():
        for n, v in acts.items():
            torch.aminmax(v)
            torch.histc(v.reshape(-1)[: 1 << 24], 2 * nb, -his[n], his[n])   # one 2**24 chunk per tensor
            for s in range(1 << 24, v.numel(), 1 << 24):
                torch.histc(v.reshape(-1)[s:s + (1 << 24)], 2 * nb, -his[n], his[n])

    def triton_path():
        for n, v in acts.items():
            gpu_hist.lohi_and_histogram(v, nb, his[n])

    def plain():
        ex.run({"input": x})

    def timed(fn, reps=3):
        fn()
        torch.cuda.synchronize()
        best = 1e9
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    tp, tt, tk = timed(plain), timed(torch_path), timed(triton_path)
    worst = 0
    for n, v in acts.items():
        ref = torch.histc(v.double().reshape(-1), 2 * nb, -his[n], his[n])
        _, h = gpu_hist.lohi_and_histogram(v, nb, his[n])
        worst = max(worst, float((ref - h.double()).abs().sum()) / v.numel())
    elems = sum(v.numel() for v in acts.values())
    print(f"\nGPU statistics kernels | {torch.cuda.get_device_name()} | batch {args.batch_size} | "
          f"{len(acts)} tensors, {elems / 1e9:.2f} G elements")
    print(f"plain forward                       {tp * 1e3:8.2f} ms")
    print(f"torch aminmax + histc (all tensors) {tt * 1e3:8.2f} ms   {tt / tp:5.2f}x forward")
    print(f"fused Triton kernel (all tensors)   {tk * 1e3:8.2f} ms   {tk / tp:5.2f}x forward   "
          f"{tt / tk:.1f}x faster than histc; {elems * 4 / tk / 1e12:.2f} TB/s read")
    print(f"histogram disagreement vs float64 histc: at most {worst * 100:.4f}% of a tensor's values moved")


if __name__ == "__main__":
    main()
