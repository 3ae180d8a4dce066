"""The build-index stage: a gallery built at scale for evaluation and serving -- the gallery
builder (:mod:`facerec.gallery.build`) on its ``ray`` embedding engine (a Ray Data actor pool,
:mod:`facerec.gallery.embed`), the identity-disjoint test split, and initial-weight models.

The folder is a served gallery (:mod:`facerec.gallery.format`; ``pipelines/serve.py --gallery
DIR`` serves it as is). Every ``--kinds`` index is saved in its base segment (the first is the
one serving loads); ``extra_kinds`` in the manifest lists the others. Initial-weight models
(``initial``) are saved as checkpoints under ``GALLERY/checkpoints/<name>`` (ImageNet weights
when the torch hub cache has them, else seeded random init; ``init`` in the manifest says which),
so they have a model_id and can be served.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facerec.errors import ConfigError, DataNotFoundError
from facerec.gallery.build import GalleryBuildConfig, build_gallery
from facerec.gallery.embed import EmbeddingOptions
from facerec.gallery.format import MANIFEST

SPLIT_CHOICES = ("all", "test")
INITIAL_EMBEDDING_DIM = 128


@dataclass
class BuildIndexConfig(EmbeddingOptions):
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
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()  # the embedding options
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


def build_gallery_index(config: BuildIndexConfig) -> dict[str, Any]:
    """Embed the gallery crops with every model on Ray Data and write the gallery folder
    (module docstring) through :func:`facerec.gallery.build_gallery`; returns its manifest."""
    from facerec.data.schema import load_crops
    from facerec.data.splits import assign_splits, check_data_version, resolve_split_args
    from facerec.models.checkpoint import save_initial_checkpoint
    from facerec.models.reference import resolve_model

    cfg = config
    refs = {name: resolve_model(path) for name, path in cfg.checkpoints.items()}  # model.json read here, once
    cfg.checkpoints = {name: str(ref) for name, ref in refs.items()}
    ckpt_meta = {name: ref.metadata for name, ref in refs.items()}
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
    models: dict[str, Any] = dict(refs)
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
    build = GalleryBuildConfig(crops_dir=str(crops_dir), out_dir=str(out), checkpoints=models, kinds=list(cfg.kinds),
                               index_params={k: dict(v) for k, v in cfg.index_params.items()}, engine="ray",
                               batch_size=cfg.batch_size, num_actors=cfg.num_actors, use_gpu=cfg.use_gpu,
                               link_crops=True)
    return build_gallery(build, table=df, extra={"split": cfg.split, "split_args": split_args},
                         model_extra=model_extra)
