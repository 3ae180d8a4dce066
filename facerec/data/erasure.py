"""The erasure list: who and what a gallery delete erased from a photo folder, so that nothing
this installation derives from that folder again brings them back.

A ``DELETE`` on the server removes a person (or one photo) from the gallery. The photo folder is
the user's and stays as it is; what was derived from it is scrubbed (the crops cache:
:func:`scrub_crops_folder`), and the erasure is recorded here, so that every later
preprocessing of the folder (:func:`facerec.data.preprocess.preprocess`: a new cache key, an
interrupted run resumed) and every gallery build (:func:`facerec.gallery.build_gallery`, a
``--rebuild``) skips it.

``$FACEREC_CACHE/erased.json`` (:meth:`ErasureList.default`), written atomically under a file lock::

    {"format": "facerec-erased/1",
     "sources": {"/abs/photo/folder": {"identities": [7256], "images": ["000123.jpg"], "updated_at": ...}}}

A source is the photo folder's resolved path; images are its file names (a crops table's
``image_id``, a gallery row's ``source_id``). Erasing an identity erases every photo listed with
it, present or future.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from facerec.errors import ArtifactMismatchError

ERASED_FILE = "erased.json"
ERASED_FORMAT = "facerec-erased/1"
MERGED_PART = "part-merged.parquet"


@dataclass(frozen=True)
class Erased:
    """What is erased from one photo folder (``source``, resolved)."""

    source: str
    identities: frozenset[int] = frozenset()
    images: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.identities or self.images)

    def mask(self, image_ids, identities) -> np.ndarray:
        """True for each row (photo file name, identity) that is erased."""
        image_ids = pd.Series(np.asarray(image_ids, dtype=object), dtype=object)
        out = np.array(image_ids.isin(self.images).to_numpy(), dtype=bool)
        if self.identities:
            out |= np.isin(np.asarray(identities, dtype=np.int64), np.fromiter(self.identities, dtype=np.int64))
        return out


def source_key(source: str | os.PathLike) -> str:
    return str(Path(source).resolve())


class ErasureList:
    """The erasure list file (module docstring). Reading a missing file gives an empty list."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def default(cls) -> "ErasureList":
        """``$FACEREC_CACHE/erased.json``: beside the crops cache it keeps clean."""
        from facerec.io import cache_root

        return cls(cache_root() / ERASED_FILE)

    @property
    def crops_cache(self) -> Path:
        """The crops cache of the same cache folder (:mod:`facerec.data.crops_cache`)."""
        from facerec.data.crops_cache import CACHE_FOLDER

        return self.path.parent / CACHE_FOLDER

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"format": ERASED_FORMAT, "sources": {}}
        except (OSError, ValueError) as exc:
            raise ArtifactMismatchError(f"{self.path}: the erasure list cannot be read ({exc}); restore it from a "
                                        "backup: it is what keeps erased people out of rebuilds") from exc
        if not isinstance(data, dict) or data.get("format") != ERASED_FORMAT or not isinstance(data.get("sources"), dict):
            raise ArtifactMismatchError(f"{self.path}: not an erasure list of format {ERASED_FORMAT!r}")
        return data

    def of(self, source: str | os.PathLike) -> Erased:
        """What is erased from the photo folder ``source`` (empty when nothing is)."""
        key = source_key(source)
        entry = self._read()["sources"].get(key) or {}
        return Erased(key, frozenset(int(i) for i in entry.get("identities", [])),
                      frozenset(str(i) for i in entry.get("images", [])))

    def record(self, source: str | os.PathLike, identities: Iterable[int] = (), images: Iterable[str] = ()) -> Erased:
        """Add identities and photo file names to what is erased from ``source``; returns the
        updated entry. Concurrent writers (several Retriever replicas) wait for one another."""
        from filelock import FileLock

        from facerec.io import atomic_write_json

        key = source_key(source)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path.with_name(f".{self.path.name}.lock"))):
            data = self._read()
            entry = data["sources"].get(key) or {}
            ids = sorted(set(int(i) for i in entry.get("identities", [])) | set(int(i) for i in identities))
            names = sorted(set(entry.get("images", [])) | set(str(i) for i in images))
            data["sources"][key] = {"identities": ids, "images": names, "updated_at": time.time()}
            atomic_write_json(self.path, data)
        return Erased(key, frozenset(ids), frozenset(names))


