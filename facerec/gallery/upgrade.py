"""Convert a gallery of format 1 (``gallery.parquet`` + full-copy ``indexes/<model>/v*/`` folders,
ids such as ``000001.jpg`` / ``added_00000894.png``) into format 2 in place: one base segment
with the same rows in the same order (same row ids, so the same neighbours), random image ids
(the old ids kept as ``source_id``; crops renamed), the saved index of each model rebuilt from its
latest embeddings; then the old table and every old version folder are removed (they held full
copies of every face ever added)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, DataNotFoundError
from facerec.gallery.format import CROPS, MANIFEST, crop_rel, new_image_id, write_lock
from facerec.io import read_json_object


def upgrade_gallery(gallery_dir: str | os.PathLike) -> dict[str, Any]:
    """Upgrade ``gallery_dir`` from ``facerec-gallery/1``; returns the new manifest."""
    import pandas as pd

    from facerec.gallery.build import write_gallery
    from facerec.gallery.edit import make_rows

    gallery = Path(gallery_dir)
    path = gallery / MANIFEST
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found: {gallery} is not a gallery")
    with write_lock(gallery):
        old = read_json_object(path, fix="rebuild the gallery")
        if old.get("format") != "facerec-gallery/1":
            raise ArtifactMismatchError(f"{path} has format {old.get('format')!r}; only 'facerec-gallery/1' is upgraded")
        table = pd.read_parquet(gallery / "gallery.parquet").iloc[: int(old["rows"])]
        n = len(table)
        if not np.array_equal(table["row_id"].to_numpy(), np.arange(n)):
            raise ArtifactMismatchError(f"{gallery / 'gallery.parquet'}: row_id is not 0..n-1; rebuild the gallery instead")
        embeddings, models, kinds = {}, {}, set()
        for name, entry in old["models"].items():
            emb = np.load(gallery / entry["path"] / "embeddings.npy")[:n]
            embeddings[name] = np.ascontiguousarray(emb, dtype=np.float32)
            models[name] = {k: v for k, v in entry.items() if k not in ("path", "extra_indexes")}
            kinds.add(entry["index_kind"])
        if len(kinds) != 1:
            raise ArtifactMismatchError(f"{path}: models with different index kinds {sorted(kinds)}; rebuild the gallery instead")
        image_ids, exts = [], []
        for rel in table["crop_path"].astype(str):
            image_id, ext = new_image_id(), Path(rel).suffix or ".png"
            src = gallery / rel
            if src.is_file():
                os.replace(src, gallery / crop_rel(image_id, ext))
            image_ids.append(image_id)
            exts.append(ext)
        attrs = np.stack([table[a].to_numpy(dtype=np.int8) if a in table else np.zeros(n, np.int8)
                          for a in ATTRIBUTE_NAMES], axis=1)
        boxes = np.stack([table[c].to_numpy(dtype=np.int32) if c in table else np.zeros(n, np.int32)
                          for c in ("box_x", "box_y", "box_w", "box_h")], axis=1)
        origin = (table["source"].astype(str) == "upload").to_numpy().astype(np.uint8) if "source" in table else 0
        rows = make_rows(np.arange(n), table["identity"].to_numpy(dtype=np.int64), image_ids, exts, 0, boxes=boxes,
                         attrs=attrs, source_ids=table["image_id"].astype(str).tolist())
        rows["origin"] = origin
        fields = {k: v for k, v in old.items() if k not in ("format", "version", "rows", "models", "updated_at")}
        kind = kinds.pop()
        params = {kind: next(iter(old["models"].values())).get("index_params") or {}}
        manifest = write_gallery(gallery, rows, embeddings, models, [kind], params, {**fields, "upgraded_at": time.time()})
        shutil.rmtree(gallery / "indexes", ignore_errors=True)
        (gallery / "gallery.parquet").unlink(missing_ok=True)
        for f in (gallery / CROPS).iterdir():
            if f.name.startswith(".") or f.name.split(".")[0] not in set(image_ids):
                f.unlink(missing_ok=True)  # crops of rows beyond the manifest's count (a writer that died)
    return manifest
