"""Driver-side data preparation for a training run: read the crops folder, split it
identity-disjointly, label the training identities, check the config against the split, and
build the Ray Data datasets the workers read their shards from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facerec.train.batches import mix_seed
from facerec.train.config import TrainConfig

TRAIN_COLUMNS = ["crop_path", "identity", "label", "shard"]
VAL_COLUMNS = ["crop_path", "identity", "shard"]


@dataclass
class TrainData:
    """What the driver hands to the workers (besides the config)."""

    train: pd.DataFrame          # crop_path, identity, label (0..C-1), shard (worker rank owning the identity)
    val: pd.DataFrame            # crop_path, identity, shard (worker rank that embeds the row)
    num_classes: int
    data_version: str
    crop_size: int | None
    split: dict = field(default_factory=dict)   # how assign_splits was called, recorded in checkpoints
    counts: dict = field(default_factory=dict)

    def meta(self) -> dict:
        return {"num_classes": self.num_classes, "data_version": self.data_version, "crop_size": self.crop_size,
                "split": self.split, "counts": self.counts}

    def datasets(self) -> dict:
        """``{"train", "val"}`` Ray Datasets of crop paths. Not split by Ray: each worker keeps the
        rows whose ``shard`` is its rank, so an identity never straddles two workers (P x K
        batches need all of an identity's images in one place) and no row is dropped to even
        out shards. Made with Ray Data's progress bars off: the workers that read them would
        draw one per epoch into their logs."""
        from facerec.ray_utils import ray_data

        data = ray_data()
        return {"train": data.from_pandas(self.train[TRAIN_COLUMNS]),
                "val": data.from_pandas(self.val[VAL_COLUMNS])}


def _cap_val(val: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Keep whole identities, in a seeded random order, while they fit under ``max_images``."""
    if max_images is None or len(val) <= max_images:
        return val
    ids = np.array(sorted(val["identity"].unique()))
    rng = np.random.default_rng(mix_seed(seed, 11))
    sizes = val.groupby("identity").size()
    keep, total = [], 0
    for ident in rng.permutation(ids):
        n = int(sizes[ident])
        if total + n <= max_images:
            keep.append(ident)
            total += n
    return val[val["identity"].isin(keep)]


def prepare_data(cfg: TrainConfig) -> TrainData:
    """Load ``cfg.data_dir``, split identity-disjointly (facerec.data.splits.assign_splits),
    and run :meth:`TrainConfig.check_data`. Raises before any Ray worker starts."""
    from facerec.data.schema import load_crops
    from facerec.data.splits import assign_splits

    df, meta = load_crops(cfg.data_dir)
    split_args = {"mode": cfg.split_mode, "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                  "seed": cfg.split_seed}
    df = assign_splits(df, **split_args)
    train = df[df["split"] == "train"].copy()
    val = df[df["split"] == "val"].copy()
    val = val[val.groupby("identity")["identity"].transform("size") >= 2]  # a query needs a match
    val = _cap_val(val, cfg.val_max_images, cfg.seed)
    cfg.check_data(train["identity"].to_numpy(), len(val))

    identities = np.array(sorted(train["identity"].unique()))
    label_of = {int(ident): i for i, ident in enumerate(identities)}
    train["label"] = train["identity"].map(label_of).astype(np.int64)
    # Identities go to workers round-robin in a seeded order, so shards are balanced in identities.
    order = np.random.default_rng(mix_seed(cfg.seed, 3)).permutation(len(identities))
    shard_of = {int(identities[j]): pos % cfg.num_workers for pos, j in enumerate(order)}
    train["shard"] = train["identity"].map(shard_of).astype(np.int64)
    train = train.sort_values(["label", "crop_path"]).reset_index(drop=True)
    val = val.sort_values(["identity", "crop_path"]).reset_index(drop=True)
    val["shard"] = np.arange(len(val), dtype=np.int64) % cfg.num_workers

    counts = {"train_images": int(len(train)), "train_identities": int(len(identities)),
              "val_images": int(len(val)), "val_identities": int(val["identity"].nunique()),
              "test_images": int((df["split"] == "test").sum())}
    return TrainData(
        train=train[TRAIN_COLUMNS].astype({"identity": np.int64}),
        val=val[VAL_COLUMNS].astype({"identity": np.int64}),
        num_classes=int(len(identities)),
        data_version=str(meta.get("data_version", "unknown")),
        crop_size=meta.get("crop_size"),
        split=split_args,
        counts=counts,
    )


def resolve_data(data: str | None, crops: str | None = None, progress: bool = True,
                 input_kind: str = "haar_crop", layout: str | None = None) -> Path:
    """A preprocessed folder for ``--data``: used as is if it holds crops.parquet, otherwise a
    photo folder read as ``layout`` (:mod:`facerec.data.layouts`; None: detected) preprocessed
    into ``input_kind`` inputs (the backbones' kind) by
    :func:`facerec.data.crops_cache.preprocessed` -- into ``crops`` when given, else the shared
    cache, where serving finds the same photos' crops. No ``data``: the embedded synthetic set
    (``facerec.data.synth.ensure_synthetic``)."""
    from facerec.data.schema import CROPS_TABLE

    if data is None:
        from facerec.data.synth import ensure_synthetic

        source = Path(ensure_synthetic())
    else:
        source = Path(data)
        if (source / CROPS_TABLE).is_file():
            return source
    from facerec.data.crops_cache import preprocessed
    from facerec.data.preprocess import PreprocessConfig

    return preprocessed(source, PreprocessConfig(input_kind=input_kind, layout=layout), out=crops, progress=progress)
