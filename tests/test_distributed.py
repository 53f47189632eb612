"""Data-parallel evaluate and sweep (torchrun, gloo on the CPU): the results of K processes are those of one.

The launches run ``python -m torch.distributed.run`` on a free port; torchrun gives each process one
intra-op thread (``OMP_NUM_THREADS=1``), so the one-process references here run with one thread too
(on the CPU a convolution's rounding depends on how its threads split it; on GPUs it does not).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from trtquant import cli
from trtquant.core import metrics
from trtquant.core.errors import ConfigError
from trtquant.quant.distributed import SINGLE, aligned_ranges, all_gather_rows, env_context, join, shard_range

REPO = Path(__file__).resolve().parents[1]
TIMING = {"build_s", "accuracy_pass_s", "timing_s", "latency_ms", "throughput", "peak_device_mb", "seconds",
          "timings", "environment"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_thread(fn):
    """``fn()`` with one intra-op thread, as every torchrun process has."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def comparable(obj, out_dir):
    """A results/sweep document without what measures time or the machine, with the output folder as OUT."""
    if isinstance(obj, dict):
        return {k: comparable(v, out_dir) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [comparable(v, out_dir) for v in obj]
    return obj.replace(str(out_dir), "OUT") if isinstance(obj, str) else obj


def jpg_folder(path: Path, bad_at: str | None = "imagenet_03_bad.jpg") -> Path:
    """The 20 bundled ImageNet JPEGs, labelled by a labels.csv (their class index is in the name), plus
    one unreadable file sorted in among them."""
    from trtquant.datasets.sources import _foolbox_data_dir

    path.mkdir()
    rows = ["path,wnid,index,name"]
    for p in sorted(_foolbox_data_dir().glob("imagenet_*.jpg")):
        shutil.copy(p, path / p.name)
        rows.append(f"{p.name},,{p.stem.split('_')[2]},")
    if bad_at:
        (path / bad_at).write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


# ---- the pure parts: shards and their alignment ---------------------------------------------------

def test_shards_are_whole_batches_in_rank_order():
    assert [shard_range(20, 1, r, 3) for r in range(3)] == [range(0, 7), range(7, 14), range(14, 20)]
    # 20 images in batches of 4 = 5 batches: 2, 2, 1 (the first ranks take the extra batch)
    assert [shard_range(20, 4, r, 3) for r in range(3)] == [range(0, 8), range(8, 16), range(16, 20)]
    assert [shard_range(21, 4, r, 2) for r in range(2)] == [range(0, 12), range(12, 21)]
    assert [shard_range(3, 4, r, 2) for r in range(2)] == [range(0, 3), range(3, 3)]     # one short batch
    assert shard_range(0, 4, 1, 2) == range(0, 0)
    with pytest.raises(ValueError):
        shard_range(10, 0, 0, 1)


def test_alignment_after_skipped_images():
    # nothing skipped: every rank evaluates what it decoded
    assert aligned_ranges([8, 8, 4], 4) == [range(0, 8), range(8, 16), range(16, 20)]
    # one unreadable image on rank 0 (7 of 8 readable): one process batches 0-3, 4-7, 8-11, ...; rank 0
    # evaluates 0-7 (its 7 and rank 1's first), rank 1 8-15, rank 2 16-19
    assert aligned_ranges([7, 8, 5], 4) == [range(0, 8), range(8, 16), range(16, 20)]
    # rank 0 decoded nothing readable: rank 1 starts at 0 and takes 3 of rank 2's 5
    assert aligned_ranges([0, 5, 5], 4) == [range(0, 0), range(0, 8), range(8, 10)]
    assert aligned_ranges([11, 9], 4) == [range(0, 12), range(12, 20)]


def test_fidelity_from_per_image_terms_hand_computed():
    ref = np.array([[3.0, 4.0], [0.0, 0.0]])
    app = np.array([[3.0, 3.0], [0.0, 1.0]])
    terms = metrics.fidelity_terms(ref, app)
    # per image: signal, noise, cosine (1 where a vector is zero), max |error|
    assert terms.tolist() == [[25.0, 1.0, pytest.approx(21 / (5 * np.sqrt(18))), 1.0], [0.0, 1.0, 1.0, 1.0]]
    f = metrics.fidelity_from_terms(terms)
    assert f["sqnr_db"] == pytest.approx(10 * np.log10(25 / 2)) and f["rel_error"] == pytest.approx(np.sqrt(2) / 5)
    assert f["max_abs"] == 1.0 and f["cosine"] == pytest.approx((21 / (5 * np.sqrt(18)) + 1) / 2)
    assert metrics.fidelity_from_terms(metrics.fidelity_terms(ref, ref))["sqnr_db"] == float("inf")
    # shards' terms in image order summarise to the one-pass numbers, bit for bit
    rng = np.random.default_rng(0)
    a = rng.standard_normal((10, 3, 4)).astype(np.float32)
    b = a + rng.standard_normal(a.shape).astype(np.float32) * 0.1
    split = np.concatenate([metrics.fidelity_terms(a[:3], b[:3]), metrics.fidelity_terms(a[3:], b[3:])])
    assert metrics.fidelity_from_terms(split) == metrics.output_fidelity(a, b)
    assert metrics.output_fidelity(a, b)["sqnr_db"] == pytest.approx(metrics.sqnr_db(a, b), rel=1e-12)


def test_outside_torchrun_nothing_changes(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert env_context() == SINGLE and join("cpu") == SINGLE and not torch.distributed.is_initialized()
    x = np.arange(6).reshape(3, 2)
    assert all_gather_rows(SINGLE, x) is x
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE.*torchrun"):
        env_context()


# ---- three processes: the helpers -----------------------------------------------------------------

def test_helpers_on_three_gloo_processes(tmp_path):
    folder = jpg_folder(tmp_path / "imgs", bad_at="imagenet_03_bad.jpg")
    out = tmp_path / "out"
    out.mkdir()
    p = torchrun(3, REPO / "tests" / "distributed_worker.py", folder, out)
    assert p.returncode == 0, p.stderr[-4000:]
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(3)]
    assert [s["shard"] for s in seen] == [[0, 7], [7, 14], [14, 20]]
    assert [s["shard4"] for s in seen] == [[0, 8], [8, 16], [16, 20]]
    # 21 files, the 5th unreadable: decoded 8/8/5 items (7/8/5 readable), evaluated 8/8/4 images
    assert [s["images"] for s in seen] == [[0, 8, 20, 8], [8, 16, 20, 8], [16, 20, 20, 4]]
    assert {s["error"] for s in seen} == {"unreadable image | shard of rank 1: got a truncated JPEG"}


# ---- end to end: evaluate and sweep, one process vs two -------------------------------------------

def test_evaluate_on_two_processes_writes_what_one_process_writes(tmp_path, capsys):
    """MobileNetV2 on the bundled images (+ one unreadable file, which moves the batch boundaries),
    FP32 and simulated INT8 on the torch backend, with a user metric."""
    folder = jpg_folder(tmp_path / "imgs")
    (tmp_path / "mymetric.py").write_text(
        "import os, numpy as np\n"
        "def score(fp32, outputs, labels):\n"
        f"    with open({str(tmp_path / 'calls.txt')!r}, 'a') as f:\n"
        "        f.write(f'{os.getpid()} {len(outputs[0])}\\n')\n"
        "    return float((outputs[0].argmax(1) == labels).mean() + np.abs(outputs[0] - fp32[0]).mean())\n")
    args = ["evaluate", "--configs", "fp32,int8:minmax", "--backend", "torch", "--device", "cpu", "--data", folder,
            "--batch-size", "4", "--latency-iters", "1", "--metric",
            f"{tmp_path / 'mymetric.py'}:score", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert one_thread(lambda: cli.main([str(a) for a in args] + ["--out", str(one)])) == 0
    capsys.readouterr()
    p = torchrun(2, REPO / "cli.py", *args, "--out", two)
    assert p.returncode == 0, p.stderr[-4000:]
    assert p.stdout.count("recommendation:") == 1 and "int8:minmax" in p.stdout      # rank 0 alone prints
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert b["environment"]["processes"] == 2 and a["environment"]["processes"] == 1
    assert a["data"]["images"] == 20 and len(a["data"]["skipped"]) == 1
    assert a["results"][1]["top1"] is not None and a["results"][1]["metric"] is not None
    assert a["recommendation"]["config"] == b["recommendation"]["config"]
    for doc in (a, b):
        doc["recommendation"].pop("reason")        # names the measured latency
    assert comparable(a, one) == comparable(b, two)
    for f in ("int8_minmax/calib.bin", "int8_minmax/model_qdq.onnx", "int8_minmax/plan.json"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    # the metric ran once per configuration on every image, in one process (rank 0) of the launch
    calls = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert [n for _, n in calls] == ["20"] * 4 and len({pid for pid, _ in calls[2:]}) == 1


def test_evaluate_of_a_two_input_model_on_two_processes(tmp_path, capsys):
    """Named arrays (an image and an auxiliary vector per sample) sharded row by row, input by input."""
    from test_multi_input import two_input_model

    model = two_input_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    image, aux = rng.standard_normal((22, 3, 8, 8)).astype(np.float32), rng.standard_normal((22, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", image=image, aux=aux, labels=rng.integers(0, 10, 22))
    args = ["evaluate", "--onnx", model, "--data", tmp_path / "d.npz", "--configs", "fp32,int8:minmax,int8:entropy",
            "--device", "cpu", "--batch-size", "4", "--latency-iters", "1", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert one_thread(lambda: cli.main([str(a) for a in args] + ["--out", str(one)])) == 0
    capsys.readouterr()
    p = torchrun(2, REPO / "cli.py", *args, "--out", two)
    assert p.returncode == 0, p.stderr[-4000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert [r["status"] for r in a["results"]] == ["ok"] * 3 and a["data"]["images"] == 22
    for doc in (a, b):              # ONNX Runtime's INT8 engines are real: the fastest is a timing
        doc.pop("recommendation")
    assert comparable(a, one) == comparable(b, two)


def tiny_model(path: Path, batch: int) -> Path:
    """Three convolutions and a classifier, fixed batch ``batch`` (so that batch is the shard unit)."""
    rng = np.random.default_rng(3)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "w2": rng.standard_normal((8, 8, 3, 3)) * 0.2,
         "w3": rng.standard_normal((8, 8, 1, 1)) * 0.4, "wf": rng.standard_normal((8, 10)) * 0.5}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], "relu2"), helper.make_node("Conv", ["r2", "w3"], ["c3"], "conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"], "pool"), helper.make_node("Flatten", ["p"], ["f"], "flat"),
             helper.make_node("MatMul", ["f", "wf"], ["y"], "fc")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
                          initializer=[numpy_helper.from_array(a.astype(np.float32), n) for n, a in w.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.mark.slow
def test_sweep_on_two_processes_finds_what_one_process_finds(tmp_path, capsys):
    """The search's every evaluation sharded (22 images in fixed batches of 4: 12 + 10), the layers'
    sensitivity shared out, the decisions identical; sweep.json and the plan files equal."""
    model = tiny_model(tmp_path / "tiny.onnx", batch=4)
    np.save(tmp_path / "x.npy", np.random.default_rng(4).standard_normal((22, 3, 16, 16)).astype(np.float32))
    args = ["sweep", "--onnx", model, "--data", tmp_path / "x.npy", "--target-drop", "sqnr:45dB", "--device", "cpu",
            "--proxy-images", "6", "--calib-images", "16", "--method", "minmax", "--no-progress",
            "--objective", "layers"]        # its greedy path adds and prunes (latency: the free stem conv ends it)
    one, two = tmp_path / "one", tmp_path / "two"
    assert one_thread(lambda: cli.main([str(a) for a in args] + ["--out", str(one)])) == 0
    capsys.readouterr()
    p = torchrun(2, REPO / "cli.py", *args, "--out", two)
    assert p.returncode == 0, p.stderr[-4000:]
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (one, two))
    assert a["search"]["evaluations"] >= 3 and a["data"]["images"] == 22       # a search, not one look
    assert comparable(a, one) == comparable(b, two)
    for f in ("plan.json", "model_qdq.onnx", "calib.bin"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
