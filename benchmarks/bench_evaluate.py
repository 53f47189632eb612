"""Full `evaluate` of MobileNetV2 with five configurations: wall time and where it goes.

    .venv/bin/python benchmarks/bench_evaluate.py --data ../shared/data/imagenet-sample --backend onnxruntime
    python3 benchmarks/bench_evaluate.py --data .bench_data --backend torch          # on the GPU machine
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--configs", default="fp32,fp16,int8:entropy,int8:minmax,int8:percentile")
    ap.add_argument("--num-images", type=int, default=1000)
    args = ap.parse_args()
    _bootstrap()
    import logging

    logging.basicConfig(level=logging.ERROR)
    from trtquant.quant.settings import EvalSettings
    from trtquant.quant.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = evaluate(EvalSettings(configs=args.configs, backend=args.backend, data=args.data,
                                    num_images=args.num_images), Path(tmp) / "out", progress=False)
        wall = time.perf_counter() - t
    doc = res.doc
    env = doc.environment
    print(f"\nevaluate: {doc.model.name}, {doc.data.images} images, backend {args.backend}, "
          f"device {env['device']} {env.get('gpu', '')} | wall {wall:.1f} s")
    print(f"  load + decode images            {doc.timings['load_images_s']:7.2f} s")
    if doc.calibration is not None:
        print(f"  statistics pass ({doc.calibration.images} calib img)    {doc.calibration.seconds:7.2f} s")
    for r in doc.results:
        if not r.ok:
            print(f"  {r.config:<16} failed: {r.reason[:90]}")
            continue
        top1 = float("nan") if r.top1 is None else r.top1
        print(f"  {r.config:<16} build {r.build_s:6.2f} s  accuracy pass {r.accuracy_pass_s:6.2f} s  "
              f"latency+throughput {r.timing_s:6.2f} s  | top-1 {top1 * 100:.2f}%  "
              f"drop {r.drop_pp.points:+.2f} pp  b1 {r.latency_ms.p50:.2f} ms")
    print(f"  recommendation: {doc.recommendation.config} ({doc.recommendation.reason})")

if __name__ == "__main__":
    main()
