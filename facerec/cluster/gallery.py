"""People for a gallery of an unlabelled photo folder (``facerec serve --data PHOTOS``).

The gallery build embeds the faces once; :func:`gallery_people` clusters those embeddings (the
library of :mod:`facerec.cluster.algorithm`, thresholds from the model's calibration) and gives every
face its person as its gallery identity: a cluster's id, and a one-off face a singleton id of its
own (the gallery serves every face, so ``min_faces`` hides nobody here). The people are kept in a
``people.parquet`` beside the gallery (its path keyed like the gallery): a rebuild of the same
photos gives every face it already knew the same person id, and only new faces are assigned
(:mod:`facerec.cluster.incremental`), so ids stay stable across restarts and rebuilds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.cluster.thresholds import DEFAULT_LINK_FAR, DEFAULT_MERGE_FAR, Thresholds
from facerec.errors import ConfigError


def _clustering_model(checkpoints: dict[str, str], thresholds: Thresholds | None, link_far: float,
                      merge_far: float) -> tuple[str, Thresholds]:
    """The served model whose embeddings are clustered: the first (by name) with a 1:1 calibration,
    since "same person" must mean what the calibration measured."""
    from facerec.cluster.thresholds import model_thresholds

    names = sorted(checkpoints)
    if thresholds is not None:
        return names[0], thresholds
    for name in names:
        try:
            return name, model_thresholds(checkpoints[name], link_far, merge_far)
        except ConfigError:
            continue
    raise ConfigError("--checkpoint", names, "a calibrated model to cluster an unlabelled photo folder into people "
                      "(`facerec calibrate --model NAME --lfw LFW_DIR`; the pretrained dlib_resnet ships one)")


def _previous(path: Path, model_id: str, settings: dict[str, Any]) -> pd.DataFrame | None:
    from facerec.io import read_parquet_metadata

    if not path.is_file():
        return None
    meta = read_parquet_metadata(path)
    if meta.get("model_id") != model_id or meta.get("thresholds") != settings:
        return None  # another model or other thresholds: those people do not carry over
    return pd.read_parquet(path)


def gallery_people(df: pd.DataFrame, embeddings: dict[str, np.ndarray], models: dict[str, dict[str, Any]],
                   checkpoints: dict[str, str], people_path: str | os.PathLike, thresholds: Thresholds | None = None,
                   link_far: float = DEFAULT_LINK_FAR, merge_far: float = DEFAULT_MERGE_FAR, k: int = 15,
                   snn: float = 0.6) -> tuple[np.ndarray, dict[str, Any]]:
    """(identity per row of ``df``, manifest fields) for a gallery whose faces name nobody.

    ``df``: the crops rows being built (``crop_path`` names a face, ``image_id`` its photo: two faces
    of one photo are never one person); ``embeddings``/``models``: what the build computed per
    served model; ``people_path``: where the people are kept between builds; ``thresholds``: link
    and merge distances (default: from the first calibrated model's calibration)."""
    from facerec.cluster.algorithm import ClusterConfig, cluster_embeddings, confidences, order_by_size
    from facerec.cluster.incremental import assign_new
    from facerec.cluster.outputs import people_table
    from facerec.io import atomic_write_parquet

    name, th = _clustering_model(checkpoints, thresholds, link_far, merge_far)
    model_id = models[name]["model_id"]
    x = np.asarray(embeddings[name], dtype=np.float32)
    config = ClusterConfig(link=th.link, merge=th.merge, k=k, snn=snn, split=th.split, min_faces=1)
    settings = {"link": float(th.link), "merge": float(th.merge), "k": k, "snn": snn,
                "split": None if th.split is None else float(th.split)}
    keys, photos = df["crop_path"].astype(str).to_numpy(), df["image_id"].astype(str).to_numpy()
    people_path = Path(people_path)
    prev = _previous(people_path, model_id, settings)
    groups = np.full(len(df), -1, np.int64)
    if prev is not None:
        known = pd.Series(prev["cluster"].to_numpy(), index=prev["face"].astype(str).to_numpy())
        at = pd.Index(known.index).get_indexer(keys)
        groups[at >= 0] = known.to_numpy()[at[at >= 0]]
    old = groups >= 0
    if old.any():
        mode = "incremental"
        if (~old).any():
            kept, dense = np.unique(groups[old], return_inverse=True)
            new = assign_new(x[old], dense, x[~old], config, photos[old], photos[~old])
            # assign_new numbers the kept people 0..g-1 and new ones from g; a new person gets an id
            # after every id ever given (the file's), so a person gone from these photos is not reused
            g, top = len(kept), int(prev["cluster"].max())
            groups[~old] = np.where(new < g, kept[np.minimum(new, g - 1)], top + 1 + new - g)
    else:
        mode = "full"
        groups = order_by_size(cluster_embeddings(x, config, photos=photos).groups)
    conf = confidences(x, groups, th.merge)
    boxes = {c: 0 for c in ("box_x", "box_y", "box_w", "box_h") if c not in df}
    people = people_table(df.assign(**boxes) if boxes else df, groups, groups, conf, model_id)
    # only the faces of this build: a face erased from the folder leaves the people file too
    atomic_write_parquet(people_path, people, metadata={"model_id": model_id, "thresholds": settings})
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    print(f"people: {len(df)} faces -> {len(sizes)} people ({int((sizes == 1).sum())} seen once), {mode} clustering "
          f"on {name}'s embeddings, thresholds link {th.link:.3f} / merge {th.merge:.3f} ({th.origin})", flush=True)
    fields = {
        # the identities are clusters, not labels: the open-set threshold must not be measured on them
        "labelled": False,
        "names": {},
        "people": {"model": name, "model_id": model_id, "mode": mode, "people": int(len(sizes)),
                   "singletons": int((sizes == 1).sum()), "thresholds": settings, "origin": th.origin,
                   "file": str(people_path)},
    }
    return groups, fields
