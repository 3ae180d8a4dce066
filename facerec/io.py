"""Atomic writes: every artifact is written to a temporary file beside its target, fsynced,
then renamed over it, so a reader never sees half a file and an interrupted run leaves none.

Many small files written together (a batch of crops) can skip the per-file fsync and end with
one :func:`sync_filesystem` barrier before the record that says they are done: one journal
commit per batch instead of one per file (git's ``core.fsyncMethod=batch`` does the same)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from facerec.errors import ArtifactMismatchError, DataNotFoundError


@contextmanager
def atomic_path(target: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``.

    ``fsync=False`` keeps the rename's atomicity (a reader sees the old file or the whole new one)
    but not its durability across a power cut; the caller then owes a :func:`sync_filesystem`
    before anything that relies on the file having reached the disk."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def _libc_function(name: str, argtypes: list, restype):
    """A Linux libc function by ``name``, or None (another system, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_SYNCFS = _libc_function("syncfs", [ctypes.c_int], ctypes.c_int)


def sync_filesystem(path: str | os.PathLike) -> None:
    """Flush every pending write of the filesystem that holds ``path`` (Linux ``syncfs(2)``;
    ``os.sync()`` elsewhere). The barrier between files written with ``fsync=False`` and the
    record that declares them complete."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed on {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


_RENAMEAT2 = _libc_function("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint],
                            ctypes.c_int)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unavailable."""
    if _RENAMEAT2 is None:
        return False
    return _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so the renames inside it survive a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_in_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``new`` (a complete folder) become ``target``; an old ``target`` is removed after."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # ``new`` now holds the previous version
    else:
        # No atomic exchange (non-Linux / old kernel / some filesystems): two renames; a reader
        # between them sees no folder and gets a not-found error rather than mixed files.
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


@contextmanager
def publish_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Publish a version folder: yield an empty temporary folder beside ``target``; when the
    block ends without error, fsync what it holds and swap it in as ``target`` in one rename, so
    a reader sees the previous folder or the complete new one, never a mix. On error the
    temporary folder is removed and ``target`` is untouched.

    The one "publish a version" step of the gallery segments (:mod:`facerec.gallery`) and the
    saved indexes (:meth:`facerec.index.Index.save`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        swap_in_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(target: str | os.PathLike, table, metadata: dict[str, Any] | None = None) -> None:
    """Write a ``pyarrow.Table`` or ``pandas.DataFrame``; ``metadata`` goes into the schema as JSON
    under the key ``facerec`` so readers can check model id / dimension / data version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"facerec"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``facerec`` metadata dict stored by :func:`atomic_write_parquet` ({} if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"facerec")
    return json.loads(raw) if raw else {}


def read_json_object(path: str | os.PathLike, fix: str, keys: Sequence[str] = (),
                     not_found: str | None = None) -> dict[str, Any]:
    """The JSON object of an artifact file (``model.json``, a gallery's or an index's manifest, an
    export's sidecar), or an error naming the file: DataNotFoundError when it is absent
    (``not_found``, default "PATH not found; FIX"), ArtifactMismatchError when it is not valid JSON,
    not a JSON object, or lacks one of ``keys``; each message ends with ``fix``, how to remake it."""
    return read_json_object_bytes(path, fix, keys, not_found)[0]


def read_json_object_bytes(path: str | os.PathLike, fix: str, keys: Sequence[str] = (),
                           not_found: str | None = None) -> tuple[dict[str, Any], bytes]:
    """:func:`read_json_object`, and the file's bytes as read: a reader that also passes the file
    on (a checkpoint's ``model.json`` shipped to Serve replicas) reads it once."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(not_found or f"{path} not found; {fix}")
    try:
        raw = path.read_bytes()
        # newlines translated as a text read would, so an error names the same position
        data = json.loads(raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise ArtifactMismatchError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ArtifactMismatchError(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    absent = [k for k in keys if k not in data]
    if absent:
        raise ArtifactMismatchError(f"{path} lacks the keys {absent}; {fix}")
    return data, raw


def cache_root() -> Path:
    """Where facerec keeps what it derives and reuses (synthetic data, parsed model files, exports):
    ``$FACEREC_CACHE``, default ``~/.cache/facerec``."""
    base = os.environ.get("FACEREC_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "facerec"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
