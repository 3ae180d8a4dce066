"""Identity-disjoint splits and the study's retrieval protocol (query / gallery)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from facerec.errors import ArtifactMismatchError, ConfigError

SPLITS = ("train", "val", "test")
_OFFICIAL = {0: "train", 1: "val", 2: "test"}


def assign_splits(df: pd.DataFrame, mode: str = "random", val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column ("train" / "val" / "test") so that no identity is in two splits.

    ``mode="random"``: identities are shuffled with ``seed`` and cut by the fractions (default
    70/10/20 of identities; ``val_fraction=0`` gives the study's 80/20 after moving val to train).
    ``mode="official"``: CelebA's ``list_eval_partition.txt`` (0/1/2), which is identity-disjoint;
    an identity that the file puts in two partitions is an error.
    """
    if "identity" not in df.columns:
        raise ConfigError("df", list(df.columns)[:5], "a table with an 'identity' column (crops.parquet)")
    if mode == "official":
        if "partition" not in df.columns or (df["partition"] < 0).any():
            n = int((df.get("partition", pd.Series([-1])) < 0).sum())
            raise ConfigError("split mode", mode, f"a partition for every image; {n} images have none "
                              "(no list_eval_partition.txt?) — use mode='random'")
        per_id = df.groupby("identity")["partition"].nunique()
        if (per_id > 1).any():
            ident = int(per_id[per_id > 1].index[0])
            raise ConfigError("split mode", mode, f"an identity-disjoint partition file; identity {ident} is in several "
                              "partitions — use mode='random'")
        out = df.copy()
        out["split"] = out["partition"].map(_OFFICIAL)
        return out
    if mode != "random":
        raise ConfigError("split mode", mode, "'random' or 'official'")
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= v < 1:
            raise ConfigError(name, v, "a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError("val_fraction + test_fraction", val_fraction + test_fraction, "less than 1 (training needs identities)")
    ids = np.sort(df["identity"].unique())
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n = len(ids)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise ConfigError("identities", n, f"enough identities for the split fractions ({val_fraction}, {test_fraction})")
    label = {int(i): "test" for i in ids[:n_test]}
    label.update({int(i): "val" for i in ids[n_test:n_test + n_val]})
    label.update({int(i): "train" for i in ids[n_test + n_val:]})
    out = df.copy()
    out["split"] = out["identity"].map(label)
    return out


def query_gallery(df: pd.DataFrame, seed: int = 0, distractors: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's retrieval protocol: for each identity one (seeded) query image, the rest of its
    images into the gallery; ``distractors`` (images of other identities, none shared with the
    queries) optionally extend the gallery. Identities with a single image cannot be queried and
    go to the gallery only."""
    if len(df) == 0:
        raise ConfigError("df", "empty table", "at least one identity with two images")
    # Rows are picked by index label below: a table concatenated without ignore_index has repeated
    # labels, which made one pick select (and drop) several rows. Positional labels avoid that.
    df = df.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    counts = df["identity"].map(df["identity"].value_counts())
    eligible = df[counts >= 2]
    keys = rng.random(len(eligible))
    order = eligible.assign(_key=keys).sort_values(["identity", "_key"])
    q_index = order.groupby("identity", sort=True).head(1).index
    query = df.loc[q_index].sort_values("identity").reset_index(drop=True)
    gallery = df.drop(index=q_index)
    if distractors is not None and len(distractors):
        shared = set(distractors["identity"]) & set(query["identity"])
        if shared:
            raise ConfigError("distractors", f"{len(shared)} shared identities (e.g. {sorted(shared)[:3]})",
                              "images of identities that are not queried")
        gallery = pd.concat([gallery, distractors], ignore_index=True)
    return query, gallery.reset_index(drop=True)


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
