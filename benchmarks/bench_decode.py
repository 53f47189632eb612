"""Image decoding throughput: the CPU path (Pillow, threads) vs nvJPEG + the GPU resampler (one table, one run).

    python benchmarks/bench_decode.py --data ../shared/data/imagenet-sample --batch-size 256

Rows (uint8 224x224 crops of real ImageNet JPEGs, the imagenet preset, each a full pass through
``source.batches(pixels=True)``, best of --reps after a warm-up pass so files are in the page cache):
  CPU path: Pillow decode + resize + crop in --workers threads, batches then copied to the GPU;
  GPU path: file read + header in the threads, one batched nvJPEG decode per batch, the Pillow-exact
  resampler on the GPU; and its parts alone (nvJPEG on preloaded bytes, the resampler on decoded images).
Then the pixel agreement of the two paths over every image (uint8 levels and after normalisation).
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    _bootstrap()
    import numpy as np
    import torch

    from trtquant.datasets import PRESETS, default_workers, open_source
    from trtquant.datasets import gpu_decode as gd

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    dev = torch.device("cuda")
    pre = PRESETS["imagenet"]
    src = open_source(args.data, preprocess=pre)
    n = len(src)
    workers = args.workers or default_workers()

    def cpu_pass():
        out = []
        for b in src.batches(args.batch_size, workers=workers, progress=False, pixels=True):
            out.append(torch.from_numpy(b.images).pin_memory().to(dev, non_blocking=True))
        torch.cuda.synchronize()
        return out

    dec = gd.make_decoder("gpu", src, dev)

    def gpu_pass():
        out = [b.images for b in src.batches(args.batch_size, workers=workers, progress=False, pixels=True,
                                             decoder=dec)]
        torch.cuda.synchronize()
        return out

    def best(fn):
        fn()
        t = []
        for _ in range(args.reps):
            s = time.perf_counter()
            fn()
            t.append(time.perf_counter() - s)
        return min(t)

    t_cpu = best(cpu_pass)
    t_gpu = best(gpu_pass)
    # the parts alone
    datas = [open(p, "rb").read() for p in src.ids]
    infos = [gd.jpeg_info(d) for d in datas]
    ok = [i for i, inf in enumerate(infos) if inf is not None and inf.gpu_decodable()]
    chunks = [ok[s:s + args.batch_size] for s in range(0, len(ok), args.batch_size)]
    tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in ok]
    decode = gd._decode_jpeg()

    def nvjpeg_only():
        res = []
        for c in range(0, len(tensors), args.batch_size):
            res.extend(decode(tensors[c:c + args.batch_size], dev))
        torch.cuda.synchronize()
        return res

    t_nv = best(nvjpeg_only)
    decoded = nvjpeg_only()
    plans = [gd._plan(pre, infos[i].width, infos[i].height) for i in ok]

    def resize_only():
        for c in range(0, len(decoded), args.batch_size):
            gd.resize_crop(decoded[c:c + args.batch_size], plans[c:c + args.batch_size], pre.crop)
        torch.cuda.synchronize()

    t_rs = best(resize_only)
    t0 = time.perf_counter()
    plans = [gd._plan(pre, infos[i].width, infos[i].height) for i in ok]
    t_plan = time.perf_counter() - t0
    # agreement
    cpu = torch.cat(cpu_pass()).cpu().numpy()
    gpu = torch.cat(gpu_pass()).cpu().numpy()
    diff = np.abs(cpu.astype(np.int16) - gpu.astype(np.int16))
    ndiff = np.abs(pre.normalize(cpu) - pre.normalize(gpu))
    per_image = diff.reshape(len(diff), -1).max(1)
    print(f"\nDecode throughput | {torch.cuda.get_device_name()} | torch {torch.__version__} | {n} images of "
          f"{args.data} | batch {args.batch_size} | {workers} threads ({os.cpu_count()} CPUs) | best of {args.reps}")
    rows = [("CPU path: Pillow decode + resize + crop, threads, copy to GPU", t_cpu, n),
            ("GPU path: nvJPEG + Pillow-exact resampler on the GPU (gpu_decode)", t_gpu, n),
            ("  nvJPEG batched decode alone (bytes in memory)", t_nv, len(ok)),
            ("  GPU resampler alone (decoded images on the GPU)", t_rs, len(ok)),
            ("  resampling tables on one CPU thread (done in the decoding threads)", t_plan, len(ok))]
    w = max(len(r[0]) for r in rows)
    for label, t, k in rows:
        print(f"{label:<{w}}  {t * 1e3:8.1f} ms  {k / t:9,.0f} img/s")
    print(f"GPU path vs CPU path: {t_cpu / t_gpu:.2f}x; images on the GPU path {dec.gpu_images // (args.reps + 2)} "
          f"per pass, on the CPU fallback {dec.cpu_images // (args.reps + 2)}")
    print(f"pixels, GPU vs CPU path over {len(cpu)} images: max |diff| {int(diff.max())} levels "
          f"(after normalisation {float(ndiff.max()):.4f}), mean {float(diff.mean()):.4f} levels "
          f"({float(ndiff.mean()):.5f}), {float((diff > 0).mean()) * 100:.2f}% of values differ, "
          f"99.9th percentile {float(np.percentile(diff, 99.9)):.0f}, images identical "
          f"{int((per_image == 0).sum())}/{len(per_image)}, median per-image max {float(np.median(per_image)):.0f}")


if __name__ == "__main__":
    main()
