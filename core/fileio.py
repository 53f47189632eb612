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
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError("output directory is not writable", subject=f"{flag} {path}",
                          hint="choose a writable location")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(path: Path, *, flag: str = "--out", outputs: dict[str, Callable[[Path], bool]] | None = None,
                     force: bool = False) -> Path:
    """An output directory we may create: not an existing file, parent present, writable.

    ``outputs`` maps the file names the command writes into the directory to their ``is_same_kind``
    test: an existing file of another kind under one of those names is refused unless ``force``.
    """
    path = Path(path)
    if str(path) == "":
        raise ConfigError("empty output directory", subject=flag, expected="a directory path")
    if path.exists() and not path.is_dir():
        raise ConfigError("output is not a directory", subject=f"{flag} {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError("output directory's parent does not exist", subject=f"{flag} {path}",
                          hint=f"mkdir -p {parent}")
    where = path if path.is_dir() else parent
    if not os.access(where, os.W_OK):
        raise ConfigError("output directory is not writable", subject=f"{flag} {path}",
                          got=f"{where} is read-only", hint="choose a writable location")
    if path.is_dir() and outputs and not force:
        clash = [name for name, same in outputs.items()
                 if (path / name).exists() and ((path / name).is_dir() or not same(path / name))]
        if clash:
            raise ConfigError("refusing to overwrite files of another kind", subject=f"{flag} {path}",
                              got=", ".join(clash), expected="files this command wrote earlier (or none)",
                              hint="choose another --out, or pass --force to overwrite them")
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


def json_text(doc) -> str:
    """How every JSON document we write is laid out (one space indent, trailing newline)."""
    return json.dumps(doc, indent=1) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_document(path: Path, *, fmt: str, what: str, error: type, hint: str | None = None) -> dict:
    """Read a versioned JSON document whose ``format`` key must equal ``fmt``; errors are ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found", subject=str(path), hint=hint)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{what} is not valid JSON", subject=str(path), got=f"{type(err).__name__}: {err}"[:200]) from err
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"not a {what}", subject=str(path),
                    got=repr(doc.get("format") if isinstance(doc, dict) else type(doc).__name__), expected=repr(fmt))
    return doc


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class OutputSet:
    """Every output of one command, planned up front and moved into place together at the end.

    ``add()`` validates a path before any work starts (directory present and writable, no other
    output on the same path, a file of another kind refused without ``force``). ``stage()`` writes
    the content to a temporary file next to the target. ``commit()`` moves every staged file into
    place; if one move fails, the targets already replaced are restored from their backups, so the
    earlier set stays consistent. Leaving the ``with`` block with an exception removes the
    temporary files and touches nothing else: an error or Ctrl-C leaves the earlier outputs as they were.
    """

    def __init__(self, *, force: bool = False):
        self.force = force
        self._planned: list[tuple[str, Path]] = []
        self._staged: list[tuple[Path, str]] = []

    def add(self, path: str | Path, *, flag: str, is_same_kind: Callable[[Path], bool] | None = None) -> Path:
        path = Path(path)
        if str(path) in ("", "."):
            raise ConfigError("empty output path", subject=flag, expected="a file path")
        check_output_path(path, flag=flag, is_same_kind=is_same_kind, force=self.force)
        for other_flag, other in self._planned:
            if _same_path(path, other):
                raise ConfigError("two outputs on one path", subject=f"{flag} {path}",
                                  got=f"the same file as {other_flag} {other}",
                                  hint="give each output its own path (one would silently replace the other)")
        self._planned.append((flag, path))
        return path

    def stage(self, path: str | Path, data: bytes | str) -> None:
        path = Path(path)
        if not any(_same_path(path, p) for _, p in self._planned):
            raise AssertionError(f"output {path} was not planned")      # a bug in the caller, not bad input
        if isinstance(data, str):
            data = data.encode("utf-8")
        parent = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        self._staged.append((path, tmp))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())

    def stage_copy(self, path: str | Path, source: str | Path) -> None:
        self.stage(path, Path(source).read_bytes())

    def discard(self) -> None:
        for _, tmp in self._staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._staged.clear()

    def commit(self) -> list[Path]:
        backups: list[tuple[Path, str]] = []
        done: list[Path] = []
        try:
            for path, _ in self._staged:
                if path.exists():
                    parent = path.parent if str(path.parent) else Path(".")
                    fd, bak = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak", dir=parent)
                    os.close(fd)
                    os.replace(path, bak)
                    backups.append((path, bak))
            for path, tmp in self._staged:
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in done:
                if not any(p == path for p, _ in backups):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            for path, bak in backups:
                os.replace(bak, path)
            self.discard()
            raise
        for _, bak in backups:
            try:
                os.unlink(bak)
            except OSError:
                pass
        self._staged.clear()
        return done

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


# ---------------------------------------------------------------------------------------------
# "same kind" tests for the files a command writes (anything else in the way needs --force)
# ---------------------------------------------------------------------------------------------

def _head(path: Path, size: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def contains_marker(*markers: str, start: bool = False) -> Callable[[Path], bool]:
    """A same-kind test: the file's first MiB starts with (``start``) or contains one of ``markers``."""
    def test(path: Path) -> bool:
        head = _head(path)
        return any(head.startswith(m) if start else m in head for m in markers)
    return test


def json_format(fmt: str) -> Callable[[Path], bool]:
    """A same-kind test for a versioned JSON document (``"format": fmt``)."""
    return contains_marker(f'"format": "{fmt}"', f'"format":"{fmt}"')


def looks_like_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
        return len(model.graph.node) > 0 or bool(model.ir_version)
    except Exception:  # noqa: BLE001  (anything that does not parse is "another kind")
        return False


def looks_like_npz_stats(path: Path) -> bool:
    """A statistics file written by ``calibrate --stats`` (not any .npz: data and weights are .npz too)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            if "header.npy" not in z.namelist():
                return False
            return b"trtquant-stats/" in z.read("header.npy")[:1 << 20]
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError):
        return False
