"""Data-parallel ``evaluate`` and ``sweep`` over several processes (``torchrun``), identical to one process.

Started by ``torchrun --nproc-per-node K cli.py evaluate ...`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and ``MASTER_ADDR/PORT`` in the environment), each process joins one process group: NCCL, on GPU
``LOCAL_RANK``, when the run's device is CUDA; else gloo on the CPU. Outside ``torchrun`` (no
``WORLD_SIZE``, or 1) nothing changes: :class:`Context` says one process and every helper is the
identity, with no process group.

How the results stay exactly those of one process:

* **Shards are whole batches of the one-process run** (:func:`shard_range`): process ``r`` takes a
  contiguous run of batches, earlier processes one more when they do not divide evenly. Every image is
  computed in the very batch it has in one process, so its outputs are bitwise the same even where a
  kernel's choice depends on the batch size (cuDNN heuristics, GEMM blocking). Each process decodes
  only its own images (:func:`load_images`); when unreadable images were skipped, the batch boundaries
  of one process move, and each process decodes the few images it then needs from its neighbour
  (at most one batch) instead.
* **Only per-image values travel**: correctness, agreement and the per-image fidelity terms
  (:class:`..core.metrics.ImageScores`) are gathered in image order and summarised once by the same
  functions one process uses; an energy summed per shard would be summed in another order, a dB
  value averaged would be wrong. Arrays move as their bytes (:func:`all_gather_rows`), so nothing
  is rounded on the way.
* **One process decides, everyone follows** (:func:`on_root`): the calibration statistics (their
  histogram's bin width is fixed by the first batch's maximum, so a sharded pass would bin
  differently from one process), a user's ``--metric`` (called once with the gathered outputs), the
  sweep's clock. Their result, or their error, is broadcast.
* **Errors are collective** (:func:`together`): a step every process runs (decoding, building and
  running an engine) reports success or its error to all, so a failure on one process (an
  unreadable image in its shard, an out-of-memory GPU) is raised by every process instead of leaving
  the others waiting in the next collective.

Only rank 0 writes files, shows progress bars and logs (other ranks log errors only), and measures
latency and throughput.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ..core.errors import BackendUnavailable, ConfigError, DataError
from ..core.metrics import ImageScores
from ..core.types import Inputs, concat_rows
from ..core.runtime import resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT = 0


@dataclass(frozen=True)
class Context:
    """This process's place in a data-parallel run: ``rank`` of ``world_size`` processes (``local_rank``
    on its host); ``backend`` is ``"nccl"`` or ``"gloo"`` while a process group is up, None alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_root(self) -> bool:
        """Rank 0: the process that writes, logs and times."""
        return self.rank == ROOT

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def tensor_device(self) -> torch.device:
        """Where collective buffers live: this process's GPU for NCCL, the CPU for gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE = Context()
"""One process, no process group."""


def _env_int(name: str, default: int, minimum: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError("invalid distributed environment variable", subject=name, got=repr(text),
                          expected=f"an integer >= {minimum}",
                          hint="start several processes with torchrun --nproc-per-node K (it sets RANK, WORLD_SIZE, "
                               "LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    return value


def env_context() -> Context:
    """The process's rank and world size as ``torchrun`` set them (no process group is started)."""
    world = _env_int("WORLD_SIZE", 1, 1)
    if world == 1:
        return SINGLE
    rank = _env_int("RANK", 0, 0)
    if rank >= world:
        raise ConfigError("invalid distributed environment variable", subject="RANK", got=str(rank),
                          expected=f"a rank below WORLD_SIZE={world}")
    return Context(rank, world, _env_int("LOCAL_RANK", rank, 0))


_joined: dict[str, Any] = {}      # the group this module started, and the log level it changed


