"""The served gallery: the face crops a query is matched against, their labels, and one nearest-
neighbour index per served model.

```
GALLERY/
  gallery.json                 manifest, the commit point of every change (written last, atomically):
                               {"format", "version", "rows", "crop_size", "margin", "data_version",
                                "models": {name: {"model_id", "backbone", "embedding_dim", "image_size",
                                                  "index_kind", "index_params", "path": "indexes/<name>/v000003"}}}
  gallery.parquet              row_id (= index id = row position), image_id, identity, crop_path
                               (relative to GALLERY), source, box_x.., + the 40 CelebA attributes
                               (int8 -1/1; 0 = unknown, for uploaded images)
  crops/<file>                 the stored model inputs (PNG, lossless: what was embedded), served as thumbnails
  indexes/<name>/v000003/      one immutable folder per (model, version):
      index/                   the facerec.index folder (index.json + data), ids = row_id
      embeddings.npy           (rows, d) float32, row i = row_id i; rebuilds any other index kind
```

Readers (the Retriever) read ``gallery.json``, then the index folders it names, then
``gallery.parquet``. A writer publishes new index folders and the new table *before* the
manifest, so a reader always finds every id of the indexes it loaded in the table it loads
next; folders of old versions are kept for a while so a reader mid-load never loses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet

GALLERY_FORMAT = "facerec-gallery/1"
MANIFEST = "gallery.json"
TABLE = "gallery.parquet"
CROPS = "crops"
INDEXES = "indexes"
LOCK = ".write.lock"
KEEP_VERSIONS = 3  # old index folders kept so a replica still loading one never sees it vanish

TABLE_COLUMNS = ("row_id", "image_id", "identity", "crop_path", "source", "box_x", "box_y", "box_w", "box_h")


# --------------------------------------------------------------------------------------------
# Embedding crops (the same preprocessing serving applies to a query crop)
# --------------------------------------------------------------------------------------------


def embed_rgb_crops(model, crops: list[np.ndarray], image_size: int, device: str = "cpu") -> np.ndarray:
    """Embed H x W x 3 uint8 stored inputs with the model's input kind's tensor; (n, d) float32."""
    import torch

    from facerec.data.inputs import kind_of

    if not crops:
        return np.zeros((0, int(model.embedding_dim)), dtype=np.float32)
    kind = kind_of(model.metadata)
    batch = torch.stack([kind.tensor(c, image_size) for c in crops]).to(device)
    with torch.inference_mode():
        out = model(batch)
    return out.float().cpu().numpy().astype(np.float32, copy=False)


def embed_crop_files(model, paths: list[Path], image_size: int, batch_size: int = 64, desc: str = "embed") -> np.ndarray:
    """Embed crop JPEG files in batches, with a progress bar."""
    from tqdm import tqdm

    from facerec.data.images import read_image

    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False):
        crops = [read_image(p) for p in paths[start:start + batch_size]]
        chunks.append(embed_rgb_crops(model, crops, image_size))
    if not chunks:
        return np.zeros((0, int(model.embedding_dim)), dtype=np.float32)
    return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def read_manifest(gallery_dir: str | os.PathLike) -> dict[str, Any]:
    """``gallery.json`` with a clear error if the folder is not a gallery."""
    path = Path(gallery_dir) / MANIFEST
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found: {gallery_dir} is not a served gallery. Build one with "
            f"`python pipelines/serve.py --crops CROPS_DIR --checkpoint NAME=CKPT ...` "
            f"(facerec.serve.gallery.build_gallery)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactMismatchError(f"{path} is not valid JSON ({exc}); rebuild the gallery") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != GALLERY_FORMAT:
        raise ArtifactMismatchError(
            f"{path} has format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"expected {GALLERY_FORMAT!r}; rebuild the gallery with this version"
        )
    return manifest


def manifest_fingerprint(gallery_dir: str | os.PathLike) -> tuple[int, int] | None:
    """(mtime_ns, size) of ``gallery.json``: cheap to poll; changes on every commit."""
    try:
        st = os.stat(Path(gallery_dir) / MANIFEST)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def write_lock(gallery_dir: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on the gallery for writers (several Retriever replicas may add at once)."""
    path = Path(gallery_dir) / LOCK
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _version_dir(name: str, version: int) -> str:
    return f"{INDEXES}/{name}/v{version:06d}"


