"""The standard ImageNet-1k class list (WordNet ids and names in model output order)."""

from __future__ import annotations

import functools
import re
from importlib import resources

from ..core.errors import DataError

__all__ = ["imagenet_classes", "wnid_to_index", "is_wnid", "NUM_CLASSES"]

NUM_CLASSES = 1000
_CLASSES_FILE = "imagenet_classes.txt"
_WNID_RE = re.compile(r"^n\d{8}$")


def is_wnid(name: str) -> bool:
    """True for a WordNet-id shaped name such as ``n01440764`` (known to ImageNet-1k or not)."""
    return bool(_WNID_RE.match(name))


@functools.lru_cache(maxsize=1)
def _load() -> tuple[tuple[str, str], ...]:
    ref = resources.files(__package__).joinpath(_CLASSES_FILE)
    try:
        text = ref.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError("cannot read the ImageNet class list", subject=str(ref), got=str(err),
                        hint="reinstall trtquant; datasets/imagenet_classes.txt ships with the package") from err
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        wnid, sep, name = line.partition("\t")
        if not sep or not is_wnid(wnid):
            raise DataError("malformed line in the ImageNet class list", subject=f"{ref}:{lineno}",
                            got=repr(line), expected="WNID<TAB>NAME")
        rows.append((wnid, name))
    if len(rows) != NUM_CLASSES or len({w for w, _ in rows}) != NUM_CLASSES:
        raise DataError("the ImageNet class list is incomplete", subject=str(ref),
                        got=f"{len(rows)} lines", expected=f"{NUM_CLASSES} distinct WNIDs")
    return tuple(rows)


def imagenet_classes() -> list[tuple[str, str]]:
    """``[(wnid, name), ...]`` in standard ImageNet-1k index order (1000 entries)."""
    return list(_load())


@functools.lru_cache(maxsize=1)
def _wnid_map() -> dict[str, int]:
    return {wnid: i for i, (wnid, _) in enumerate(_load())}


def wnid_to_index() -> dict[str, int]:
    """``{wnid: standard index}`` for the 1000 ImageNet-1k classes (a fresh copy)."""
    return dict(_wnid_map())
