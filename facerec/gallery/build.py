"""The one gallery builder: a crops folder (``crops.parquet`` + ``crops/``) and one or more
checkpoints -> a gallery folder (:mod:`facerec.gallery.format`) with one base segment.

Embedding runs on an engine from :data:`EMBED_ENGINES`, both registered here: ``local`` (in this
process, batch by batch through :mod:`facerec.models.inference`) and ``ray`` (a Ray Data actor
pool, :mod:`facerec.gallery.embed`, imported when a build uses it). Every row gets a
random image id (its crops-folder name is kept as ``source_id``), so galleries built from
``000001.jpg``-style datasets serve ids that cannot be enumerated.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ConfigError, DataNotFoundError
from facerec.gallery.edit import make_rows, write_segment
from facerec.gallery.embed import EmbeddingOptions
from facerec.gallery.format import CROPS, GALLERY_FORMAT, MANIFEST, commit_manifest, crop_rel, new_image_id
from facerec.models.reference import ModelRef, resolve_model
from facerec.registry import Registry

# engine name -> fn(df, crops_dir, checkpoint, name, config) -> ((n, d) float32, {"image_size", "seconds", ...})
EMBED_ENGINES: Registry[Callable[..., tuple[np.ndarray, dict[str, Any]]]] = Registry("embedding engine")


@EMBED_ENGINES.register("local")
def embed_local(df: pd.DataFrame, crops_dir: Path, checkpoint: "str | ModelRef", name: str, config: "GalleryBuildConfig"):
    """In this process, ``batch_size`` crops at a time (no Ray): small galleries, serving's cache."""
    from facerec.models import load_embedder
    from facerec.models.inference import embed_files

    t0 = time.perf_counter()
    model, meta = load_embedder(checkpoint)
    image_size = int(meta.get("image_size", 218))
    emb = embed_files(model, [crops_dir / p for p in df["crop_path"]], image_size, batch_size=config.batch_size,
                      progress=f"embed {name}")
    return emb, {"image_size": image_size, "seconds": time.perf_counter() - t0}


@EMBED_ENGINES.register("ray")
def embed_ray(df: pd.DataFrame, crops_dir: Path, checkpoint: "str | ModelRef", name: str, config: "GalleryBuildConfig"):
    """A Ray Data actor pool (:func:`facerec.gallery.embed.embed_crops_with_stats`): large galleries, build-index."""
    from facerec.gallery.embed import embed_crops_with_stats

    return embed_crops_with_stats(df, crops_dir, checkpoint, config.embed_config())


@dataclass
class GalleryBuildConfig(EmbeddingOptions):
    """Validated settings of :func:`build_gallery` (checked before any model loads).

    ``checkpoints``: served model name -> checkpoint folder, pretrained model name or
    :class:`facerec.models.reference.ModelRef`. ``kinds``: index kinds saved per
    model, the first is the one served. ``index_params``: kind -> parameters. ``engine``: a name
    of :data:`EMBED_ENGINES`. ``link_crops``: hard-link the crops instead of copying (same
    filesystem; a delete then removes the gallery's link, not the crops folder's file).
    ``erasure_list``: the erasure list (:mod:`facerec.data.erasure`) whose entries for the crops'
    photo folder are left out (None: ``$FACEREC_CACHE/erased.json``).
    """

    crops_dir: str
    out_dir: str
    checkpoints: dict[str, str] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=lambda: ["kdtree"])
    index_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine: str = "local"
    link_crops: bool = False
    overwrite: bool = False
    erasure_list: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # the embedding options: batch_size, num_actors, use_gpu
        from facerec.index import check_kinds

        if not self.checkpoints:
            raise ConfigError("checkpoints", self.checkpoints, "at least one NAME=CHECKPOINT_DIR")
        check_kinds(self.kinds, self.index_params)
        EMBED_ENGINES.get(self.engine)
        for n in self.checkpoints:
            if not n or "/" in n or n.startswith(".") or not n.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise ConfigError("model name", n, "a plain name such as resnet18 (letters, digits, '_', '-', '.')")