def erased_names(erased: Erased, *tables: pd.DataFrame) -> set[str]:
    """The photo file names ``erased`` covers: its images, and every photo of its identities
    listed in ``tables`` (image_id, identity) or in the photo folder's own listing."""
    from facerec.data.celeba import IDENTITY_FILE, read_identities

    names = set(erased.images)
    if erased.identities:
        listing = Path(erased.source) / IDENTITY_FILE
        frames = [t for t in tables if t is not None and len(t)]
        if listing.is_file():
            frames.append(read_identities(listing))
        for t in frames:
            names |= set(t.loc[np.isin(t["identity"].to_numpy(dtype=np.int64),
                                       np.fromiter(erased.identities, dtype=np.int64)), "image_id"].astype(str))
    return names


def _unlink_faces(folder: Path, name: str, known: int) -> int:
    """Remove every face crop of photo ``name``: faces 0..known-1 (what the resume record lists),
    then any further ones in sequence (crops a batch wrote before it died unrecorded)."""
    from facerec.data.inputs import crop_relpath

    removed, face = 0, 0
    while True:
        try:
            os.unlink(folder / crop_relpath(name, face))
            removed += 1
        except FileNotFoundError:
            if face >= known:
                return removed
        face += 1


def scrub_outputs(folder: Path, names: set[str]) -> int:
    """Remove the crop files and resume-part rows of the photos ``names`` from the preprocess
    output ``folder`` (every face of a photo kept with ``several_faces="all"``); returns how many
    crop files and part rows went."""
    from facerec.data.preprocess import PARTS_DIR, combine_parts
    from facerec.io import atomic_write_parquet, fsync_dir

    parts = sorted((folder / PARTS_DIR).glob("part-*.parquet"))
    rows = combine_parts(parts)
    gone = rows["image_id"].isin(names)
    erased_rows = rows[gone]
    known = erased_rows[erased_rows["status"] == "kept"].groupby("image_id")["face"].max() + 1
    removed = sum(_unlink_faces(folder, name, int(known.get(name, 1))) for name in names)
    if removed:
        fsync_dir(folder / "crops")
    if not parts:
        return removed
    if gone.any() or len(parts) > 1:
        # One merged resume record instead of one file per batch (a real CelebA leaves ~12,700):
        # this runs at every use of a folder whose photos have erasures, so it must stay cheap.
        merged = folder / PARTS_DIR / MERGED_PART
        atomic_write_parquet(merged, rows[~gone].reset_index(drop=True))
        for p in parts:
            if p != merged:
                p.unlink(missing_ok=True)
        removed += int(gone.sum())
    return removed