def join(device: str = "auto") -> Context:
    """This process's :class:`Context`, joining the process group from the environment when
    ``torchrun`` started several processes (once; :func:`leave` or the end of the process leaves it).
    Alone: :data:`SINGLE`, and nothing is started.

    With a CUDA ``device`` (``auto`` where CUDA is present, or ``cuda``) each process takes GPU
    ``LOCAL_RANK`` and the group is NCCL; on the CPU it is gloo. A group the caller started is used as
    it is. Ranks other than 0 log errors only (they would repeat rank 0's warnings)."""
    ctx = env_context()
    if not ctx.distributed:
        return SINGLE
    if not dist.is_initialized():
        dev = resolve_device(device)
        if dev.type == "cuda":
            if dev.index is not None:
                raise ConfigError("a data-parallel run takes one GPU per process", subject=f"--device {device}",
                                  got=f"{ctx.world_size} processes on one GPU",
                                  hint="use --device cuda (or auto): process r takes GPU LOCAL_RANK")
            # every process of the host sees the same counts, so all raise (and rank 0 prints) together
            local_world = _env_int("LOCAL_WORLD_SIZE", ctx.local_rank + 1, 1)
            if max(local_world, ctx.local_rank + 1) > torch.cuda.device_count():
                raise BackendUnavailable("more processes on this host than GPUs",
                                         subject=f"torchrun --nproc-per-node {local_world}",
                                         got=f"{torch.cuda.device_count()} GPU(s)",
                                         hint="start at most one process per GPU, or use --device cpu")
            torch.cuda.set_device(ctx.local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
        except (RuntimeError, ValueError, OSError) as err:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise BackendUnavailable("cannot join the process group of the torchrun launch",
                                     subject=f"{backend} at MASTER_ADDR:MASTER_PORT {where}", got=str(err)[:300],
                                     hint="start the processes with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, "
                                          "MASTER_ADDR, MASTER_PORT); pick a free --master-port") from err
        _joined["group"] = True
        atexit.register(leave)
    if not ctx.is_root and "level" not in _joined:
        ours = logging.getLogger(__name__.split(".")[0])
        _joined["level"] = ours.level
        ours.setLevel(logging.ERROR)
    return Context(ctx.rank, ctx.world_size, ctx.local_rank, str(dist.get_backend()))


def leave() -> None:
    """Leave the process group :func:`join` started (if any) and restore the log level it changed."""
    if "level" in _joined:
        logging.getLogger(__name__.split(".")[0]).setLevel(_joined.pop("level"))
    if _joined.pop("group", False) and dist.is_initialized():
        dist.destroy_process_group()


# ---- sharding ---------------------------------------------------------------------------------------

def shard_range(n: int, unit: int, rank: int, world_size: int) -> range:
    """The items of ``range(n)`` that process ``rank`` of ``world_size`` takes: whole ``unit``-sized
    blocks (the one-process batches; the last may be short), contiguous, in rank order; when the
    blocks do not divide evenly the first ``blocks % world_size`` ranks take one more. Rank order is
    item order, so shards concatenated in rank order are the items in order."""
    if unit < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_range: unit {unit}, rank {rank}, world size {world_size}")
    blocks = -(-n // unit)
    base, extra = divmod(blocks, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return range(min(n, first * unit), min(n, last * unit))


def aligned_ranges(counts: Sequence[int], unit: int) -> list[range]:
    """Image ranges per rank after decoding, in the one-process numbering of readable images.

    Rank ``r`` decoded ``counts[r]`` readable images, the global ones from ``offset_r = sum(counts[:r])``.
    One process batches readable images in ``unit``s from 0, so rank ``r`` evaluates
    ``[ceil(offset_r / unit) * unit, ceil(offset_{r+1} / unit) * unit)`` (rank 0 from 0, the last to
    the end): whole batches, at most ``unit - 1`` images beyond its own. Without skipped images the
    offsets are multiples of ``unit`` and every rank evaluates exactly what it decoded."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    starts = [0] + [min(total, -(-int(o) // unit) * unit) for o in offsets[1:-1]] + [total]
    return [range(starts[r], starts[r + 1]) for r in range(len(counts))]


# ---- collectives ------------------------------------------------------------------------------------

class _Failure:
    """A rank's error in transit (the exception itself when it pickles)."""

    def __init__(self, rank: int, err: BaseException):
        self.rank = rank
        try:
            pickle.dumps(err)
            self.err = err
        except Exception:    # an exception carrying something unpicklable: its type and message
            self.err = RuntimeError(f"{type(err).__name__} on rank {rank}: {err}")


def exchange(ctx: Context, fn: Callable[[], T]) -> list[T]:
    """``fn()`` on every rank; every rank's value, in rank order, on every rank. If ``fn`` raised on any
    rank, every rank raises the error of the lowest such rank (so no rank is left waiting)."""
    try:
        local: Any = fn()
    except Exception as err:    # any error: carried to every rank and raised there
        if not ctx.distributed:
            raise
        local = _Failure(ctx.rank, err)
    if not ctx.distributed:
        return [local]
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, local)
    for part in parts:
        if isinstance(part, _Failure):
            if part.rank == ctx.rank and isinstance(local, _Failure):
                raise local.err
            raise part.err
    return parts


def together(ctx: Context, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, returning this rank's value once every rank has succeeded; if any
    raised, every rank raises the error of the lowest such rank. Only success travels, not the value."""
    result: list[Any] = []

    def run() -> bool:
        result.append(fn())
        return True

    exchange(ctx, run)
    return result[0]


def on_root(ctx: Context, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; its value (or its error, raised by every rank) broadcast to every rank."""
    if not ctx.distributed:
        return fn()
    box: list[Any] = [None]
    if ctx.is_root:
        try:
            box[0] = fn()
        except Exception as err:    # raised on every rank below
            box[0] = _Failure(ctx.rank, err)
    dist.broadcast_object_list(box, src=ROOT)
    if isinstance(box[0], _Failure):
        raise box[0].err
    return box[0]


def all_gather_objects(ctx: Context, obj: T) -> list[T]:
    """Every rank's (picklable) ``obj``, in rank order."""
    return exchange(ctx, lambda: obj)


def _as_bytes(arr: np.ndarray | None, device: torch.device) -> torch.Tensor:
    raw = np.zeros(0, np.uint8) if arr is None else np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return torch.from_numpy(raw.copy()).to(device)


def _meta(x):
    """What a rank holds: None, (shape, dtype) of an array, or {input name: (shape, dtype)} of :class:`Inputs`."""
    if x is None:
        return None
    if isinstance(x, Inputs):
        return {k: (tuple(v.shape), v.dtype.str) for k, v in x.arrays.items()}
    return tuple(x.shape), np.asarray(x).dtype.str


def _empty(meta):
    """No rows, of the structure ``meta`` describes."""
    if isinstance(meta, dict):
        return Inputs({k: np.zeros((0, *shape[1:]), np.dtype(dtype)) for k, (shape, dtype) in meta.items()})
    shape, dtype = meta
    return np.zeros((0, *shape[1:]), np.dtype(dtype))


def _rebuild(buf: torch.Tensor, meta) -> np.ndarray:
    shape, dtype = meta
    return buf.cpu().numpy().view(np.dtype(dtype)).reshape(shape)      # writable, as a one-process array is


def _concat(parts: list) -> np.ndarray | Inputs | None:
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    metas = [_meta(p) for p in parts]
    shapes = {str({k: (m[0][1:], m[1]) for k, m in meta.items()}) if isinstance(meta, dict) else str((meta[0][1:], meta[1]))
              for meta in metas}
    if len(shapes) > 1:
        raise ValueError("ranks hold rows of different shapes or dtypes: " + ", ".join(map(str, metas)))
    return concat_rows(parts)


def _gather_array(ctx: Context, arr: np.ndarray | None, metas: list, root_only: bool) -> np.ndarray | None:
    sizes = [0 if m is None else int(np.prod(m[0])) * np.dtype(m[1]).itemsize for m in metas]
    if max(sizes) == 0:           # no bytes anywhere: the rows (if any) are empty
        got = _concat([None if m is None else np.zeros(m[0], np.dtype(m[1])) for m in metas])
        return None if root_only and not ctx.is_root else got
    mine = _as_bytes(arr, ctx.tensor_device)
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=ctx.tensor_device)
    padded[:mine.numel()] = mine
    if root_only:
        bufs = [torch.empty_like(padded) for _ in range(ctx.world_size)] if ctx.is_root else None
        dist.gather(padded, bufs, dst=ROOT)
        if not ctx.is_root:
            return None
    else:
        bufs = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(bufs, padded)
    return _concat([None if m is None else _rebuild(b[:n], m) for b, n, m in zip(bufs, sizes, metas)])


def _gather(ctx: Context, x, root_only: bool):
    if not ctx.distributed:
        return x
    metas = all_gather_objects(ctx, _meta(x))
    known = next((m for m in metas if m is not None), None)
    if known is None:
        return None
    if isinstance(known, dict):   # several model inputs: each input's rows
        parts = {k: _gather_array(ctx, None if x is None else x.arrays[k], [None if m is None else m[k] for m in metas],
                                  root_only) for k in known}
        return None if root_only and not ctx.is_root else Inputs(parts)
    return _gather_array(ctx, x, metas, root_only)


def all_gather_rows(ctx: Context, rows: np.ndarray | Inputs | None) -> np.ndarray | Inputs | None:
    """Every rank's rows (axis 0) concatenated in rank order, on every rank; None when no rank has any.

    An array of any fixed-size dtype (numbers, bool) and shape (equal after axis 0), or :class:`Inputs`
    (an array per model input); any number of rows per rank (None or 0 rows: none). Exact: the arrays
    move as their bytes."""
    return _gather(ctx, rows, root_only=False)


def gather_rows(ctx: Context, rows: np.ndarray | Inputs | None) -> np.ndarray | Inputs | None:
    """Like :func:`all_gather_rows`, but only rank 0 receives the concatenation (None elsewhere):
    for the large arrays that only rank 0 reads (a user metric's full outputs)."""
    return _gather(ctx, rows, root_only=True)


def gather_outputs(ctx: Context, outputs: Sequence[np.ndarray] | None, n_outputs: int) -> tuple | None:
    """Every output's rows from every rank, in image order, on rank 0 (None elsewhere)."""
    got = [gather_rows(ctx, None if outputs is None else outputs[i]) for i in range(n_outputs)]
    return tuple(got) if ctx.is_root else None


def all_sum(ctx: Context, arr) -> np.ndarray:
    """The element-wise sum over ranks of an integer or boolean array (counts), exact (int64).

    Float sums are refused: their value would depend on the order of the additions; gather
    per-item values (:func:`all_gather_rows`) and reduce them once instead."""
    a = np.asarray(arr)
    if a.dtype.kind not in "biu":
        raise TypeError(f"all_sum adds integer counts exactly; got {a.dtype} (gather per-item values instead)")
    a = a.astype(np.int64)
    if not ctx.distributed:
        return a
    t = torch.from_numpy(a.copy()).to(ctx.tensor_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def clock(ctx: Context, local: Callable[[], float]) -> Callable[[], float]:
    """A clock every rank reads alike (rank 0's, broadcast at every reading) for decisions such as a
    time budget, which must be the same on every rank. Every rank must read it at the same points."""
    if not ctx.distributed:
        return local
    return lambda: on_root(ctx, local)


# ---- the images of this rank ------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardImages:
    """This rank's images of a source, as one process would number its readable images.

    ``images`` are rows ``lo..hi`` of what one process would concatenate (``count`` rows over every
    rank); ``labels`` and ``skipped`` are those of every rank, in order."""

    images: np.ndarray | Inputs
    lo: int
    hi: int
    count: int
    labels: np.ndarray | None
    skipped: tuple[tuple[str, str], ...]

    @property
    def local_labels(self) -> np.ndarray | None:
        return None if self.labels is None else self.labels[self.lo:self.hi]


def _decode(source, positions: Sequence[int], batch_size: int, progress: bool, pixels: bool):
    """The readable images among ``positions`` of ``source`` (array or None, their positions, skipped)."""
    if len(positions) == 0:
        return None, [], []
    sub = source.subset(positions)
    arrays, kept = [], []
    index = {item: p for p, item in zip(positions, sub.ids)}
    try:
        for b in sub.batches(batch_size, progress=progress, pixels=pixels):
            arrays.append(b.images)
            kept.extend(index[i] for i in b.ids)
    except DataError:
        # every item of this shard unreadable: a global "no readable images" only if every shard is so
        if not (source.on_bad_image == "skip" and len(sub.skipped) == len(sub)):
            raise
    return (concat_rows(arrays) if arrays else None), kept, list(sub.skipped)


def load_images(ctx: Context, source, unit: int, *, batch_size: int, progress: bool = True,
                pixels: bool = False) -> ShardImages:
    """Decode this rank's share of ``source`` and place it in the one-process numbering (see
    :func:`aligned_ranges`). ``unit`` is the batch the evaluation runs (a model's fixed batch, or the
    batch size): shards are whole units of it."""
    if not ctx.distributed:
        batches = list(source.batches(batch_size, progress=progress, pixels=pixels))
        images = concat_rows([b.images for b in batches])
        labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
        return ShardImages(images, 0, len(images), len(images), labels, tuple(tuple(s) for s in source.skipped))
    mine = shard_range(len(source), unit, ctx.rank, ctx.world_size)
    images, kept, skipped = together(ctx, lambda: _decode(source, mine, batch_size, progress, pixels))
    parts = all_gather_objects(ctx, (kept, skipped, _meta(images)))
    positions = np.array([p for k, _, _ in parts for p in k], dtype=np.int64)
    all_skipped = tuple(tuple(s) for _, sk, _ in parts for s in sk)
    if len(positions) == 0:
        source.skipped = list(all_skipped)
        source._log_pass_summary(len(source), 0)      # raises "no readable images", as one process does
    if all_skipped and ctx.is_root:
        log.warning("%s: skipped %d of %d image(s) as unreadable, over the %d processes", source.name,
                    len(all_skipped), len(source), ctx.world_size)
    counts = [len(k) for k, _, _ in parts]
    rng = aligned_ranges(counts, unit)[ctx.rank]
    offset = sum(counts[:ctx.rank])
    have_hi = offset + counts[ctx.rank]
    own = images[max(0, rng.start - offset):max(0, min(rng.stop, have_hi) - offset)] if images is not None else None
    need = positions[max(rng.start, have_hi):rng.stop]       # the neighbours' images of my last batch
    extra = together(ctx, lambda: _decode(source, need, batch_size, False, pixels)[0])   # every rank: a collective
    local = _concat([own, extra])
    if local is None:
        local = _empty(next(m for _, _, m in parts if m is not None))
    labels = None if source.labels is None else source.labels[positions]
    return ShardImages(local, rng.start, rng.stop, len(positions), labels, all_skipped)


def gather_scores(ctx: Context, make: Callable[[], ImageScores | None]) -> ImageScores | None:
    """Every rank's :class:`..core.metrics.ImageScores` of its images (``make()``; None: no images),
    concatenated in image order, on every rank (an error in any rank's ``make`` is raised by all)."""
    return ImageScores.concat(exchange(ctx, make)) if ctx.distributed else make()


def head_rows(ctx: Context, shard: ShardImages, rows: np.ndarray | Inputs | None, k: int) -> np.ndarray | Inputs:
    """The first ``k`` rows (in image order) of an array whose rows ``shard.lo..hi`` this rank holds."""
    if not ctx.distributed:
        return rows[:k]
    take = None if rows is None else rows[:max(0, min(k, shard.hi) - shard.lo)]
    return all_gather_rows(ctx, take if take is not None and len(take) else None)
