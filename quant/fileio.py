"""Atomic, no-clobber output files.

Outputs are written to a temporary file in the destination directory and renamed over the target
only when complete, so an interrupted run never leaves a half-written file. A target that already
exists is replaced only when it is the same kind of file (``is_same_kind``) or ``force`` is given:
we never silently overwrite, say, the user's ONNX model with a calibration cache.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ConfigError


def check_output_path(path: Path, *, flag: str, is_same_kind: Callable[[Path], bool] | None = None,
                      force: bool = False) -> Path:
    """Validate an output path before any work starts (fail fast, not after an hour of calibration)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError("output directory does not exist", subject=f"{flag} {path}",
                          got=f"missing directory {str(parent)!r}", hint=f"create it first: mkdir -p {parent}")
    if path.is_dir():
        raise ConfigError("output path is a directory", subject=f"{flag} {path}", expected="a file path")
    if path.exists() and not force and is_same_kind is not None and not is_same_kind(path):
        raise ConfigError("refusing to overwrite a file of another kind", subject=f"{flag} {path}",
                          hint="choose another path, or pass --force to overwrite it")
    if not os.access(parent, os.W_OK):
        raise ConfigError("output directory is not writable", subject=f"{flag} {path}")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(path: Path, *, flag: str = "--out") -> Path:
    """An output directory we may create: not an existing file, parent present."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError("output is not a directory", subject=f"{flag} {path}")
    if not path.parent.is_dir():
        raise ConfigError("output directory's parent does not exist", subject=f"{flag} {path}",
                          hint=f"mkdir -p {path.parent}")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_document(path: Path, *, fmt: str, what: str, error: type, hint: str | None = None) -> dict:
    """Read a versioned JSON document whose ``format`` key must equal ``fmt``; errors are ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found", subject=str(path), hint=hint)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{what} is not valid JSON", subject=str(path), got=str(err)[:200]) from err
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"not a {what}", subject=str(path),
                    got=repr(doc.get("format") if isinstance(doc, dict) else type(doc).__name__), expected=repr(fmt))
    return doc