def scrub_crops_folder(folder: str | os.PathLike, erased: Erased) -> int:
    """Remove every trace of ``erased`` from the preprocess output ``folder`` (crop files, rows
    of ``crops.parquet`` and ``dropped.parquet``, resume parts, the counts of ``summary.json``),
    leaving what a preprocessing that honoured the erasure from the start would have written.
    Idempotent (the caller holds the folder's lock); returns the photos whose traces went."""
    from facerec.data.preprocess import data_version_of, drop_small_identities
    from facerec.data.schema import CROPS_TABLE, DROPPED_TABLE, SUMMARY_FILE
    from facerec.io import atomic_write_json, atomic_write_parquet, read_parquet_metadata

    folder = Path(folder)
    if not erased:
        return 0
    table = folder / CROPS_TABLE
    kept = pd.read_parquet(table) if table.is_file() else None
    dropped = pd.read_parquet(folder / DROPPED_TABLE) if (folder / DROPPED_TABLE).is_file() else None
    names = erased_names(erased, kept, dropped)
    traces = scrub_outputs(folder, names)
    if kept is None:
        return traces
    gone_kept = kept["image_id"].isin(names).to_numpy()
    gone_dropped = dropped["image_id"].isin(names).to_numpy() if dropped is not None else np.zeros(0, bool)
    # listing lines: a photo kept with several faces (several_faces="all") is one line, many rows
    lines = int(kept.loc[gone_kept, "image_id"].nunique() + gone_dropped.sum())
    if not lines:
        return traces
    meta = read_parquet_metadata(table)
    kept = kept[~gone_kept].reset_index(drop=True)
    dropped = dropped[~gone_dropped] if dropped is not None else pd.DataFrame(columns=["image_id", "identity", "reason", "detail"])
    kept, small = drop_small_identities(kept, int(meta.get("min_images_per_identity", 2)))
    dropped = pd.concat([dropped, small], ignore_index=True)
    meta["data_version"] = data_version_of(kept, str(meta.get("settings_fingerprint", "")))
    atomic_write_parquet(table, kept, metadata=meta)
    atomic_write_parquet(folder / DROPPED_TABLE, dropped.reset_index(drop=True), metadata={"data_version": meta["data_version"]})
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        reasons = dropped["reason"].value_counts()
        summary.update({
            "kept": int(kept["image_id"].nunique()), "faces": int(len(kept)),
            "dropped": {r: int(n) for r, n in sorted(reasons.items())},
            "identities": int(kept["identity"].nunique()), "erased": int(summary.get("erased", 0)) + lines,
            "kept_fraction": round(kept["image_id"].nunique() / max(1, int(summary.get("listed", 1))), 4),
            "data_version": meta["data_version"],
            "haar_pass2": int(((kept["haar_pass"] == 2) & (kept["face"] == 0 if "face" in kept else True)).sum()),
        })
        atomic_write_json(summary_path, summary)
    return traces + lines


def cached_folders_of(cache: str | os.PathLike, source: str | os.PathLike) -> list[Path]:
    """The crops-cache folders under ``cache`` made from the photo folder ``source``: finished
    ones whose table names it, and unfinished ones (no table yet) named after it."""
    from facerec.data.schema import CROPS_TABLE
    from facerec.io import read_parquet_metadata

    key = source_key(source)
    prefix = f"{Path(key).name}-"
    out = []
    cache = Path(cache)
    if not cache.is_dir():
        return out
    for folder in sorted(cache.iterdir()):
        if not folder.is_dir() or not folder.name.startswith(prefix):
            continue
        table = folder / CROPS_TABLE
        if not table.is_file() or read_parquet_metadata(table).get("source") == key:
            out.append(folder)
    return out


def scrub_crops_cache(erasures: ErasureList, source: str | os.PathLike, lock_timeout_s: float = 10.0) -> dict[str, list[str]]:
    """Apply the erasures of ``source`` to every folder of the crops cache made from it, each
    under the lock that preprocessing takes. A folder whose lock stays held (a preprocessing of
    it is running) is left to that run, which honours the list when it writes its tables, and to
    the next use of the cache, which applies it again. Returns {"scrubbed": [...], "busy": [...]}."""
    from filelock import FileLock, Timeout

    erased = erasures.of(source)
    out: dict[str, list[str]] = {"scrubbed": [], "busy": []}
    if not erased:
        return out
    for folder in cached_folders_of(erasures.crops_cache, source):
        try:
            with FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=lock_timeout_s):
                scrub_crops_folder(folder, erased)
            out["scrubbed"].append(str(folder))
        except Timeout:
            out["busy"].append(str(folder))
    return out
