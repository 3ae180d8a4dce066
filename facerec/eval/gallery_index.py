"""Build a retrieval gallery at scale for evaluation: the gallery builder of
:mod:`facerec.gallery` with its ``ray`` embedding engine (a Ray Data actor pool,
:mod:`facerec.eval.embed`), the identity-disjoint test split, and initial-weight models.

The folder is a served gallery (:mod:`facerec.gallery.format`; ``pipelines/serve.py --gallery
DIR`` serves it as is). Every ``--kinds`` index is saved in its base segment (the first is the
one serving loads); ``extra_kinds`` in the manifest lists the others. Initial-weight models
(``initial``) are saved as checkpoints under ``GALLERY/checkpoints/<name>`` (ImageNet weights
when the torch hub cache has them, else seeded random init; ``init`` in the manifest says which),
so they have a model_id and can be served.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.gallery import EMBED_ENGINES, MANIFEST, build_gallery, load_embeddings, load_saved_index
from facerec.gallery import GalleryBuildConfig as GalleryConfig
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
        from facerec.index import check_kinds
        from facerec.models import BACKBONES

        if not self.checkpoints and not self.initial:
            raise ConfigError("checkpoints/initial", "none", "at least one --checkpoint NAME=DIR or --backbone NAME --initial")
        if self.split not in SPLIT_CHOICES:
            raise ConfigError("split", self.split, f"one of {SPLIT_CHOICES}")
        check_kinds(self.kinds, self.index_params)
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


@EMBED_ENGINES.register("ray")
def embed_ray(df: pd.DataFrame, crops_dir: Path, checkpoint: str, name: str, config: GalleryConfig):
    """The gallery builder's ``ray`` engine: a Ray Data actor pool (:func:`embed_crops_with_stats`)."""
    from facerec.eval.embed import EmbedConfig, embed_crops_with_stats

    cfg = EmbedConfig(batch_size=config.batch_size, num_actors=config.num_actors, use_gpu=config.use_gpu)
    return embed_crops_with_stats(df, crops_dir, checkpoint, cfg)


def build_gallery_index(config: GalleryBuildConfig) -> dict[str, Any]:
    """Embed the gallery crops with every model on Ray Data and write the gallery folder
    (module docstring) through :func:`facerec.gallery.build_gallery`; returns its manifest."""
    from facerec.data.schema import load_crops
    from facerec.data.splits import assign_splits
    from facerec.models import read_checkpoint_metadata
    from facerec.models.pretrained import resolve_checkpoint

    cfg = config
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

    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    models = dict(cfg.checkpoints)
    model_extra: dict[str, dict[str, Any]] = {}
    crop_size = int(crops_meta.get("crop_size") or 218)
    for backbone in cfg.initial:
        name = f"{backbone}_initial"
        folder = out / "checkpoints" / name
        meta = save_initial_checkpoint(backbone, folder, cfg.image_size or crop_size, cfg.embedding_dim, cfg.seed,
                                       crops_meta.get("data_version"))
        print(f"initial weights of {backbone}: {meta['init']} (model_id {meta['model_id']})", flush=True)
        models[name] = str(folder)
        model_extra[name] = {"init": meta.get("init")}
    build = GalleryConfig(crops_dir=str(crops_dir), out_dir=str(out), checkpoints=models, kinds=list(cfg.kinds),
                          index_params={k: dict(v) for k, v in cfg.index_params.items()}, engine="ray",
                          batch_size=cfg.batch_size, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu, link_crops=True)
    return build_gallery(build, table=df, extra={"split": cfg.split, "split_args": split_args},
                         model_extra=model_extra)


def load_gallery_embeddings(gallery_dir: str | os.PathLike, name: str | None = None,
                            expected_model_id: str | None = None) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(live rows table, (n, d) float32 embeddings, metadata) of one model of a gallery, checked
    against ``expected_model_id`` (:func:`facerec.gallery.load_embeddings`)."""
    return load_embeddings(gallery_dir, name, expected_model_id)


def load_gallery_index(gallery_dir: str | os.PathLike, name: str | None = None, kind: str | None = None,
                       expected_model_id: str | None = None, expected_dim: int | None = None):
    """The saved index (``kind``, default the served one) of one model of a gallery, refusing
    one built from another model's embeddings or of another dimension."""
    return load_saved_index(gallery_dir, name, kind, expected_model_id, expected_dim)
