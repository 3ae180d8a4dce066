"""The gallery folder: manifest, segments, tombstones, crops, and the writers' lock.

```
GALLERY/
  gallery.json               manifest, the commit point of every change (written last, atomically):
                             {"format": "facerec-gallery/2", "version", "rows" (live rows), "next_row_id",
                              "crop_size", "margin", "input_kind", "data_version", "source" (the crops folder),
                              "photos" (the photo folder those were cropped from), "updated_at",
                              "models": {name: {"model_id", "backbone", "embedding_dim", "image_size",
                                                "checkpoint", "index_kind", "index_params", ...}},
                              "segments": [{"id", "kind": "base"|"delta", "rows", "first_row", "last_row",
                                            "indexes": {name: {kind: "segments/<id>/index-<name>-<kind>"}}}],
                              "tombstones": {"path": "tombstones/t000007.npy", "count"} | null,
                              "relabels": {"path": "relabels/r000009.npy", "count"} | null,
                              "names": {identity: display name}, "labelled": false (identities are clusters)}
  segments/<id>/             one immutable folder per segment (published with facerec.io.publish_folder):
      rows.npy               structured array, one fixed-width record per row (ROW_FIELDS)
      emb-<name>.npy         (rows, d) float32, row i = record i, one file per model
      index-<name>-<kind>/   the saved facerec.index of the segment (base segments), ids = row_id
  tombstones/t<version>.npy  sorted int64 row ids deleted but still inside a segment (until compaction)
  relabels/r<version>.npy    (n, 2) int64 [row id, identity], sorted by row id: rows whose identity a merge
                             or a move changed since their segment was written (until compaction)
  crops/<image_id>.png       the stored model inputs, served as thumbnails
  .write.lock                writers' lock (filelock): one writer at a time across processes
```

Row ids are assigned once (``next_row_id``) and never reused, so a row keeps its id through
compactions. Image ids are random (``secrets.token_urlsafe``): they cannot be enumerated;
``source_id`` keeps the name the image had in the crops folder it was built from.

Records and embeddings are fixed width so a delete can overwrite exactly the deleted rows' bytes
in place (``redact``) instead of rewriting the segment: see :mod:`facerec.gallery.edit`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, DataNotFoundError
from facerec.io import read_json_object

GALLERY_FORMAT = "facerec-gallery/2"
MANIFEST = "gallery.json"
CROPS = "crops"
SEGMENTS = "segments"
TOMBSTONES = "tombstones"
RELABELS = "relabels"
LOCK = ".write.lock"
ROWS_FILE = "rows.npy"
IMAGE_ID_BYTES = 12  # secrets.token_urlsafe(12): 16 characters, 96 random bits
IMAGE_ID_WIDTH = 24
ORIGINS = ("dataset", "upload")
# Identity labels: integers a JavaScript client reads back exactly (Number.MAX_SAFE_INTEGER),
# inside the int64 record field.
IDENTITY_MAX = 2**53 - 1

_IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")


def row_dtype(source_width: int = 1) -> np.dtype:
    """The fixed-width record of one gallery row. ``source_id`` is as wide as the segment's
    longest original name (at least 1 byte)."""
    return np.dtype([
        ("row_id", "<i8"),
        ("identity", "<i8"),
        ("image_id", f"S{IMAGE_ID_WIDTH}"),
        ("crop_ext", "S8"),
        ("origin", "u1"),
        ("box", "<i4", (4,)),
        ("attrs", "i1", (len(ATTRIBUTE_NAMES),)),
        ("source_id", f"S{max(1, int(source_width))}"),
    ])


def new_image_id(taken: set[str] | None = None) -> str:
    """A random, URL-safe image id (96 bits: not guessable, not enumerable)."""
    while True:
        image_id = secrets.token_urlsafe(IMAGE_ID_BYTES)
        if taken is None or image_id not in taken:
            return image_id


def is_image_id(text: str) -> bool:
    return bool(_IMAGE_ID.match(text))


def crop_rel(image_id: str, ext: str) -> str:
    return f"{CROPS}/{image_id}{ext}"


def segment_dir(sid: str) -> str:
    return f"{SEGMENTS}/{sid}"


def emb_file(name: str) -> str:
    return f"emb-{name}.npy"


def index_rel(sid: str, name: str, kind: str) -> str:
    return f"{SEGMENTS}/{sid}/index-{name}-{kind}"


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def read_manifest(gallery_dir: str | os.PathLike) -> dict[str, Any]:
    """``gallery.json`` with a clear error if the folder is not a gallery of this format."""
    path = Path(gallery_dir) / MANIFEST
    manifest = read_json_object(
        path, fix="rebuild the gallery",
        not_found=f"{path} not found: {gallery_dir} is not a served gallery. Build one with "
                  f"`python pipelines/serve.py --crops CROPS_DIR --checkpoint NAME=CKPT ...` or "
                  f"`python pipelines/build_index.py --crops CROPS_DIR --checkpoint CKPT --out {gallery_dir}` "
                  f"(facerec.gallery.build_gallery).")
    fmt = manifest.get("format")
    if fmt == "facerec-gallery/1":
        raise ArtifactMismatchError(
            f"{path} has format 'facerec-gallery/1' (full-copy versions, enumerable image ids); this version "
            f"reads {GALLERY_FORMAT!r}: convert it in place with `python -m facerec.gallery upgrade {gallery_dir}` "
            f"or rebuild it"
        )
    if fmt != GALLERY_FORMAT:
        raise ArtifactMismatchError(
            f"{path} has format {fmt!r}, expected {GALLERY_FORMAT!r}; rebuild the gallery with this version"
        )
    return manifest


def manifest_fingerprint(gallery_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of ``gallery.json``: cheap to poll; changes on every commit
    (each commit renames a new file over it, so the inode changes even within one mtime tick)."""
    try:
        st = os.stat(Path(gallery_dir) / MANIFEST)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def commit_manifest(gallery_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``gallery.json`` atomically: the single step that makes a new version visible."""
    from facerec.io import atomic_write_json

    atomic_write_json(Path(gallery_dir) / MANIFEST, manifest)


def read_tombstones(gallery_dir: str | os.PathLike, manifest: dict[str, Any]) -> np.ndarray:
    """Sorted int64 row ids deleted but still inside a segment."""
    entry = manifest.get("tombstones")
    if not entry:
        return np.zeros(0, dtype=np.int64)
    path = Path(gallery_dir) / entry["path"]
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} not found but named by {Path(gallery_dir) / MANIFEST}: the gallery is damaged") from None
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != int(entry["count"]):
        raise ArtifactMismatchError(f"{path}: expected {entry['count']} int64 row ids, found {ids.dtype} {ids.shape}")
    return ids


def read_relabels(gallery_dir: str | os.PathLike, manifest: dict[str, Any]) -> np.ndarray:
    """(n, 2) int64 [row id, identity] sorted by row id: the identities merges and moves gave rows
    after their segment was written (segments are never rewritten for it; compaction folds them in)."""
    entry = manifest.get("relabels")
    if not entry:
        return np.zeros((0, 2), dtype=np.int64)
    path = Path(gallery_dir) / entry["path"]
    try:
        table = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} not found but named by {Path(gallery_dir) / MANIFEST}: the gallery is damaged") from None
    if table.dtype != np.int64 or table.shape != (int(entry["count"]), 2):
        raise ArtifactMismatchError(f"{path}: expected ({entry['count']}, 2) int64 [row id, identity], found "
                                    f"{table.dtype} {table.shape}")
    return table


def relabelled(row_ids: np.ndarray, identities: np.ndarray, relabels: np.ndarray) -> np.ndarray:
    """``identities`` of rows ``row_ids`` with the overrides of ``relabels`` applied (a new array
    when any applies, else ``identities`` itself)."""
    if not len(relabels) or not len(row_ids):
        return identities
    at = np.searchsorted(relabels[:, 0], row_ids)
    hit = at < len(relabels)
    hit[hit] = relabels[at[hit], 0] == np.asarray(row_ids)[hit]
    if not hit.any():
        return identities
    out = np.array(identities, dtype=np.int64, copy=True)
    out[hit] = relabels[at[hit], 1]
    return out


def read_rows(gallery_dir: str | os.PathLike, sid: str, mmap: bool = False) -> np.ndarray:
    path = Path(gallery_dir) / segment_dir(sid) / ROWS_FILE
    try:
        rows = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} not found but named by {Path(gallery_dir) / MANIFEST}: the gallery is damaged") from None
    if rows.dtype.names is None or "row_id" not in rows.dtype.names:
        raise ArtifactMismatchError(f"{path}: not a gallery rows file (dtype {rows.dtype})")
    return rows


def read_embeddings(gallery_dir: str | os.PathLike, sid: str, name: str, dim: int, n: int) -> np.ndarray:
    path = Path(gallery_dir) / segment_dir(sid) / emb_file(name)
    try:
        emb = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} not found but named by {Path(gallery_dir) / MANIFEST}: the gallery is damaged") from None
    if emb.dtype != np.float32 or emb.shape != (n, dim):
        raise ArtifactMismatchError(f"{path}: shape {emb.shape} {emb.dtype}, expected ({n}, {dim}) float32; the gallery is damaged")
    return emb


# --------------------------------------------------------------------------------------------
# Writers' lock
# --------------------------------------------------------------------------------------------

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def write_lock(gallery_dir: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on the gallery for writers: several Retriever replicas (processes, maybe
    nodes sharing a volume) and a build or compaction job may write one gallery. A thread lock
    first (the file lock is per open file, not per thread), then ``filelock.FileLock``.
    ``timeout``: seconds to wait (None: forever); ``filelock.Timeout`` after that."""
    from filelock import FileLock

    folder = Path(gallery_dir)
    key = str(folder.resolve())
    with _THREAD_LOCKS_GUARD:
        tlock = _THREAD_LOCKS.setdefault(key, threading.Lock())
    if not tlock.acquire(timeout=-1 if timeout is None else timeout):
        from filelock import Timeout

        raise Timeout(str(folder / LOCK))
    try:
        with FileLock(str(folder / LOCK), timeout=-1 if timeout is None else timeout):
            yield
    finally:
        tlock.release()