def _publish_index(gallery_dir: Path, rel: str, index, embeddings: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write an index folder + embeddings beside its final place, then rename it into place
    (a directory rename is atomic, so a reader sees all of it or none)."""
    final = gallery_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        index.save(tmp / "index", metadata)
        with open(tmp / "embeddings.npy", "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # left by a writer that died after the rename but before the manifest
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(gallery_dir: Path, manifest: dict[str, Any]) -> None:
    for name in manifest["models"]:
        folder = gallery_dir / INDEXES / name
        if not folder.is_dir():
            continue
        versions = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("v"))
        for old in versions[:-KEEP_VERSIONS]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in folder.glob(".*.tmp"):
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def build_gallery(
    crops_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoints: dict[str, str | os.PathLike],
    index_kind: str = "kdtree",
    index_params: dict[str, Any] | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build a served gallery from a preprocess output (``crops.parquet`` + ``crops/``).

    ``checkpoints``: served model name -> checkpoint folder. Every crop is embedded with every
    model and one ``index_kind`` index (facerec.index) per model is saved. Crops are copied
    so the gallery is self-contained (it can be moved to a cluster volume alone).
    Returns the manifest.
    """
    from facerec.data.schema import load_crops
    from facerec.index import INDEXES as INDEX_REGISTRY
    from facerec.index import build_index
    from facerec.models import load_embedder, read_checkpoint_metadata

    t0 = time.perf_counter()
    INDEX_REGISTRY.get(index_kind)  # ConfigError naming the kinds before any work
    if not checkpoints:
        raise ConfigError("checkpoints", checkpoints, "at least one NAME=CHECKPOINT_DIR")
    from facerec.data.inputs import check_inputs_match
    from facerec.io import read_parquet_metadata
    from facerec.models.pretrained import resolve_checkpoint

    checkpoints = {name: resolve_checkpoint(ckpt) for name, ckpt in checkpoints.items()}
    crops_table = Path(crops_dir) / "crops.parquet"
    for name, ckpt in checkpoints.items():
        mmeta = read_checkpoint_metadata(ckpt)  # missing/damaged checkpoint fails before embedding
        if crops_table.is_file():
            check_inputs_match(mmeta, read_parquet_metadata(crops_table), str(crops_table), f"{name} ({ckpt})")
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise ConfigError("out_dir", str(out), "a folder without a gallery, or overwrite=True")
    df, meta = load_crops(crops_dir)
    if df.empty:
        raise DataNotFoundError(f"{crops_dir}/crops.parquet has no rows: nothing to put in the gallery")
    crops_dir = Path(crops_dir)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    (out / CROPS).mkdir(parents=True, exist_ok=True)

    df = df.reset_index(drop=True)
    table = pd.DataFrame({
        "row_id": np.arange(len(df), dtype=np.int64),
        "image_id": df["image_id"].astype(str),
        "identity": df["identity"].astype(np.int64),
        "crop_path": [f"{CROPS}/{Path(p).name}" for p in df["crop_path"]],
        "source": "dataset",
    })
    for c in ("box_x", "box_y", "box_w", "box_h"):
        table[c] = df[c].astype(np.int32) if c in df else np.int32(0)
    for a in ATTRIBUTE_NAMES:
        table[a] = df[a].astype(np.int8)
    src_paths = [crops_dir / p for p in df["crop_path"]]
    for src, rel in zip(src_paths, table["crop_path"]):
        shutil.copyfile(src, out / rel)

    version = 1
    models: dict[str, Any] = {}
    for name, ckpt in checkpoints.items():
        model, mmeta = load_embedder(ckpt)
        image_size = int(mmeta.get("image_size", 218))
        emb = embed_crop_files(model, src_paths, image_size, batch_size=batch_size, desc=f"embed {name}")
        index = build_index(index_kind, emb, table["row_id"].to_numpy(), **(index_params or {}))
        rel = _version_dir(name, version)
        _publish_index(out, rel, index, emb, {"model_id": mmeta["model_id"], "embedding_dim": int(emb.shape[1]), "gallery_version": version})
        models[name] = {
            "model_id": mmeta["model_id"],
            "backbone": mmeta.get("backbone"),
            "embedding_dim": int(emb.shape[1]),
            "image_size": image_size,
            "checkpoint": str(Path(ckpt).resolve()),
            "index_kind": index_kind,
            "index_params": dict(index_params or {}),
            "path": rel,
        }
    atomic_write_parquet(out / TABLE, table, metadata={"gallery_version": version})
    manifest = {
        "format": GALLERY_FORMAT,
        "version": version,
        "rows": int(len(table)),
        "input_kind": str(meta.get("input_kind") or "haar_crop"),
        "crop_size": int(meta.get("crop_size", 218)),
        "margin": float(meta.get("margin", 0.2)),
        "data_version": meta.get("data_version"),
        "source": str(crops_dir.resolve()),
        "updated_at": time.time(),
        "models": models,
    }
    atomic_write_json(out / MANIFEST, manifest)
    print(
        f"gallery: {len(table)} crops of {table['identity'].nunique()} identities, models {sorted(models)}, "
        f"{index_kind} index -> {out} ({time.perf_counter() - t0:.1f}s)"
    )
    return manifest


# --------------------------------------------------------------------------------------------
# A loaded, immutable snapshot (what a Retriever replica serves)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    name: str
    model_id: str
    embedding_dim: int
    index_kind: str
    index: Any
    embeddings_path: Path


class GallerySnapshot:
    """One version of the gallery in memory: table + one index per model. Never mutated after
    construction, so a replica can swap it atomically under concurrent searches."""

    def __init__(self, gallery_dir: Path, manifest: dict[str, Any], table: pd.DataFrame, models: dict[str, LoadedModel],
                 fingerprint):
        self.gallery_dir = gallery_dir
        self.manifest = manifest
        self.version = int(manifest["version"])
        self.fingerprint = fingerprint
        self.table = table
        self.models = models
        self.attrs = table.loc[:, list(ATTRIBUTE_NAMES)].to_numpy(dtype=np.int8)
        self.image_ids = table["image_id"].to_numpy()
        self.identities = table["identity"].to_numpy(dtype=np.int64)
        self.row_of_image = {img: i for i, img in enumerate(self.image_ids)}

    @classmethod
    def load(cls, gallery_dir: str | os.PathLike, models: list[str] | None = None,
             expected_model_ids: dict[str, str] | None = None, index_kind: str | None = None,
             index_params: dict[str, Any] | None = None) -> "GallerySnapshot":
        from facerec.index import build_index, load_index

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
            folder = gallery_dir / entry["path"]
            emb_path = folder / "embeddings.npy"
            if index_kind is None or index_kind == entry["index_kind"]:
                index = load_index(folder / "index", expected_model_id=entry["model_id"], expected_dim=int(entry["embedding_dim"]))
                kind = entry["index_kind"]
            else:
                emb = np.load(emb_path)
                index = build_index(index_kind, emb, np.arange(len(emb), dtype=np.int64), **(index_params or {}))
                kind = index_kind
            loaded[name] = LoadedModel(name, entry["model_id"], int(entry["embedding_dim"]), kind, index, emb_path)
        table = pd.read_parquet(gallery_dir / TABLE)
        if not np.array_equal(table["row_id"].to_numpy(), np.arange(len(table))):
            raise ArtifactMismatchError(f"{gallery_dir / TABLE}: row_id is not 0..n-1 in order; the table was edited by hand")
        if len(table) < int(manifest["rows"]):
            raise ArtifactMismatchError(
                f"{gallery_dir / TABLE} has {len(table)} rows but {MANIFEST} says {manifest['rows']}: the gallery is damaged"
            )
        return cls(gallery_dir, manifest, table, loaded, fingerprint)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def search(self, model: str, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k rows for each query embedding: rank, image_id, identity, distance (L2), the
        40 attributes, and ``attribute_agreement``: the share of attributes (known on both
        sides) equal to those of the rank-1 result, the demo's proxy for "looks alike"."""
        lm = self.models[model]
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, lm.embedding_dim)
        k_eff = max(1, min(int(k), self.rows))
        distances, ids = lm.index.search(queries, k_eff)
        out: list[list[dict[str, Any]]] = []
        for dist_row, id_row in zip(np.asarray(distances), np.asarray(ids)):
            keep = (id_row >= 0) & (id_row < self.rows)
            rows = id_row[keep].astype(np.int64)
            dists = dist_row[keep]
            hits = []
            top = self.attrs[rows[0]] if len(rows) else None
            for rank, (r, d) in enumerate(zip(rows, dists), start=1):
                a = self.attrs[r]
                known = (a != 0) & (top != 0)
                agreement = float(np.mean(a[known] == top[known])) if known.any() else None
                hits.append({
                    "rank": rank,
                    "row_id": int(r),
                    "image_id": str(self.image_ids[r]),
                    "identity": int(self.identities[r]),
                    "distance": float(d),
                    "attributes": {n: int(v) for n, v in zip(ATTRIBUTE_NAMES, a)},
                    "attribute_agreement": agreement,
                })
            out.append(hits)
        return out

    def crop_file(self, image_id: str) -> Path | None:
        """The crop of a gallery image, looked up by id in the table (never a path from outside)."""
        row = self.row_of_image.get(image_id)
        if row is None:
            return None
        root = self.gallery_dir.resolve()
        path = (root / str(self.table.at[row, "crop_path"])).resolve()
        if root not in path.parents or not path.is_file():
            return None
        return path


# --------------------------------------------------------------------------------------------
# Add
# --------------------------------------------------------------------------------------------


def add_to_gallery(
    gallery_dir: str | os.PathLike,
    embeddings: dict[str, np.ndarray],
    identities: list[int],
    crops_png: list[bytes],
    boxes: list[list[int]] | None = None,
    expected_model_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Append images to the gallery: crops, table rows and every model's index, then commit
    the manifest. All of it is written before this returns; on any error nothing is
    committed (the manifest still names the previous version).

    ``embeddings``: model name -> (n, d), one row per image, for *every* model of the gallery.
    Returns {"version", "row_ids", "image_ids"}.
    """
    from facerec.index import load_index

    gallery_dir = Path(gallery_dir)
    n = len(crops_png)
    if n == 0:
        raise ConfigError("images", 0, "at least one image")
    if len(identities) != n:
        raise ConfigError("identities", len(identities), f"one identity per image ({n})")
    boxes = boxes or [[0, 0, 0, 0]] * n
    with write_lock(gallery_dir):
        manifest = read_manifest(gallery_dir)
        missing = sorted(set(manifest["models"]) - set(embeddings))
        if missing:
            raise ConfigError(
                "embeddings", sorted(embeddings),
                f"embeddings for every gallery model, also {missing}: new images must enter every index, so serve "
                f"all of the gallery's models {sorted(manifest['models'])} (or rebuild the gallery for the served ones)",
            )
        table = pd.read_parquet(gallery_dir / TABLE)
        start = len(table)
        version = int(manifest["version"]) + 1
        row_ids = np.arange(start, start + n, dtype=np.int64)
        image_ids = [f"added_{int(r):08d}.png" for r in row_ids]
        models = {}
        for name, entry in manifest["models"].items():
            emb = np.asarray(embeddings[name], dtype=np.float32)
            if emb.shape != (n, int(entry["embedding_dim"])):
                raise ArtifactMismatchError(
                    f"embeddings for {name!r} have shape {emb.shape}, expected ({n}, {entry['embedding_dim']})"
                )
            want = (expected_model_ids or {}).get(name)
            if want is not None and want != entry["model_id"]:
                raise ArtifactMismatchError(f"embeddings of model_id {want} cannot go into the {name!r} index of {entry['model_id']}")
            folder = gallery_dir / entry["path"]
            # A fresh copy: the live index of the serving replica is never mutated under a search.
            index = load_index(folder / "index", expected_model_id=entry["model_id"], expected_dim=int(entry["embedding_dim"]))
            index.add(emb, row_ids)
            all_emb = np.concatenate([np.load(folder / "embeddings.npy"), emb])
            rel = _version_dir(name, version)
            _publish_index(gallery_dir, rel, index, all_emb,
                           {"model_id": entry["model_id"], "embedding_dim": int(entry["embedding_dim"]), "gallery_version": version})
            models[name] = {**entry, "path": rel}
        for img, data in zip(image_ids, crops_png):
            atomic_write_bytes(gallery_dir / CROPS / img, data)
        new = pd.DataFrame({
            "row_id": row_ids,
            "image_id": image_ids,
            "identity": np.asarray(identities, dtype=np.int64),
            "crop_path": [f"{CROPS}/{i}" for i in image_ids],
            "source": "upload",
            "box_x": np.asarray([b[0] for b in boxes], dtype=np.int32),
            "box_y": np.asarray([b[1] for b in boxes], dtype=np.int32),
            "box_w": np.asarray([b[2] for b in boxes], dtype=np.int32),
            "box_h": np.asarray([b[3] for b in boxes], dtype=np.int32),
        })
        for a in ATTRIBUTE_NAMES:
            new[a] = np.int8(0)  # unknown: uploads carry no attribute labels
        table = pd.concat([table, new[table.columns]], ignore_index=True)
        atomic_write_parquet(gallery_dir / TABLE, table, metadata={"gallery_version": version})
        manifest = {**manifest, "version": version, "rows": int(len(table)), "models": models, "updated_at": time.time()}
        atomic_write_json(gallery_dir / MANIFEST, manifest)
        _prune(gallery_dir, manifest)
    return {"version": version, "row_ids": [int(r) for r in row_ids], "image_ids": image_ids}
