"""A loaded, immutable version of the gallery: what a Retriever replica searches.

A snapshot is the gallery's segments in memory plus its tombstones. *Base* segments (written
by a build or a compaction) carry one index per model (the saved one, or built from the
embeddings when a delete dropped it); *delta* segments (one per add) are searched through one
small exact index over all of them, rebuilt when the deltas change. A search asks every base
index for ``k`` + (its tombstones) neighbours, drops the tombstoned ones, and merges with the
delta's answer, so deleted rows never appear and the top ``k`` stays exact for exact kinds.

:meth:`GallerySnapshot.load` with ``previous=`` reuses every segment the previous snapshot
already holds (same id): a new version that only adds a delta segment or tombstones costs the
new segment's few rows, not a reload of the gallery.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError
from facerec.gallery.format import (
    CROPS,
    MANIFEST,
    ORIGINS,
    crop_rel,
    emb_file,
    manifest_fingerprint,
    read_embeddings,
    read_manifest,
    read_relabels,
    read_rows,
    read_tombstones,
    relabelled,
    segment_dir,
)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model_id: str
    embedding_dim: int
    index_kind: str


class Segment:
    """One segment's rows in memory (never mutated): base segments hold ``indexes`` (model ->
    facerec.index), delta segments their ``embeddings`` (model -> (n, d))."""

    def __init__(self, sid: str, kind: str, rows: np.ndarray, indexes: dict[str, Any] | None = None,
                 embeddings: dict[str, np.ndarray] | None = None):
        self.sid, self.kind = sid, kind
        self.row_ids = np.asarray(rows["row_id"], dtype=np.int64).copy()
        self.identities = np.asarray(rows["identity"], dtype=np.int64).copy()
        self.image_ids = np.asarray(rows["image_id"]).astype(str).astype(object)
        self.crop_ext = np.asarray(rows["crop_ext"]).astype(str).astype(object)
        self.origin = np.asarray(rows["origin"], dtype=np.uint8).copy()
        self.boxes = np.asarray(rows["box"], dtype=np.int32).copy()
        self.attrs = np.ascontiguousarray(rows["attrs"], dtype=np.int8)
        # UTF-8 (make_rows): a person folder's photo names may be any Unicode, which astype(str) refuses
        self.source_ids = np.char.decode(np.asarray(rows["source_id"]), "utf-8").astype(object)
        # A redacted record (a delete overwrote it) has no image id: dead whatever the tombstones say.
        self.redacted = self.row_ids[self.image_ids == ""]
        self.pos_of_image = {img: i for i, img in enumerate(self.image_ids.tolist()) if img}
        self.indexes = indexes or {}
        self.embeddings = embeddings or {}
        self.base = self  # the segment as its rows file records it (before a version's relabels)

    def with_relabels(self, relabels: np.ndarray) -> "Segment":
        """This segment with the identities a version's relabel table (merges, moves) gives its
        rows: a shallow copy sharing everything else, or the segment itself when none applies."""
        base = self.base
        identities = relabelled(base.row_ids, base.identities, relabels)
        if identities is base.identities:
            return base
        seg = copy.copy(base)
        seg.identities = identities
        return seg

    def __len__(self) -> int:
        return len(self.row_ids)


def _tombstones_of(seg: Segment, tomb: np.ndarray) -> int:
    if len(seg) == 0 or len(tomb) == 0:
        return 0
    lo = np.searchsorted(tomb, seg.row_ids[0], side="left")
    hi = np.searchsorted(tomb, seg.row_ids[-1], side="right")
    return int(hi - lo)


class GallerySnapshot:
    """One version of the gallery in memory. Never mutated after construction, so a replica
    swaps snapshots atomically under concurrent searches."""

    def __init__(self, gallery_dir: Path, manifest: dict[str, Any], segments: list[Segment],
                 models: dict[str, LoadedModel], tombstones: np.ndarray, fingerprint, delta_indexes: dict[str, Any],
                 override: tuple):
        self.gallery_dir = Path(gallery_dir)
        self.manifest = manifest
        self.version = int(manifest["version"])
        self.fingerprint = fingerprint
        self.models = models
        self.segments = sorted(segments, key=lambda s: int(s.row_ids[0]) if len(s) else -1)
        redacted = [s.redacted for s in self.segments if len(s.redacted)]
        self.tombstones = np.unique(np.concatenate([tombstones, *redacted])) if redacted else tombstones
        self.delta_indexes = delta_indexes
        self.names = {int(k): v for k, v in (manifest.get("names") or {}).items()}
        self._firsts = np.array([int(s.row_ids[0]) if len(s) else -1 for s in self.segments], dtype=np.int64)
        self._tomb_count = {s.sid: _tombstones_of(s, self.tombstones) for s in self.segments}
        self._override = override
        self._identity_counts: tuple[np.ndarray, np.ndarray] | None = None

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, gallery_dir: str | os.PathLike, models: list[str] | None = None,
             expected_model_ids: dict[str, str] | None = None, index_kind: str | None = None,
             index_params: dict[str, Any] | None = None, previous: "GallerySnapshot | None" = None) -> "GallerySnapshot":
        """Load the current version; segments ``previous`` already holds are reused as they are."""
        gallery_dir = Path(gallery_dir)
        fingerprint = manifest_fingerprint(gallery_dir)
        manifest = read_manifest(gallery_dir)
        names = list(manifest["models"]) if models is None else list(models)
        loaded: dict[str, LoadedModel] = {}
        for name in names:
            entry = manifest["models"].get(name)
            if entry is None:
                raise ArtifactMismatchError(
                    f"{gallery_dir / MANIFEST} has no index for model {name!r} (it has {sorted(manifest['models'])}); "
                    f"rebuild the gallery with that model's checkpoint"
                )
            want = (expected_model_ids or {}).get(name)
            if want is not None and want != entry["model_id"]:
                raise ArtifactMismatchError(
                    f"gallery index for {name!r} was built by model_id {entry['model_id']} but the served checkpoint is "
                    f"{want}: queries would be compared with embeddings of another model. Rebuild the gallery."
                )
            loaded[name] = LoadedModel(name, entry["model_id"], int(entry["embedding_dim"]),
                                       index_kind or entry["index_kind"])
        override = (tuple(sorted((n, m.model_id, m.index_kind) for n, m in loaded.items())),
                    repr(sorted((index_params or {}).items())))
        tomb = read_tombstones(gallery_dir, manifest)
        reusable: dict[str, Segment] = {}
        if previous is not None and previous._override == override and previous.gallery_dir == gallery_dir:
            reusable = {s.sid: s.base for s in previous.segments}
        relabels = read_relabels(gallery_dir, manifest)
        segments: list[Segment] = []
        for entry in manifest["segments"]:
            seg = reusable.get(entry["id"])
            if seg is None or seg.kind != entry["kind"]:
                seg = _load_segment(gallery_dir, manifest, entry, loaded, tomb, index_kind, index_params)
            segments.append(seg.with_relabels(relabels))
        deltas = [s for s in segments if s.kind == "delta"]
        delta_indexes = {}
        if previous is not None and reusable and [s.sid for s in deltas] == previous._delta_sids() \
                and np.array_equal(np.intersect1d(tomb, _ids_of(deltas)), np.intersect1d(previous.tombstones, _ids_of(deltas))):
            delta_indexes = previous.delta_indexes
        else:
            delta_indexes = _delta_indexes(deltas, loaded, tomb)
        return cls(gallery_dir, manifest, segments, loaded, tomb, fingerprint, delta_indexes, override)

    def _delta_sids(self) -> list[str]:
        return [s.sid for s in self.segments if s.kind == "delta"]

    # ---- queries -----------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Live rows (not deleted)."""
        return int(self.manifest["rows"])

    def _locate(self, row_id: int) -> tuple[Segment, int]:
        si = int(np.searchsorted(self._firsts, row_id, side="right")) - 1
        seg = self.segments[si]
        return seg, int(np.searchsorted(seg.row_ids, row_id))

    def search(self, model: str, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k live rows for each query embedding: rank, row_id, image_id, identity,
        display_name, distance (L2), the 40 attributes, and ``attribute_agreement``: the share
        of attributes (known on both sides) equal to those of the rank-1 result."""
        distances, ids = self.neighbours(model, queries, k)
        return [self._hits(id_row, dist_row) for dist_row, id_row in zip(distances, ids)]

    def neighbours(self, model: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, row ids) of the top-k live rows per query, nearest first; -1 / inf pad a
        row when the gallery holds fewer than ``k`` live rows."""
        from facerec.index._linalg import merge_topk

        lm = self.models[model]
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, lm.embedding_dim)
        if self.rows == 0:
            return np.full((len(queries), 0), np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
        k_eff = max(1, min(int(k), self.rows))
        parts = []
        for seg in self.segments:
            index = seg.indexes.get(model)
            if index is None or seg.kind != "base":
                continue
            t = self._tomb_count[seg.sid]
            d, ids = index.search(queries, min(index.count, k_eff + t))
            if t:
                dead = np.isin(ids, self.tombstones)
                d, ids = np.where(dead, np.inf, d), np.where(dead, -1, ids)
            parts.append((np.asarray(d, dtype=np.float32), np.asarray(ids, dtype=np.int64)))
        delta = self.delta_indexes.get(model)
        if delta is not None:
            d, ids = delta.search(queries, min(delta.count, k_eff))
            parts.append((np.asarray(d, dtype=np.float32), np.asarray(ids, dtype=np.int64)))
        if not parts:
            return np.full((len(queries), 0), np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
        if len(parts) > 1:  # pad every part to k columns so they concatenate
            parts = [_pad(d, i, k_eff) for d, i in parts]
        return merge_topk(parts, k_eff)

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(row ids ascending, identities) of the live rows."""
        rids, idents = [], []
        for seg in self.segments:
            keep = seg.image_ids != ""
            if len(self.tombstones):
                keep &= ~np.isin(seg.row_ids, self.tombstones)
            rids.append(seg.row_ids[keep]), idents.append(seg.identities[keep])
        if not rids:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(rids), np.concatenate(idents)

    def embeddings_of(self, model: str, row_ids: np.ndarray) -> np.ndarray:
        """The stored embeddings of live ``row_ids`` (read through a memory map: a sample of a big
        gallery costs its rows, not the gallery)."""
        lm = self.models[model]
        row_ids = np.asarray(row_ids, dtype=np.int64)
        out = np.empty((len(row_ids), lm.embedding_dim), np.float32)
        seg_of = np.searchsorted(self._firsts, row_ids, side="right") - 1
        for si in np.unique(seg_of):
            seg = self.segments[int(si)]
            sel = np.flatnonzero(seg_of == si)
            pos = np.searchsorted(seg.row_ids, row_ids[sel])
            if seg.kind == "delta":
                out[sel] = seg.embeddings[model][pos]
            else:
                path = self.gallery_dir / segment_dir(seg.sid) / emb_file(model)
                out[sel] = np.load(path, mmap_mode="r", allow_pickle=False)[pos]
        return out

    def _hits(self, id_row: np.ndarray, dist_row: np.ndarray) -> list[dict[str, Any]]:
        keep = id_row >= 0
        located = [self._locate(int(r)) for r in id_row[keep]]
        dists = dist_row[keep]
        hits = []
        top = located[0][0].attrs[located[0][1]] if located else None
        for rank, ((seg, pos), d) in enumerate(zip(located, dists), start=1):
            a = seg.attrs[pos]
            known = (a != 0) & (top != 0)
            agreement = float(np.mean(a[known] == top[known])) if known.any() else None
            identity = int(seg.identities[pos])
            hits.append({
                "rank": rank,
                "row_id": int(seg.row_ids[pos]),
                "image_id": str(seg.image_ids[pos]),
                "identity": identity,
                "display_name": self.names.get(identity),
                "distance": float(d),
                "attributes": {n: int(v) for n, v in zip(ATTRIBUTE_NAMES, a)},
                "attribute_agreement": agreement,
            })
        return hits

    def _find(self, image_id: str) -> tuple[Segment, int] | None:
        for seg in self.segments:
            pos = seg.pos_of_image.get(image_id)
            if pos is not None:
                if len(self.tombstones) and np.isin(seg.row_ids[pos], self.tombstones):
                    return None
                return seg, pos
        return None

    def crop_file(self, image_id: str) -> Path | None:
        """The crop of a live gallery image, looked up by id (never a path from outside)."""
        found = self._find(image_id)
        if found is None:
            return None
        seg, pos = found
        root = self.gallery_dir.resolve()
        path = (root / crop_rel(str(seg.image_ids[pos]), str(seg.crop_ext[pos]))).resolve()
        if path.parent != root / CROPS or not path.is_file():
            return None
        return path

    def image_ids_of(self, identity: int) -> list[str]:
        """The live images of an identity, in row order."""
        out = []
        for seg in self.segments:
            pos = np.flatnonzero(seg.identities == int(identity))
            if len(pos) and len(self.tombstones):
                pos = pos[~np.isin(seg.row_ids[pos], self.tombstones)]
            out.extend(str(i) for i in seg.image_ids[pos] if i)
        return out

    def row_id_of(self, image_id: str) -> int | None:
        found = self._find(image_id)
        return None if found is None else int(found[0].row_ids[found[1]])

    def identity_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(identities ascending, live images of each)."""
        if self._identity_counts is None:
            if self.segments:
                ids = np.concatenate([s.identities for s in self.segments])
                rows = np.concatenate([s.row_ids for s in self.segments])
                ids = ids[~np.isin(rows, self.tombstones)] if len(self.tombstones) else ids
            else:
                ids = np.zeros(0, dtype=np.int64)
            self._identity_counts = np.unique(ids, return_counts=True)
        return self._identity_counts

    def identities_page(self, limit: int, after: int | None = None) -> dict[str, Any]:
        """One page of the live identities in ascending order, after identity ``after``."""
        ids, counts = self.identity_counts()
        start = 0 if after is None else int(np.searchsorted(ids, after, side="right"))
        page = slice(start, start + int(limit))
        items = [{"identity": int(i), "images": int(c), "display_name": self.names.get(int(i))}
                 for i, c in zip(ids[page], counts[page])]
        more = start + int(limit) < len(ids)
        return {"identities": items, "total": int(len(ids)), "next_cursor": str(items[-1]["identity"]) if more and items else None,
                "gallery_version": self.version}

    def table(self) -> pd.DataFrame:
        """The live rows as a DataFrame (row_id, image_id, identity, crop_path, source, source_id,
        box_x.., the 40 attributes), in row-id order."""
        frames = []
        for seg in self.segments:
            live = ~np.isin(seg.row_ids, self.tombstones) if len(self.tombstones) else np.ones(len(seg), bool)
            df = pd.DataFrame({
                "row_id": seg.row_ids[live],
                "image_id": seg.image_ids[live].astype(str),
                "identity": seg.identities[live],
                "crop_path": [crop_rel(i, e) for i, e in zip(seg.image_ids[live], seg.crop_ext[live])],
                "source": [ORIGINS[o] for o in seg.origin[live]],
                "source_id": seg.source_ids[live].astype(str),
            })
            for j, c in enumerate(("box_x", "box_y", "box_w", "box_h")):
                df[c] = seg.boxes[live, j]
            for j, a in enumerate(ATTRIBUTE_NAMES):
                df[a] = seg.attrs[live, j]
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["row_id", "image_id", "identity", "crop_path", "source", "source_id"])
        return pd.concat(frames, ignore_index=True)


def _ids_of(segments: list[Segment]) -> np.ndarray:
    return np.concatenate([s.row_ids for s in segments]) if segments else np.zeros(0, dtype=np.int64)


def _pad(d: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if d.shape[1] >= k:
        return d, i
    extra = k - d.shape[1]
    return (np.concatenate([d, np.full((d.shape[0], extra), np.inf, np.float32)], axis=1),
            np.concatenate([i, np.full((i.shape[0], extra), -1, np.int64)], axis=1))


def _load_segment(gallery_dir: Path, manifest: dict[str, Any], entry: dict[str, Any], models: dict[str, LoadedModel],
                  tomb: np.ndarray, index_kind: str | None, index_params: dict[str, Any] | None) -> Segment:
    from facerec.index import build_index, load_index

    sid, n = entry["id"], int(entry["rows"])
    rows = read_rows(gallery_dir, sid)
    if len(rows) != n:
        raise ArtifactMismatchError(f"{gallery_dir}/segments/{sid}: {len(rows)} rows but {MANIFEST} says {n}; the gallery is damaged")
    live = (np.asarray(rows["image_id"]) != b"") & ~np.isin(rows["row_id"], tomb)
    if entry["kind"] == "delta":
        emb = {name: read_embeddings(gallery_dir, sid, name, m.embedding_dim, n) for name, m in models.items()}
        return Segment(sid, "delta", rows, embeddings=emb)
    indexes = {}
    for name, m in models.items():
        spec = manifest["models"][name]
        saved = (entry.get("indexes") or {}).get(name, {}).get(m.index_kind)
        if saved is not None:
            indexes[name] = load_index(gallery_dir / saved, expected_model_id=m.model_id, expected_dim=m.embedding_dim)
        elif live.any():
            emb = read_embeddings(gallery_dir, sid, name, m.embedding_dim, n)
            params = (index_params if index_kind is not None else spec.get("index_params")) or {}
            indexes[name] = build_index(m.index_kind, emb[live], rows["row_id"][live].astype(np.int64), **params)
    return Segment(sid, "base", rows, indexes=indexes)


def _delta_indexes(deltas: list[Segment], models: dict[str, LoadedModel], tomb: np.ndarray) -> dict[str, Any]:
    """One exact index per model over the live rows of every delta segment (small: compaction
    folds deltas into the base before they grow)."""
    from facerec.index import build_index

    if not deltas:
        return {}
    ids = _ids_of(deltas)
    redacted = np.concatenate([s.image_ids == "" for s in deltas])
    live = ~redacted & (~np.isin(ids, tomb) if len(tomb) else True)
    if not live.any():
        return {}
    return {name: build_index("exact", np.concatenate([s.embeddings[name] for s in deltas])[live], ids[live])
            for name in models}