# fn(df, embeddings {model: (n, d)}, models {model: manifest entry}) -> (identity per row, manifest fields)
Identify = Callable[[pd.DataFrame, dict[str, np.ndarray], dict[str, dict[str, Any]]], tuple[np.ndarray, dict[str, Any]]]


def build_gallery(config: GalleryBuildConfig, table: pd.DataFrame | None = None,
                  extra: dict[str, Any] | None = None, model_extra: dict[str, dict[str, Any]] | None = None,
                  identify: Identify | None = None) -> dict[str, Any]:
    """Embed the crops with every model, save one index per (model, kind), write the gallery and
    return its manifest (written last: an interrupted build leaves nothing a reader takes for a
    gallery).

    ``table``: the crops rows to include (default: all of ``crops.parquet``; eval passes a split).
    ``extra``/``model_extra``: more manifest fields (eval: the split; per model: init, ...).
    ``identify``: gives the rows their identities from the embeddings just computed, and manifest
    fields (an unlabelled photo folder's people: :func:`facerec.cluster.gallery.gallery_people`),
    so the faces are embedded once.
    """
    from facerec.data.inputs import check_inputs_match
    from facerec.data.schema import load_crops
    from facerec.io import read_parquet_metadata
    cfg = config
    t0 = time.perf_counter()
    # missing/damaged checkpoint fails before embedding; a ModelRef is not read again
    checkpoints = {name: resolve_model(ckpt) for name, ckpt in cfg.checkpoints.items()}
    crops_dir = Path(cfg.crops_dir)
    crops_table = crops_dir / "crops.parquet"
    metas = {}
    for name, ckpt in checkpoints.items():
        metas[name] = ckpt.metadata
        if crops_table.is_file():
            check_inputs_match(metas[name], read_parquet_metadata(crops_table), str(crops_table), f"{name} ({ckpt})")
    out = Path(cfg.out_dir)
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise ConfigError("out_dir", str(out), "a folder without a gallery, or overwrite=True (--overwrite)")
    df, crops_meta = load_crops(crops_dir)
    if table is not None:
        df = table
    photos = crops_meta.get("source")
    if photos:
        from facerec.data.erasure import ErasureList

        erasures = ErasureList(cfg.erasure_list) if cfg.erasure_list else ErasureList.default()
        gone = erasures.of(photos).mask(df["image_id"].astype(str), df["identity"])
        if gone.any():
            # erased by a gallery delete: a rebuild must not bring them back (their crops stay uncopied)
            print(f"gallery: {int(gone.sum())} crops left out, erased from {photos} ({erasures.path})", flush=True)
            df = df[~gone]
    if df.empty:
        raise DataNotFoundError(f"{crops_table} has no rows: nothing to put in the gallery")
    df = df.reset_index(drop=True)
    if out.exists() and cfg.overwrite and (out / MANIFEST).exists():
        for sub in ("segments", "tombstones", CROPS, MANIFEST):
            p = out / sub
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / CROPS).mkdir(parents=True, exist_ok=True)

    n = len(df)
    taken: set[str] = set()
    image_ids = []
    for _ in range(n):
        image_ids.append(new_image_id(taken))
        taken.add(image_ids[-1])
    exts = [Path(p).suffix or ".png" for p in df["crop_path"]]
    boxes = np.stack([df[c].to_numpy(dtype=np.int32) if c in df else np.zeros(n, np.int32)
                      for c in ("box_x", "box_y", "box_w", "box_h")], axis=1)
    attrs = np.stack([df[a].to_numpy(dtype=np.int8) for a in ATTRIBUTE_NAMES], axis=1)
    rows = make_rows(np.arange(n, dtype=np.int64), df["identity"].to_numpy(dtype=np.int64), image_ids, exts, origin=0,
                     boxes=boxes, attrs=attrs, source_ids=df["image_id"].astype(str).tolist())
    for src, img, ext in zip(df["crop_path"], image_ids, exts):
        dst = out / crop_rel(img, ext)
        if cfg.link_crops:
            try:
                os.link(crops_dir / src, dst)
                continue
            except OSError:
                pass
        shutil.copyfile(crops_dir / src, dst)

    embeddings, models = {}, {}
    for name, ckpt in checkpoints.items():
        meta = metas[name]
        emb, stats = EMBED_ENGINES.get(cfg.engine)(df, crops_dir, ckpt, name, cfg)
        embeddings[name] = emb
        models[name] = {
            "model_id": meta["model_id"], "backbone": meta.get("backbone"), "embedding_dim": int(emb.shape[1]),
            "image_size": int(stats["image_size"]), "checkpoint": str(Path(ckpt).resolve()),
            "embed_seconds": round(float(stats["seconds"]), 3), **(model_extra or {}).get(name, {}),
        }
    from facerec.detect import crops_detector

    found: dict[str, Any] = {}
    if identify is not None:
        identities, found = identify(df, embeddings, models)
        rows["identity"] = np.asarray(identities, dtype=np.int64)
    manifest = write_gallery(out, rows, embeddings, models, cfg.kinds, cfg.index_params, {
        "input_kind": str(crops_meta.get("input_kind") or "haar_crop"),
        "crop_size": int(crops_meta.get("crop_size") or 218), "margin": float(crops_meta.get("margin", 0.2)),
        "data_version": crops_meta.get("data_version"), "source": str(crops_dir.resolve()), "photos": photos,
        "detector": crops_detector(crops_meta),
        # the people a folder-per-person photo folder names (facerec.data.layouts), as its display names
        "names": names_of(crops_meta, df["identity"]),
        **(extra or {}), **found,
    })
    print(f"gallery: {n} crops of {len(np.unique(rows['identity']))} identities, models {sorted(models)}, indexes {cfg.kinds} "
          f"-> {out} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return manifest


def names_of(crops_meta: dict[str, Any], identities) -> dict[str, str]:
    """The display names a crops folder records (``display_names``: a folder-per-person photo
    folder's people, :mod:`facerec.data.layouts`) of the identities in ``identities``."""
    present = {int(i) for i in np.unique(np.asarray(identities, dtype=np.int64))}
    return {str(k): v for k, v in (crops_meta.get("display_names") or {}).items() if int(k) in present}


def write_gallery(out: str | os.PathLike, rows: np.ndarray, embeddings: dict[str, np.ndarray], models: dict[str, dict[str, Any]],
                  kinds: list[str], index_params: dict[str, dict[str, Any]] | None = None,
                  fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a gallery of one base segment from its records (:func:`facerec.gallery.edit.make_rows`;
    crops already under ``out/crops``) and every model's embeddings, with the saved indexes of
    ``kinds``; commit its manifest. ``models``: name -> {model_id, embedding_dim, ...}."""
    from facerec.index import build_index

    out = Path(out)
    index_params = index_params or {}
    indexes, index_meta, entries = {}, {}, {}
    for name, spec in models.items():
        emb = embeddings[name]
        index_meta[name] = {"model_id": spec["model_id"], "embedding_dim": int(emb.shape[1]),
                            "data_version": (fields or {}).get("data_version"), "gallery_version": 1}
        indexes[name] = {}
        for kind in kinds:
            tb = time.perf_counter()
            indexes[name][kind] = build_index(kind, emb, rows["row_id"], **index_params.get(kind, {}))
            print(f"index {name}/{kind}: {len(emb)} vectors in {time.perf_counter() - tb:.2f} s", flush=True)
        entries[name] = {**spec, "embedding_dim": int(emb.shape[1]), "index_kind": kinds[0],
                         "index_params": dict(index_params.get(kinds[0], {})), "extra_kinds": list(kinds[1:]),
                         "extra_index_params": {k: dict(index_params.get(k, {})) for k in kinds[1:]}}
    segment = write_segment(out, "s000001", "base", rows, embeddings, indexes, index_meta)
    n = int(len(rows))
    manifest = {
        "format": GALLERY_FORMAT, "version": 1, "rows": n, "next_row_id": int(rows["row_id"].max()) + 1 if n else 0,
        "input_kind": "haar_crop", "crop_size": 218, "margin": 0.2, "data_version": None, "source": None,
        "names": {}, **(fields or {}), "updated_at": time.time(), "models": entries, "segments": [segment],
        "tombstones": None,
    }
    commit_manifest(out, manifest)
    return manifest
