"""One rank of tests/test_distributed.py's helper checks, started by ``python -m torch.distributed.run``.

Usage: distributed_worker.py IMAGE_FOLDER OUT_DIR. Every rank checks the helpers of
``trtquant.quant.distributed`` against the one-process answer it computes itself, and writes
``OUT_DIR/rank<r>.json`` with what it saw; an assertion that fails makes the launch fail.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

PACKAGE = Path(__file__).resolve().parents[1]


def _import_checkout():
    """This checkout as ``trtquant`` (as cli.py does), whatever else is installed."""
    if "trtquant" not in sys.modules:
        spec = importlib.util.spec_from_file_location("trtquant", PACKAGE / "__init__.py",
                                                      submodule_search_locations=[str(PACKAGE)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["trtquant"] = module
        spec.loader.exec_module(module)


def bitwise(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def main(folder: str, out: str) -> None:
    _import_checkout()
    from trtquant.core import metrics
    from trtquant.core.errors import DataError
    from trtquant.core.types import Inputs
    from trtquant.datasets import PRESETS, open_source
    from trtquant.quant import distributed as D

    ctx = D.join("cpu")
    assert (ctx.world_size, ctx.backend) == (3, "gloo"), ctx
    r = ctx.rank
    seen = {"rank": r}

    # rows of every dtype, 20 rows over 3 ranks (7/7/6), bit for bit (NaN, -0.0, inf included)
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((20, 3, 2)).astype(np.float32)
    f32[3, 0, 0], f32[5, 1, 1], f32[17, 2, 0] = np.nan, -0.0, np.inf
    full = {"f32": f32, "f64": rng.standard_normal(20), "bool": rng.random(20) > 0.5,
            "i64": rng.integers(-2**62, 2**62, (20, 4)), "u8": rng.integers(0, 255, (20, 5, 5), dtype=np.uint8)}
    mine = D.shard_range(20, 1, r, 3)
    seen["shard"] = [mine.start, mine.stop]
    for name, a in full.items():
        assert bitwise(D.all_gather_rows(ctx, a[mine.start:mine.stop]), a), name
        got = D.gather_rows(ctx, a[mine.start:mine.stop])
        assert (got is None) if r else bitwise(got, a), name
    # whole blocks of 4: 8/8/4 rows; one block only: ranks 1 and 2 hold none (None or 0 rows)
    four = D.shard_range(20, 4, r, 3)
    seen["shard4"] = [four.start, four.stop]
    got = D.all_gather_rows(ctx, f32[four.start:four.stop])
    assert bitwise(got, f32) and got.flags.writeable
    one = D.shard_range(4, 4, r, 3)
    assert bitwise(D.all_gather_rows(ctx, f32[one.start:one.stop] if r != 1 else None), f32[:4])
    assert D.all_gather_rows(ctx, None) is None
    # a model's several inputs: an array per input, gathered input by input (rank 2: none)
    both = Inputs({"image": full["u8"], "aux": full["f64"]})
    got = D.all_gather_rows(ctx, both[mine.start:mine.stop] if r != 2 else None)
    assert got.names == ("image", "aux") and bitwise(got.arrays["image"], full["u8"][:14])
    assert bitwise(got.arrays["aux"], full["f64"][:14])

    # exact integer sums; float sums refused (their value would depend on the order)
    assert D.all_sum(ctx, np.array([r, 2**40 + r, 1])).tolist() == [3, 3 * 2**40 + 3, 3]
    assert D.all_sum(ctx, np.array([True, r == 2])).tolist() == [3, 1]
    try:
        D.all_sum(ctx, np.array([0.1]))
        raise AssertionError("a float all_sum was accepted")
    except TypeError:
        pass

    # errors: the lowest failing rank's error is raised by every rank (no rank left waiting)
    def fails_on_1_and_2():
        if r == 1:
            raise DataError("unreadable image", subject="shard of rank 1", got="a truncated JPEG")
        if r == 2:
            raise ValueError("rank 2's own failure")
        return r
    try:
        D.together(ctx, fails_on_1_and_2)
        raise AssertionError("no error was raised")
    except DataError as err:
        seen["error"] = str(err)
    assert D.exchange(ctx, lambda: r * 10) == [0, 10, 20]
    assert D.together(ctx, lambda: r) == r
    assert D.on_root(ctx, lambda: f"rank {r}'s value") == "rank 0's value"
    try:
        D.on_root(ctx, lambda: 1 / 0)
        raise AssertionError("rank 0's error was not raised")
    except ZeroDivisionError:
        pass
    tick = iter(range(100, 200))
    clock = D.clock(ctx, lambda: float(next(tick)) + r)          # rank 0's reading on every rank
    assert [clock(), clock()] == [100.0, 101.0]

    # per-image scores of shards gathered in image order: exactly the one-pass summaries
    logits = rng.standard_normal((20, 10)).astype(np.float32)
    ref = logits + rng.standard_normal((20, 10)).astype(np.float32) * 0.3
    labels = rng.integers(0, 10, 20)
    one_pass = metrics.image_scores((ref,), (logits,), labels)
    s = slice(mine.start, mine.stop)
    gathered = D.gather_scores(ctx, lambda: metrics.image_scores((ref[s],), (logits[s],), labels[s]))
    assert bitwise(gathered.top1, one_pass.top1) and bitwise(gathered.agreement, one_pass.agreement)
    assert metrics.fidelity_from_terms(gathered.fidelity[0]) == metrics.output_fidelity(ref, logits)

    # images: each rank decodes its shard; with an unreadable image, the one-process batches of 4
    src = open_source(folder, preprocess=PRESETS["imagenet"])
    alone = list(src.batches(4, progress=False, pixels=True))
    pixels = np.concatenate([b.images for b in alone])
    shard = D.load_images(ctx, src, 4, batch_size=4, progress=False, pixels=True)
    seen["images"] = [shard.lo, shard.hi, shard.count, len(shard.images)]
    assert shard.count == len(pixels) and bitwise(shard.images, pixels[shard.lo:shard.hi])
    assert shard.lo % 4 == 0 and (shard.hi % 4 == 0 or shard.hi == shard.count)
    assert bitwise(D.all_gather_rows(ctx, shard.images), pixels)
    assert shard.skipped == tuple(tuple(x) for x in src.skipped) and len(shard.skipped) == 1
    assert bitwise(D.head_rows(ctx, shard, shard.images, 6), pixels[:6])
    (Path(out) / f"rank{r}.json").write_text(json.dumps(seen))
    D.leave()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
