"""Build a retrieval gallery at scale: embed a crops folder on a Ray Data actor pool
(:mod:`facerec.eval.embed`), store the embeddings, build and save the index(es).

The folder is the served gallery of :mod:`facerec.serve.gallery` (so ``pipelines/serve.py
--gallery DIR`` serves it as is), with two additions inside each model's version folder::

    GALLERY/
      gallery.json                  manifest (written last: the commit point); per model also
                                    "extra_indexes" {kind: path}, "init", "split"
      gallery.parquet               row_id, image_id, identity, crop_path, source, box_*, 40 attributes
      crops/<image_id>              the crops (hard links to the preprocess output when possible)
      indexes/<name>/v000001/
          index/                    the first --kinds index (what serve loads), ids = row_id
          index-<kind>/             every other requested kind
          embeddings.npy            (rows, d) float32 (serve rebuilds other kinds from it)
          embeddings.parquet        row_id, image_id, identity, embedding list<float32>, crop_path,
                                    40 attributes; metadata {model_id, embedding_dim, data_version, ...}
      checkpoints/<name>/           only for --initial models: the initial weights saved as a
                                    checkpoint, so the gallery has a model_id and can be served

Initial-weight models (``initial``) are built with ``build_embedder`` (ImageNet weights when
the torch hub cache has them, else seeded random init; ``init`` in the manifest says which).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.io import atomic_write_json, atomic_write_parquet

EMBEDDINGS_TABLE = "embeddings.parquet"
SPLIT_CHOICES = ("all", "test")
INITIAL_EMBEDDING_DIM = 128


@dataclass
class GalleryBuildConfig:
    """Validated settings of :func:`build_gallery_index` (checked before any actor starts).

    ``checkpoints``: model name -> checkpoint folder. ``initial``: backbones embedded with
    their initial weights (name ``<backbone>_initial``). ``split``: "all" crops, or only the
    identity-disjoint "test" split (the split settings recorded in the checkpoint, else
    ``split_args``). ``kinds``: index kinds, the first is the one serving loads.
    """

    crops_dir: str
    out_dir: str
    checkpoints: dict[str, str] = field(default_factory=dict)
    initial: list[str] = field(default_factory=list)
    split: str = "all"
    split_args: dict | None = None
    kinds: list[str] = field(default_factory=lambda: ["kdtree"])
    index_params: dict = field(default_factory=dict)
    image_size: int | None = None       # input size of initial models (default: the crop size); checkpoints use their own
    embedding_dim: int = INITIAL_EMBEDDING_DIM
    seed: int = 0
    batch_size: int = 64
    num_actors: int | None = None
    use_gpu: bool | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        from facerec.index import INDEXES
        from facerec.models import BACKBONES

        if not self.checkpoints and not self.initial:
            raise ConfigError("checkpoints/initial", "none", "at least one --checkpoint NAME=DIR or --backbone NAME --initial")
        if self.split not in SPLIT_CHOICES:
            raise ConfigError("split", self.split, f"one of {SPLIT_CHOICES}")
        if not self.kinds:
            raise ConfigError("kinds", self.kinds, f"at least one index kind of {INDEXES.names()}")
        for k in self.kinds:
            INDEXES.get(k)  # ConfigError naming the kinds
        if len(set(self.kinds)) != len(self.kinds):
            raise ConfigError("kinds", self.kinds, "each kind once")
        for b in self.initial:
            BACKBONES.get(b)
        names = list(self.checkpoints) + [f"{b}_initial" for b in self.initial]
        if len(set(names)) != len(names):
            raise ConfigError("models", names, "distinct model names")
        for n in names:
            if not n or "/" in n or n.startswith("."):
                raise ConfigError("model name", n, "a plain folder name such as resnet18")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ConfigError("image_size", self.image_size, "None or an integer >= 8")
        if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise ConfigError("embedding_dim", self.embedding_dim, "a positive integer")


def resolve_split_args(metas: list[dict], split_args: dict | None) -> dict:
    """The ``assign_splits`` arguments: explicit ones, else those recorded by training in the
    checkpoints (all must agree), else the defaults (random 70/10/20, seed 0)."""
    if split_args is not None:
        return dict(split_args)
    recorded = [m.get("split") for m in metas if m.get("split")]
    if not recorded:
        return {"mode": "random", "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    first = recorded[0]
    for other in recorded[1:]:
        if other != first:
            raise ArtifactMismatchError(
                f"the checkpoints were trained on different splits ({first} vs {other}); their test identities "
                f"differ, so one gallery/table cannot hold out both -- pass split_args explicitly or use checkpoints "
                f"of one sweep"
            )
    return dict(first)


def check_data_version(meta: dict, crops_meta: dict, what: str) -> None:
    """A checkpoint evaluated on its held-out split must come from these crops (a pretrained
    model never saw them: any split of them is held out from it)."""
    if meta.get("pretrained"):
        return
    want, have = meta.get("data_version"), crops_meta.get("data_version")
    if want is not None and have is not None and want != have:
        raise ArtifactMismatchError(
            f"{what} was trained on crops with data_version {want} but the crops folder has data_version {have}: "
            f"its test split would not be the identities held out in training. Use the crops folder the model "
            f"was trained on (see model.json 'train_config.data_dir')."
        )


def save_initial_checkpoint(backbone: str, out_dir: str | os.PathLike, image_size: int, embedding_dim: int = 128,
                            seed: int = 0, data_version: str | None = None) -> dict:
    """The initial weights of ``backbone`` (ImageNet from the hub cache, else seeded random)
    saved as a checkpoint folder, so every actor loads the very same weights and the
    embeddings get a model_id. Returns the checkpoint metadata (``init`` says which)."""
    import torch

    from facerec.models import build_embedder, save_checkpoint

    torch.manual_seed(seed)
    model = build_embedder(backbone, embedding_dim, freeze="none")
    return save_checkpoint(out_dir, model.eval(), {
        "image_size": int(image_size), "data_version": data_version, "loss": "none", "epoch": 0,
        "note": "initial weights (before fine-tuning)",
    })


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)  # same filesystem: no copy, and the path stays inside the gallery for serving
    except OSError:
        shutil.copyfile(src, dst)


def gallery_table(df: pd.DataFrame) -> pd.DataFrame:
    """``gallery.parquet`` rows (serve's TABLE layout) for the crops of ``df``."""
    from facerec.serve.gallery import CROPS

    table = pd.DataFrame({
        "row_id": np.arange(len(df), dtype=np.int64),
        "image_id": df["image_id"].astype(str).to_numpy(),
        "identity": df["identity"].astype(np.int64).to_numpy(),
        "crop_path": [f"{CROPS}/{Path(p).name}" for p in df["crop_path"]],
        "source": "dataset",
    })
    for c in ("box_x", "box_y", "box_w", "box_h"):
        table[c] = df[c].astype(np.int32).to_numpy() if c in df else np.int32(0)
    for a in ATTRIBUTE_NAMES:
        table[a] = df[a].astype(np.int8).to_numpy()
    return table


def embeddings_arrow(table: pd.DataFrame, emb: np.ndarray):
    """``embeddings.parquet`` content: row_id, image_id, identity, embedding list<float32>,
    crop_path and the 40 attributes."""
    import pyarrow as pa

    n, d = emb.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    cols = {
        "row_id": pa.array(table["row_id"].to_numpy(dtype=np.int64)),
        "image_id": pa.array(table["image_id"].astype(str).tolist()),
        "identity": pa.array(table["identity"].to_numpy(dtype=np.int64)),
        "embedding": pa.ListArray.from_arrays(offsets, values),
        "crop_path": pa.array(table["crop_path"].astype(str).tolist()),
    }
    for a in ATTRIBUTE_NAMES:
        cols[a] = pa.array(table[a].to_numpy(dtype=np.int8))
    return pa.table(cols)


def _publish(gallery: Path, rel: str, indexes: dict[str, Any], emb: np.ndarray, emb_table, meta: dict) -> dict[str, str]:
    """Write a model's version folder beside its place and rename it in (atomic for readers).
    Returns kind -> index path relative to the gallery."""
    final = gallery / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    paths: dict[str, str] = {}
    try:
        for i, (kind, index) in enumerate(indexes.items()):
            sub = "index" if i == 0 else f"index-{kind}"
            index.save(tmp / sub, {**meta, "index_kind": kind})
            paths[kind] = f"{rel}/{sub}"
        with open(tmp / "embeddings.npy", "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        atomic_write_parquet(tmp / EMBEDDINGS_TABLE, emb_table, metadata=meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths


def build_gallery_index(config: GalleryBuildConfig) -> dict[str, Any]:
    """Embed the gallery crops with every model, write the gallery folder (module docstring)
    and return its manifest. The manifest is written last, so an interrupted build leaves no
    gallery that a reader would take for complete."""
    from facerec.data.schema import load_crops
    from facerec.data.splits import assign_splits
    from facerec.eval.embed import EmbedConfig, embed_crops_with_stats
    from facerec.index import build_index
    from facerec.models import read_checkpoint_metadata
    from facerec.serve.gallery import GALLERY_FORMAT, INDEXES, MANIFEST, TABLE

    cfg = config
    t0 = time.perf_counter()
    embed_cfg = EmbedConfig(batch_size=cfg.batch_size, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu)
    from facerec.models.pretrained import resolve_checkpoint

    cfg.checkpoints = {name: resolve_checkpoint(path) for name, path in cfg.checkpoints.items()}
    ckpt_meta = {name: read_checkpoint_metadata(path) for name, path in cfg.checkpoints.items()}
    out = Path(cfg.out_dir)
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise ConfigError("out_dir", str(out), "a folder without a gallery, or overwrite=True (--overwrite)")
    crops_dir = Path(cfg.crops_dir)
    df, crops_meta = load_crops(crops_dir)
    if df.empty:
        raise DataNotFoundError(f"{crops_dir}/crops.parquet has no rows: nothing to put in the gallery")
    split_args = None
    if cfg.split == "test":
        for name, meta in ckpt_meta.items():
            check_data_version(meta, crops_meta, f"checkpoint {cfg.checkpoints[name]}")
        split_args = resolve_split_args(list(ckpt_meta.values()), cfg.split_args)
        df = assign_splits(df, **split_args)
        df = df[df["split"] == "test"].drop(columns="split")
        if df.empty:
            raise ConfigError("split", "test", f"a split with images; {split_args} leaves the test split empty")
    df = df.reset_index(drop=True)

    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    models = dict(cfg.checkpoints)
    crop_size = int(crops_meta.get("crop_size") or 218)
    for backbone in cfg.initial:
        name = f"{backbone}_initial"
        folder = out / "checkpoints" / name
        meta = save_initial_checkpoint(backbone, folder, cfg.image_size or crop_size, cfg.embedding_dim, cfg.seed,
                                       crops_meta.get("data_version"))
        print(f"initial weights of {backbone}: {meta['init']} (model_id {meta['model_id']})", flush=True)
        models[name] = str(folder)
        ckpt_meta[name] = meta

    table = gallery_table(df)
    for src, rel in zip(df["crop_path"], table["crop_path"]):
        _link_or_copy(crops_dir / src, out / rel)
    atomic_write_parquet(out / TABLE, table, metadata={"gallery_version": 1})

    entries: dict[str, Any] = {}
    for name, ckpt in models.items():
        meta = ckpt_meta[name]
        # The checkpoint's own image_size (trained at; initial models: saved with cfg.image_size).
        emb, stats = embed_crops_with_stats(df, crops_dir, ckpt, embed_cfg)
        idx_meta = {"model_id": meta["model_id"], "embedding_dim": int(emb.shape[1]),
                    "data_version": crops_meta.get("data_version"), "backbone": meta["backbone"],
                    "image_size": int(stats["image_size"]), "gallery_version": 1, "split": cfg.split}
        indexes = {}
        for kind in cfg.kinds:
            tb = time.perf_counter()
            indexes[kind] = build_index(kind, emb, table["row_id"].to_numpy(), **cfg.index_params.get(kind, {}))
            print(f"index {name}/{kind}: {len(emb)} vectors in {time.perf_counter() - tb:.2f} s", flush=True)
        rel = f"{INDEXES}/{name}/v{1:06d}"
        paths = _publish(out, rel, indexes, emb, embeddings_arrow(table, emb), idx_meta)
        entries[name] = {
            "model_id": meta["model_id"], "backbone": meta["backbone"], "embedding_dim": int(emb.shape[1]),
            "image_size": int(stats["image_size"]), "checkpoint": str(Path(ckpt).resolve()),
            "index_kind": cfg.kinds[0], "index_params": dict(cfg.index_params.get(cfg.kinds[0], {})), "path": rel,
            "extra_indexes": {k: p for k, p in paths.items() if k != cfg.kinds[0]},
            "init": meta.get("init"), "embed_seconds": round(stats["seconds"], 3),
        }
    manifest = {
        "format": GALLERY_FORMAT, "version": 1, "rows": int(len(table)), "crop_size": crop_size,
        "margin": float(crops_meta.get("margin", 0.2)), "data_version": crops_meta.get("data_version"),
        "source": str(crops_dir.resolve()), "split": cfg.split, "split_args": split_args,
        "updated_at": time.time(), "models": entries,
    }
    atomic_write_json(out / MANIFEST, manifest)
    print(f"gallery: {len(table)} crops of {table['identity'].nunique()} identities ({cfg.split}), models "
          f"{sorted(entries)}, indexes {cfg.kinds} -> {out} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return manifest


def _entry(gallery_dir: Path, name: str | None, expected_model_id: str | None) -> tuple[str, dict, dict]:
    from facerec.serve.gallery import read_manifest

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


def load_gallery_embeddings(gallery_dir: str | os.PathLike, name: str | None = None,
                            expected_model_id: str | None = None) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(table without the embedding column, (n, d) float32 embeddings, metadata) of one model
    of a gallery built by :func:`build_gallery_index`, checked against ``expected_model_id``."""
    import pyarrow.parquet as pq

    from facerec.io import read_parquet_metadata

    gallery_dir = Path(gallery_dir)
    name, entry, _ = _entry(gallery_dir, name, expected_model_id)
    path = gallery_dir / entry["path"] / EMBEDDINGS_TABLE
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found; the gallery was not built by pipelines/build_index.py or is damaged")
    meta = read_parquet_metadata(path)
    if meta.get("model_id") != entry["model_id"]:
        raise ArtifactMismatchError(f"{path}: model_id {meta.get('model_id')} but the manifest says {entry['model_id']}; rebuild")
    tab = pq.read_table(path)
    col = tab.column("embedding").combine_chunks()
    d = int(meta["embedding_dim"])
    emb = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
    if emb.shape[0] != tab.num_rows:
        raise ArtifactMismatchError(f"{path}: embeddings are not all of dimension {d}; rebuild")
    return tab.drop(["embedding"]).to_pandas(), emb, meta


def load_gallery_index(gallery_dir: str | os.PathLike, name: str | None = None, kind: str | None = None,
                       expected_model_id: str | None = None, expected_dim: int | None = None):
    """The saved index (``kind``, default the served one) of one model of a gallery, refusing
    one built from another model's embeddings or of another dimension."""
    from facerec.index import load_index

    gallery_dir = Path(gallery_dir)
    name, entry, _ = _entry(gallery_dir, name, expected_model_id)
    if expected_dim is not None and int(entry["embedding_dim"]) != int(expected_dim):
        raise ArtifactMismatchError(
            f"{gallery_dir}: model {name!r} has embedding_dim {entry['embedding_dim']} but {expected_dim} was expected")
    kind = kind or entry["index_kind"]
    if kind == entry["index_kind"]:
        rel = f"{entry['path']}/index"
    elif kind in entry.get("extra_indexes", {}):
        rel = entry["extra_indexes"][kind]
    else:
        have = [entry["index_kind"], *entry.get("extra_indexes", {})]
        raise ArtifactMismatchError(f"{gallery_dir}: model {name!r} has indexes {have}, not {kind!r}; rebuild with --kinds {kind}")
    return load_index(gallery_dir / rel, expected_model_id=entry["model_id"], expected_dim=int(entry["embedding_dim"]))
