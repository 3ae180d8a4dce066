"""Changing a gallery: add, delete, display names, compaction, recovery.

Every change takes the writers' lock, writes only what changed, and commits a new
``gallery.json`` (the single atomic step: a reader sees the old version or the new one).

* **Add** writes one small *delta* segment (the new rows' records and embeddings) and the crops:
  bytes proportional to the photos added, not to the gallery.
* **Delete** is a privacy operation. It commits a new version whose tombstones list the deleted
  rows and whose segments no longer name a saved index holding them; then, before it returns,
  it unlinks the crops and overwrites the deleted rows' records and embedding rows *in place*
  with zeros (fixed-width files: a few hundred bytes per row), and removes the saved index
  folders of the touched segments (they hold copies of the vectors; readers rebuild those
  indexes from the redacted embeddings). No file of the gallery, of this version or an older one,
  still holds the deleted crops or embeddings. The trade-off: a delete also costs every
  replica's restart an index build of the touched base segment until the next compaction saves
  one again, and the segment files are not strictly immutable (only deleted rows change, and
  only to zeros, which every reader treats as deleted). Only the row ids stay, as tombstones,
  until a compaction rewrites the segment.
* **Merge and move** (:func:`merge_identities`, :func:`move_image`) change rows' identities without
  touching a segment: each commits a version whose *relabel table* (``relabels/r<version>.npy``,
  [row id, identity] pairs, like the tombstones a file the manifest names) overrides the identity
  recorded in the rows file; every reader applies it (:func:`facerec.gallery.format.relabelled`),
  and compaction writes the new identities into the rows and drops the table. Bytes written are
  proportional to the rows relabelled so far, not to the gallery, and no index changes (an index
  holds row ids and vectors, never identities).
* **Compaction** folds the deltas and tombstones into one new base segment with saved indexes
  (a full rewrite, run when :class:`CompactionPolicy` says so, or on demand) and removes what
  it replaced.
* **Recovery**: a writer killed between a delete's commit and the end of its scrub leaves
  committed tombstones whose bytes are still on disk; every writer (and every Retriever at
  start) first finishes that scrub, so a delete is applied fully once committed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, ConfigError, ConflictError, NotFoundError
from facerec.gallery.format import (
    CROPS,
    IDENTITY_MAX,
    RELABELS,
    ROWS_FILE,
    SEGMENTS,
    TOMBSTONES,
    commit_manifest,
    crop_rel,
    emb_file,
    index_rel,
    new_image_id,
    read_embeddings,
    read_manifest,
    read_relabels,
    read_rows,
    read_tombstones,
    relabelled,
    row_dtype,
    segment_dir,
    write_lock,
)
from facerec.io import atomic_path, atomic_write_bytes, fsync_dir, publish_folder

MAX_DISPLAY_NAME = 100


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------


def write_segment(gallery_dir: Path, sid: str, kind: str, rows: np.ndarray, embeddings: dict[str, np.ndarray],
                  indexes: dict[str, dict[str, Any]] | None = None,
                  index_meta: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Publish ``segments/<sid>/`` (records, embeddings, saved indexes) in one folder rename and
    return its manifest entry."""
    paths: dict[str, dict[str, str]] = {}
    with publish_folder(gallery_dir / segment_dir(sid)) as tmp:
        with open(tmp / ROWS_FILE, "wb") as f:
            np.save(f, rows, allow_pickle=False)
        for name, emb in embeddings.items():
            with open(tmp / emb_file(name), "wb") as f:
                np.save(f, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
        for name, kinds in (indexes or {}).items():
            for k, index in kinds.items():
                rel = index_rel(sid, name, k)
                index.save(tmp / Path(rel).name, {**(index_meta or {}).get(name, {}), "index_kind": k, "segment": sid})
                paths.setdefault(name, {})[k] = rel
    ids = rows["row_id"]
    return {"id": sid, "kind": kind, "rows": int(len(rows)), "first_row": int(ids[0]) if len(ids) else None,
            "last_row": int(ids[-1]) if len(ids) else None, "indexes": paths}


def make_rows(row_ids: np.ndarray, identities, image_ids: list[str], crop_exts: list[str], origin: int,
              boxes=None, attrs: np.ndarray | None = None, source_ids: list[str] | None = None) -> np.ndarray:
    n = len(row_ids)
    sources = [s.encode("utf-8") for s in (source_ids or [""] * n)]
    rows = np.zeros(n, dtype=row_dtype(max([len(s) for s in sources] + [1])))
    rows["row_id"] = row_ids
    rows["identity"] = np.asarray(identities, dtype=np.int64)
    rows["image_id"] = [i.encode() for i in image_ids]
    rows["crop_ext"] = [e.encode() for e in crop_exts]
    rows["origin"] = origin
    if boxes is not None:
        rows["box"] = np.asarray(boxes, dtype=np.int32).reshape(n, 4)
    if attrs is not None:
        rows["attrs"] = np.asarray(attrs, dtype=np.int8).reshape(n, len(ATTRIBUTE_NAMES))
    rows["source_id"] = sources
    return rows


def _widen(rows: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(len(rows), dtype=row_dtype(width))
    for f in out.dtype.names:
        out[f] = rows[f]
    return out


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    width = max([p.dtype["source_id"].itemsize for p in parts] + [1])
    return np.concatenate([_widen(p, width) for p in parts]) if parts else np.zeros(0, dtype=row_dtype(width))


# --------------------------------------------------------------------------------------------
# In-place redaction (the bytes of deleted rows)
# --------------------------------------------------------------------------------------------


def _npy_layout(f) -> tuple[int, int]:
    """(offset of the data, bytes per row) of an .npy file opened in binary mode."""
    major, minor = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if fortran:
        raise ArtifactMismatchError(f"{f.name}: Fortran-ordered array; cannot redact rows in place")
    per_row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return f.tell(), per_row


def _overwrite_rows(path: Path, positions: np.ndarray, records: list[bytes] | None = None) -> int:
    """Overwrite rows ``positions`` of an .npy file in place (zeros, or ``records``); fsync.
    Returns the bytes written."""
    written = 0
    with open(path, "r+b") as f:
        offset, per_row = _npy_layout(f)
        zero = bytes(per_row)
        for j, p in enumerate(positions):
            data = zero if records is None else records[j]
            written += os.pwrite(f.fileno(), data, offset + int(p) * per_row)
        f.flush()
        os.fsync(f.fileno())
    return written


def _redact_segment(gallery_dir: Path, sid: str, positions: np.ndarray, models: list[str]) -> int:
    """Unlink the crops of rows ``positions`` of segment ``sid`` and zero their records (the row
    id is kept: it orders the segment) and embedding rows. Idempotent."""
    seg = gallery_dir / segment_dir(sid)
    rows = read_rows(gallery_dir, sid)
    written = 0
    for p in positions:
        image_id = rows["image_id"][p].decode()
        if image_id:
            try:
                os.unlink(gallery_dir / crop_rel(image_id, rows["crop_ext"][p].decode()))
            except FileNotFoundError:
                pass
    fsync_dir(gallery_dir / CROPS)
    blank = np.zeros(len(positions), dtype=rows.dtype)
    blank["row_id"] = rows["row_id"][positions]
    written += _overwrite_rows(seg / ROWS_FILE, positions, [b.tobytes() for b in blank])
    for name in models:
        path = seg / emb_file(name)
        if path.is_file():
            written += _overwrite_rows(path, positions)
    return written


def recover(gallery_dir: str | os.PathLike, manifest: dict[str, Any] | None = None) -> int:
    """Finish what a writer killed mid-change left (call under the write lock): redact tombstoned
    rows still holding bytes, remove saved indexes the manifest no longer names, segment folders
    it does not name, and older tombstone files. Returns the rows redacted now."""
    gallery_dir = Path(gallery_dir)
    manifest = manifest or read_manifest(gallery_dir)
    tomb = read_tombstones(gallery_dir, manifest)
    fixed = 0
    listed = {e["id"]: e for e in manifest["segments"]}
    for entry in manifest["segments"]:
        if not len(tomb):
            break
        rows = read_rows(gallery_dir, entry["id"], mmap=True)
        pos = np.flatnonzero(np.isin(rows["row_id"], tomb) & (rows["image_id"] != b""))
        if len(pos):
            _redact_segment(gallery_dir, entry["id"], pos, list(manifest["models"]))
            fixed += len(pos)
    seg_root = gallery_dir / SEGMENTS
    if seg_root.is_dir():
        for folder in seg_root.iterdir():
            if folder.name.startswith("."):
                if time.time() - folder.stat().st_mtime > 3600:  # a publish that died; none is running under the lock
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            entry = listed.get(folder.name)
            if entry is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            keep = {Path(p).name for kinds in (entry.get("indexes") or {}).values() for p in kinds.values()}
            for sub in folder.iterdir():
                if sub.is_dir() and sub.name.startswith("index-") and sub.name not in keep:
                    shutil.rmtree(sub, ignore_errors=True)
    for folder, key in ((TOMBSTONES, "tombstones"), (RELABELS, "relabels")):
        current = (manifest.get(key) or {}).get("path")
        tdir = gallery_dir / folder
        if tdir.is_dir():
            for f in tdir.iterdir():
                if f"{folder}/{f.name}" != current and not f.name.startswith("."):
                    f.unlink(missing_ok=True)
    return fixed


# --------------------------------------------------------------------------------------------
# Add
# --------------------------------------------------------------------------------------------


def check_display_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_DISPLAY_NAME \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError("display_name", name, f"1-{MAX_DISPLAY_NAME} printable characters")
    return name.strip()


def check_add_embeddings(manifest: dict[str, Any], embeddings: dict[str, np.ndarray], n: int,
                         expected_model_ids: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The embeddings of ``n`` new images as float32 arrays, checked against the gallery: one
    (n, d) array per model of the gallery, finite, from the model that built its index."""
    missing = sorted(set(manifest["models"]) - set(embeddings))
    if missing:
        raise ConfigError(
            "embeddings", sorted(embeddings),
            f"embeddings for every gallery model, also {missing}: new images must enter every index, so serve "
            f"all of the gallery's models {sorted(manifest['models'])} (or rebuild the gallery for the served ones)",
        )
    arrays = {}
    for name, entry in manifest["models"].items():
        emb = np.asarray(embeddings[name], dtype=np.float32)
        if emb.shape != (n, int(entry["embedding_dim"])):
            raise ArtifactMismatchError(
                f"embeddings for {name!r} have shape {emb.shape}, expected ({n}, {entry['embedding_dim']})"
            )
        if not np.isfinite(emb).all():
            raise ArtifactMismatchError(f"embeddings for {name!r} hold NaN/inf; nothing was added")
        want = (expected_model_ids or {}).get(name)
        if want is not None and want != entry["model_id"]:
            raise ArtifactMismatchError(f"embeddings of model_id {want} cannot go into the {name!r} index of {entry['model_id']}")
        arrays[name] = emb
    return arrays


def add_to_gallery(
    gallery_dir: str | os.PathLike,
    embeddings: dict[str, np.ndarray],
    identities: list[int],
    crops_png: list[bytes],
    boxes: list[list[int]] | None = None,
    expected_model_ids: dict[str, str] | None = None,
    display_name: str | None = None,
) -> dict[str, Any]:
    """Append images: their crops and one delta segment (records + every model's embeddings),
    then commit. On any error nothing is committed.

    ``embeddings``: model name -> (n, d), one row per image, for *every* model of the gallery.
    ``display_name``: stored for the identities added (shown in search hits and listings).
    Returns {"version", "row_ids", "image_ids"}.
    """
    gallery_dir = Path(gallery_dir)
    n = len(crops_png)
    if n == 0:
        raise ConfigError("images", 0, "at least one image")
    if len(identities) != n:
        raise ConfigError("identities", len(identities), f"one identity per image ({n})")
    for i in identities:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) <= IDENTITY_MAX:
            raise ConfigError("identity", i, f"an integer in [0, {IDENTITY_MAX}]")
    display_name = check_display_name(display_name)
    boxes = boxes or [[0, 0, 0, 0]] * n
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        recover(gallery_dir, manifest)
        arrays = check_add_embeddings(manifest, embeddings, n, expected_model_ids)
        version = int(manifest["version"]) + 1
        start = int(manifest["next_row_id"])
        row_ids = np.arange(start, start + n, dtype=np.int64)
        image_ids = [new_image_id() for _ in range(n)]
        for img, data in zip(image_ids, crops_png):
            atomic_write_bytes(gallery_dir / crop_rel(img, ".png"), data)
        rows = make_rows(row_ids, identities, image_ids, [".png"] * n, origin=1, boxes=boxes)
        entry = write_segment(gallery_dir, f"s{version:06d}", "delta", rows, arrays)
        names = dict(manifest.get("names") or {})
        if display_name is not None:
            for identity in set(int(i) for i in identities):
                names[str(identity)] = display_name
        commit_manifest(gallery_dir, {**manifest, "version": version, "rows": int(manifest["rows"]) + n,
                                      "next_row_id": start + n, "segments": [*manifest["segments"], entry],
                                      "names": names, "updated_at": time.time()})
    return {"version": version, "row_ids": [int(r) for r in row_ids], "image_ids": image_ids}


# --------------------------------------------------------------------------------------------
# Delete
# --------------------------------------------------------------------------------------------


def delete_from_gallery(gallery_dir: str | os.PathLike, image_ids: list[str] | None = None,
                        identity: int | None = None,
                        before_commit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Delete images (by id) or every image of an identity: one new version in which they are
    tombstoned and no saved index names them; before returning, their crops are unlinked and
    their records and embeddings overwritten with zeros (module docstring). ``NotFoundError``
    when nothing live matches.

    ``before_commit``: called under the write lock with {"row_ids", "image_ids", "identities",
    "source_ids"} of the rows found, before anything is written (the server records the erasure
    there: if it raises, nothing is deleted).

    Returns {"version", "deleted", "row_ids", "image_ids", "identities", "source_ids",
    "bytes_written"}; ``source_ids``: the photo file names of rows built from a photo folder
    ("" for uploaded ones)."""
    gallery_dir = Path(gallery_dir)
    if (image_ids is None) == (identity is None):
        raise ConfigError("delete", {"image_ids": image_ids, "identity": identity}, "image_ids or identity, not both")
    wanted = [i.encode() for i in image_ids] if image_ids is not None else None
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        recover(gallery_dir, manifest)
        tomb = read_tombstones(gallery_dir, manifest)
        relabels = read_relabels(gallery_dir, manifest)
        hits: list[tuple[dict[str, Any], np.ndarray]] = []
        live_identities: list[np.ndarray] = []
        del_rows, del_images, del_identities, del_sources = [], [], [], []
        for entry in manifest["segments"]:
            rows = read_rows(gallery_dir, entry["id"], mmap=True)
            live = rows["image_id"] != b""
            if len(tomb):
                live &= ~np.isin(rows["row_id"], tomb)
            idents = relabelled(rows["row_id"], np.asarray(rows["identity"]), relabels)
            match = (idents == int(identity)) if identity is not None else np.isin(rows["image_id"], wanted)
            match &= live
            pos = np.flatnonzero(match)
            live_identities.append(np.asarray(idents[live & ~match]))
            if len(pos):
                hits.append((entry, pos))
                del_rows.extend(int(r) for r in rows["row_id"][pos])
                del_images.extend(b.decode() for b in rows["image_id"][pos])
                del_identities.extend(int(i) for i in idents[pos])
                del_sources.extend(b.decode() if o == 0 else "" for b, o in zip(rows["source_id"][pos], rows["origin"][pos]))
        if not hits:
            what = f"identity {identity}" if identity is not None else f"image(s) {image_ids}"
            raise NotFoundError(f"no live gallery row for {what} (never added, or already deleted)")
        if before_commit is not None:
            before_commit({"row_ids": del_rows, "image_ids": del_images, "identities": del_identities,
                           "source_ids": del_sources})
        version = int(manifest["version"]) + 1
        new_tomb = np.union1d(tomb, np.asarray(del_rows, dtype=np.int64)).astype(np.int64)
        tomb_rel = f"{TOMBSTONES}/t{version:06d}.npy"
        with atomic_path(gallery_dir / tomb_rel) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, new_tomb, allow_pickle=False)
        touched = {e["id"] for e, _ in hits}
        segments = [{**e, "indexes": {}} if e["id"] in touched else e for e in manifest["segments"]]
        still = set(np.unique(np.concatenate(live_identities)).tolist()) if live_identities else set()
        names = {k: v for k, v in (manifest.get("names") or {}).items() if int(k) in still or int(k) not in del_identities}
        commit_manifest(gallery_dir, {**manifest, "version": version, "rows": int(manifest["rows"]) - len(del_rows),
                                      "segments": segments, "tombstones": {"path": tomb_rel, "count": int(len(new_tomb))},
                                      "names": names, "updated_at": time.time()})
        # Committed: from here on the delete is applied; the scrub below (redone by recover() if
        # this process dies) removes its bytes.
        written = 0
        for entry, pos in hits:
            written += _redact_segment(gallery_dir, entry["id"], pos, list(manifest["models"]))
            for kinds in (entry.get("indexes") or {}).values():
                for rel in kinds.values():
                    shutil.rmtree(gallery_dir / rel, ignore_errors=True)
        old = (manifest.get("tombstones") or {}).get("path")
        if old:
            (gallery_dir / old).unlink(missing_ok=True)
    return {"version": version, "deleted": len(del_rows), "row_ids": del_rows, "image_ids": del_images,
            "identities": sorted(set(del_identities)), "source_ids": del_sources, "bytes_written": written}


# --------------------------------------------------------------------------------------------
# Erasures (facerec.data.erasure): what a delete erased from the photo folder stays erased
# --------------------------------------------------------------------------------------------


def photo_folder(gallery_dir: str | os.PathLike, manifest: dict[str, Any] | None = None) -> str | None:
    """The photo folder the gallery's dataset rows were cropped from: recorded at build
    (``photos``), or for a gallery built before that, the source its crops folder names."""
    from facerec.io import read_parquet_metadata

    manifest = manifest or read_manifest(gallery_dir)
    if manifest.get("photos"):
        return str(manifest["photos"])
    table = Path(manifest.get("source") or "") / "crops.parquet"
    if manifest.get("source") and table.is_file():
        try:
            return read_parquet_metadata(table).get("source")
        except (OSError, ValueError):
            return None
    return None


def apply_erasures(gallery_dir: str | os.PathLike, erased) -> dict[str, Any] | None:
    """Delete the live rows the erasure ``erased`` (:class:`facerec.data.erasure.Erased` of the
    gallery's photo folder) covers: rows cropped from an erased photo or of an erased identity.
    Uploaded rows (``POST /v1/gallery``) did not come from the folder and stay. Returns what
    :func:`delete_from_gallery` returns, or None when no live row is covered."""
    gallery_dir = Path(gallery_dir)
    if not erased:
        return None
    manifest = read_manifest(gallery_dir)
    tomb = read_tombstones(gallery_dir, manifest)
    found: list[str] = []
    for entry in manifest["segments"]:
        rows = read_rows(gallery_dir, entry["id"], mmap=True)
        live = (rows["image_id"] != b"") & (rows["origin"] == 0)
        if len(tomb):
            live &= ~np.isin(rows["row_id"], tomb)
        sources = np.char.decode(np.asarray(rows["source_id"]), "utf-8")
        covered = live & erased.mask(sources, rows["identity"])
        found.extend(b.decode() for b in rows["image_id"][covered])
    if not found:
        return None
    try:
        return delete_from_gallery(gallery_dir, image_ids=found)
    except NotFoundError:  # another writer deleted them meanwhile
        return None


# --------------------------------------------------------------------------------------------
# Display names
# --------------------------------------------------------------------------------------------


def set_display_name(gallery_dir: str | os.PathLike, identity: int, name: str | None) -> dict[str, Any]:
    """Set (or with ``None`` clear) the display name of a live identity; ``NotFoundError`` if it
    has no image in the gallery."""
    gallery_dir = Path(gallery_dir)
    name = check_display_name(name)
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        count = int(len(_live_rows_of(gallery_dir, manifest, int(identity))[0]))
        if count == 0:
            raise NotFoundError(f"identity {identity} has no image in the gallery")
        names = dict(manifest.get("names") or {})
        if name is None:
            names.pop(str(int(identity)), None)
        else:
            names[str(int(identity))] = name
        version = int(manifest["version"]) + 1
        commit_manifest(gallery_dir, {**manifest, "version": version, "names": names, "updated_at": time.time()})
    return {"version": version, "identity": int(identity), "display_name": name, "images": count}


# --------------------------------------------------------------------------------------------
# Merge and move (the relabel table)
# --------------------------------------------------------------------------------------------


def _live_rows_of(gallery_dir: Path, manifest: dict[str, Any], identity: int | None = None,
                  image_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, current identities) of the live rows of ``identity`` (or the one row of ``image_id``)."""
    tomb = read_tombstones(gallery_dir, manifest)
    relabels = read_relabels(gallery_dir, manifest)
    rids, idents = [], []
    for entry in manifest["segments"]:
        rows = read_rows(gallery_dir, entry["id"], mmap=True)
        current = relabelled(rows["row_id"], np.asarray(rows["identity"]), relabels)
        m = rows["image_id"] != b""
        if len(tomb):
            m &= ~np.isin(rows["row_id"], tomb)
        m &= (current == int(identity)) if image_id is None else (rows["image_id"] == image_id.encode())
        rids.append(np.asarray(rows["row_id"][m], dtype=np.int64)), idents.append(np.asarray(current[m], dtype=np.int64))
    if not rids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rids), np.concatenate(idents)


def _check_identity(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= IDENTITY_MAX:
        raise ConfigError(name, value, f"an integer in [0, {IDENTITY_MAX}]")
    return int(value)


def _commit_relabels(gallery_dir: Path, manifest: dict[str, Any], row_ids: np.ndarray, identity: int,
                     names: dict[str, str]) -> int:
    """Commit a version whose relabel table gives ``row_ids`` the identity ``identity`` (the
    table of the previous version plus these; its file is written first, the manifest last, so a
    writer killed in between leaves the old version and an orphan file recover() removes)."""
    version = int(manifest["version"]) + 1
    old = read_relabels(gallery_dir, manifest)
    keep = old[~np.isin(old[:, 0], row_ids)]
    table = np.concatenate([keep, np.stack([row_ids, np.full(len(row_ids), identity, np.int64)], axis=1)])
    table = np.ascontiguousarray(table[np.argsort(table[:, 0], kind="stable")], dtype=np.int64)
    rel = f"{RELABELS}/r{version:06d}.npy"
    with atomic_path(gallery_dir / rel) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, table, allow_pickle=False)
    commit_manifest(gallery_dir, {**manifest, "version": version, "relabels": {"path": rel, "count": int(len(table))},
                                  "names": names, "updated_at": time.time()})
    previous = (manifest.get("relabels") or {}).get("path")
    if previous:
        (gallery_dir / previous).unlink(missing_ok=True)
    return version


def merge_identities(gallery_dir: str | os.PathLike, into: int, other: int) -> dict[str, Any]:
    """Make every live row of identity ``other`` a row of ``into`` (two clusters found to be one
    person): one committed version. ``into`` keeps its display name; without one it takes
    ``other``'s. ``NotFoundError`` when either has no live row; ``ConfigError`` when they are equal.

    Returns {"version", "identity" (into), "merged" (other), "moved" (rows relabelled), "images"
    (rows of ``into`` now), "display_name"}."""
    gallery_dir = Path(gallery_dir)
    into, other = _check_identity("identity", into), _check_identity("from", other)
    if into == other:
        raise ConfigError("from", other, f"another identity than {into} (an identity cannot be merged into itself)")
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        recover(gallery_dir, manifest)
        kept = _live_rows_of(gallery_dir, manifest, into)[0]
        moved = _live_rows_of(gallery_dir, manifest, other)[0]
        for ident, rows in ((into, kept), (other, moved)):
            if not len(rows):
                raise NotFoundError(f"identity {ident} has no image in the gallery")
        names = dict(manifest.get("names") or {})
        taken = names.pop(str(other), None)
        if str(into) not in names and taken is not None:
            names[str(into)] = taken
        version = _commit_relabels(gallery_dir, manifest, moved, into, names)
    return {"version": version, "identity": into, "merged": other, "moved": int(len(moved)),
            "images": int(len(kept) + len(moved)), "display_name": names.get(str(into))}


def move_image(gallery_dir: str | os.PathLike, image_id: str, identity: int) -> dict[str, Any]:
    """Make the live image ``image_id`` a row of ``identity`` (a face put in the wrong person; an
    identity with no image yet splits it off into a new person): one committed version.
    ``NotFoundError`` for an unknown image; ``ConflictError`` when it already is of ``identity``.
    The identity it leaves loses its display name once it has no image left.

    Returns {"version", "image_id", "identity", "previous_identity", "images" (rows of ``identity``
    now), "display_name"}."""
    gallery_dir = Path(gallery_dir)
    identity = _check_identity("identity", identity)
    if not isinstance(image_id, str) or not image_id:
        raise ConfigError("image_id", image_id, "a gallery image id")
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        recover(gallery_dir, manifest)
        rows, current = _live_rows_of(gallery_dir, manifest, image_id=image_id)
        if not len(rows):
            raise NotFoundError(f"no live gallery image {image_id!r} (never added, or deleted)")
        previous = int(current[0])
        if previous == identity:
            raise ConflictError(f"image {image_id!r} already is of identity {identity}: nothing to move")
        names = dict(manifest.get("names") or {})
        if len(_live_rows_of(gallery_dir, manifest, previous)[0]) == 1:
            names.pop(str(previous), None)  # its last image left: like a delete, the name goes with it
        images = int(len(_live_rows_of(gallery_dir, manifest, identity)[0])) + 1
        version = _commit_relabels(gallery_dir, manifest, rows[:1], identity, names)
    return {"version": version, "image_id": image_id, "identity": identity, "previous_identity": previous,
            "images": images, "display_name": names.get(str(identity))}


# --------------------------------------------------------------------------------------------
# Compaction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionPolicy:
    """When adds and deletes have left enough behind to fold them into a new base segment:
    more than ``max_delta_segments`` deltas, more delta rows than ``max_delta_fraction`` of the
    base (and ``min_rows``), or more tombstones than ``max_tombstone_fraction`` of it (and
    ``min_rows``). Deltas are searched exactly and tombstones over-fetched, so both cost search
    time as they grow; a compaction is a full rewrite, so it should stay rare."""

    max_delta_segments: int = 32
    max_delta_fraction: float = 0.05
    max_tombstone_fraction: float = 0.01
    min_rows: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.max_delta_segments, int) or self.max_delta_segments < 1:
            raise ConfigError("max_delta_segments", self.max_delta_segments, "an integer >= 1")
        for f in ("max_delta_fraction", "max_tombstone_fraction"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f, v, "a number in (0, 1]")
        if not isinstance(self.min_rows, int) or self.min_rows < 0:
            raise ConfigError("min_rows", self.min_rows, "an integer >= 0")

    def due(self, manifest: dict[str, Any]) -> bool:
        deltas = [s for s in manifest["segments"] if s["kind"] == "delta"]
        base_rows = sum(int(s["rows"]) for s in manifest["segments"] if s["kind"] == "base")
        delta_rows = sum(int(s["rows"]) for s in deltas)
        tombs = int((manifest.get("tombstones") or {}).get("count", 0))
        return (len(deltas) > self.max_delta_segments
                or delta_rows > max(self.min_rows, self.max_delta_fraction * base_rows)
                or tombs > max(self.min_rows, self.max_tombstone_fraction * base_rows))


def compact(gallery_dir: str | os.PathLike, policy: CompactionPolicy | None = None, force: bool = False) -> dict[str, Any] | None:
    """Rewrite the live rows of every segment into one new base segment with saved indexes
    (each model's served kind and its ``extra_kinds``), commit, then remove the segments,
    tombstones and crops it replaced. Holds the write lock throughout (adds and deletes wait).
    Returns the new manifest, or None when ``policy`` says it is not due."""
    from facerec.index import build_index

    gallery_dir = Path(gallery_dir)
    policy = policy or CompactionPolicy()
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        recover(gallery_dir, manifest)
        if not force and not policy.due(manifest):
            return None
        tomb = read_tombstones(gallery_dir, manifest)
        relabels = read_relabels(gallery_dir, manifest)
        version = int(manifest["version"]) + 1
        parts, embs = [], {name: [] for name in manifest["models"]}
        for entry in manifest["segments"]:
            rows = read_rows(gallery_dir, entry["id"])
            rows["identity"] = relabelled(rows["row_id"], rows["identity"], relabels)  # merges and moves folded in
            live = (rows["image_id"] != b"") & ~np.isin(rows["row_id"], tomb)
            parts.append(rows[live])
            for name, spec in manifest["models"].items():
                emb = read_embeddings(gallery_dir, entry["id"], name, int(spec["embedding_dim"]), len(rows))
                embs[name].append(emb[live])
        rows = concat_rows(parts)
        segments = []
        if len(rows):
            emb_all = {name: np.concatenate(e) for name, e in embs.items()}
            indexes, meta = {}, {}
            for name, spec in manifest["models"].items():
                kinds = [spec["index_kind"], *spec.get("extra_kinds", [])]
                params = {spec["index_kind"]: spec.get("index_params") or {}, **(spec.get("extra_index_params") or {})}
                indexes[name] = {k: build_index(k, emb_all[name], rows["row_id"], **params.get(k, {})) for k in kinds}
                meta[name] = {"model_id": spec["model_id"], "embedding_dim": int(spec["embedding_dim"]),
                              "gallery_version": version}
            segments = [write_segment(gallery_dir, f"s{version:06d}", "base", rows, emb_all, indexes, meta)]
        new = {**manifest, "version": version, "rows": int(len(rows)), "segments": segments, "tombstones": None,
               "relabels": None, "updated_at": time.time(), "compacted_at": time.time()}
        commit_manifest(gallery_dir, new)
        recover(gallery_dir, new)  # the replaced segments, tombstone and relabel files go
        live_crops = {crop_rel(i.decode(), e.decode()).split("/", 1)[1] for i, e in zip(rows["image_id"], rows["crop_ext"])}
        crops = gallery_dir / CROPS
        if crops.is_dir():
            for f in crops.iterdir():
                if f.name not in live_crops and not f.name.startswith("."):
                    f.unlink(missing_ok=True)  # crops of adds that died before their commit
    return new
