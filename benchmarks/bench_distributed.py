"""`evaluate` (and optionally `sweep`) in one process vs K processes under torchrun: wall time, speed-up,
and whether the results are identical (every number and artifact, timings and environment aside).

    python3 benchmarks/bench_distributed.py --data .bench_data --nproc 2          # on a machine of 2+ GPUs
    .venv/bin/python benchmarks/bench_distributed.py --device cpu --nproc 2 --num-images 20 --batch-size 4

Both runs use the same settings. On the CPU both get one intra-op thread per process (torchrun's
default, OMP_NUM_THREADS=1): a CPU convolution's rounding depends on how its threads split it, so a
one-process run with more threads would not be comparable bit for bit. Wall time is the whole command
(start-up, export cache, decoding, calibration on rank 0, every configuration, timing on rank 0).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING = {"build_s", "accuracy_pass_s", "timing_s", "latency_ms", "throughput", "peak_device_mb", "seconds",
          "timings", "environment"}


def comparable(obj, out_dir):
    if isinstance(obj, dict):
        return {k: comparable(v, out_dir) for k, v in obj.items() if k not in TIMING and k != "reason"}
    if isinstance(obj, list):
        return [comparable(v, out_dir) for v in obj]
    return obj.replace(str(out_dir), "OUT") if isinstance(obj, str) else obj


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="imagenet_sample")
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: the GPUs here, else 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--configs", default="fp32,fp16,int8:entropy,int8:minmax")
    ap.add_argument("--num-images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sweep", action="store_true", help="also time `sweep --target-drop 0.5%%`")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    nproc = args.nproc or (torch.cuda.device_count() if cuda and torch.cuda.device_count() > 1 else 2)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    common = ["--data", args.data, "--num-images", str(args.num_images), "--device", args.device, "--no-progress"]
    jobs = [("evaluate", ["evaluate", "--configs", args.configs, "--backend", args.backend, "--batch-size",
                          str(args.batch_size), *common], "results.json")]
    if args.sweep:
        jobs.append(("sweep", ["sweep", "--target-drop", "0.5%", *common], "sweep.json"))
    print(f"\n{nproc} processes vs 1 | device {'cuda' if cuda else 'cpu'} "
          f"{torch.cuda.get_device_name() if cuda else ''} | {args.num_images} images of {args.data}, "
          f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    print(f"| verb | 1 process (s) | {nproc} processes (s) | speed-up | identical results |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for verb, cmd, doc_name in jobs:
            one, many = Path(tmp) / f"{verb}1", Path(tmp) / f"{verb}{nproc}"
            t1 = run([sys.executable, str(REPO / "cli.py"), *cmd, "--out", str(one)], env)
            tk = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
                      "127.0.0.1", "--master-port", str(free_port()), str(REPO / "cli.py"), *cmd, "--out", str(many)], env)
            a, b = (json.loads((d / doc_name).read_text()) for d in (one, many))
            same = comparable(a, one) == comparable(b, many)
            print(f"| {verb} | {t1:.1f} | {tk:.1f} | {t1 / tk:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
