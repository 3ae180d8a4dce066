"""Read one model's embeddings or saved index of a gallery (evaluation and tools), checked
against the model that is expected to have made them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.gallery.format import read_embeddings, read_manifest


def model_entry(gallery_dir: str | os.PathLike, name: str | None = None,
                expected_model_id: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, models[name] entry, manifest); ``name`` may be omitted for a one-model gallery."""
    gallery_dir = Path(gallery_dir)
    manifest = read_manifest(gallery_dir)
    models = manifest["models"]
    if name is None:
        if len(models) != 1:
            raise ConfigError("name", None, f"one of the gallery's models {sorted(models)}")
        name = next(iter(models))
    if name not in models:
        raise ArtifactMismatchError(f"{gallery_dir} has no model {name!r} (it has {sorted(models)}); rebuild it with that model")
    entry = models[name]
    if expected_model_id is not None and entry["model_id"] != expected_model_id:
        raise ArtifactMismatchError(
            f"{gallery_dir}: model {name!r} was embedded by model_id {entry['model_id']} but model_id "
            f"{expected_model_id} was expected: its embeddings are not comparable with this model's. "
            f"Rebuild with `python pipelines/build_index.py --checkpoint <that checkpoint> --out {gallery_dir} --overwrite`"
        )
    return name, entry, manifest


def load_embeddings(gallery_dir: str | os.PathLike, name: str | None = None,
                    expected_model_id: str | None = None) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """(live rows table, (n, d) float32 embeddings in the same order, metadata) of one model."""
    from facerec.gallery.snapshot import GallerySnapshot

    gallery_dir = Path(gallery_dir)
    name, entry, manifest = model_entry(gallery_dir, name, expected_model_id)
    snap = GallerySnapshot.load(gallery_dir, models=[], index_kind=None)
    table = snap.table()
    parts = []
    for seg in manifest["segments"]:
        emb = read_embeddings(gallery_dir, seg["id"], name, int(entry["embedding_dim"]), int(seg["rows"]))
        from facerec.gallery.format import read_rows

        rows = read_rows(gallery_dir, seg["id"])
        parts.append((rows["row_id"], emb))
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    emb = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, int(entry["embedding_dim"])), np.float32)
    pos = np.searchsorted(ids, table["row_id"].to_numpy())
    meta = {"model_id": entry["model_id"], "embedding_dim": int(entry["embedding_dim"]), "name": name,
            "data_version": manifest.get("data_version"), "backbone": entry.get("backbone"),
            "image_size": entry.get("image_size"), "gallery_version": manifest["version"], "split": manifest.get("split")}
    return table, emb[pos], meta


def load_saved_index(gallery_dir: str | os.PathLike, name: str | None = None, kind: str | None = None,
                     expected_model_id: str | None = None, expected_dim: int | None = None):
    """The saved index (``kind``, default the served one) of one model of a compacted gallery
    (one base segment, no deltas or tombstones), refusing one of another model or dimension."""
    from facerec.index import load_index

    gallery_dir = Path(gallery_dir)
    name, entry, manifest = model_entry(gallery_dir, name, expected_model_id)
    if expected_dim is not None and int(entry["embedding_dim"]) != int(expected_dim):
        raise ArtifactMismatchError(
            f"{gallery_dir}: model {name!r} has embedding_dim {entry['embedding_dim']} but {expected_dim} was expected")
    kind = kind or entry["index_kind"]
    have = [entry["index_kind"], *entry.get("extra_kinds", [])]
    if kind not in have:
        raise ArtifactMismatchError(f"{gallery_dir}: model {name!r} has indexes {have}, not {kind!r}; rebuild with --kinds {kind}")
    segs = manifest["segments"]
    if len(segs) != 1 or manifest.get("tombstones"):
        raise ArtifactMismatchError(
            f"{gallery_dir}: {len(segs)} segments and {int((manifest.get('tombstones') or {}).get('count', 0))} tombstones: "
            f"a saved index covers one base segment; compact it first (facerec.gallery.compact)")
    rel = (segs[0].get("indexes") or {}).get(name, {}).get(kind)
    if rel is None:
        raise ArtifactMismatchError(f"{gallery_dir}: segment {segs[0]['id']} has no saved {kind!r} index for {name!r}; "
                                    f"compact the gallery (facerec.gallery.compact) to save one")
    return load_index(gallery_dir / rel, expected_model_id=entry["model_id"], expected_dim=int(entry["embedding_dim"]))
