"""``facerec cluster``: photos -> people, resumable and incremental.

Stages (one progress bar each): detect + crop on Ray Data into ``OUT/crops`` (resumed photo by photo:
a re-run or a folder with added photos crops only what is new; :mod:`facerec.data.preprocess`; every
face of a photo by default, ``--faces all``, so a group photo gives each of its people),
embed on a Ray Data actor pool the crops not yet in ``OUT/cache`` (:func:`facerec.eval.embed.embed_crops`),
the k-NN graph on Ray and the clustering (:mod:`facerec.cluster.algorithm`) -- or, when ``OUT`` already
holds people of the same model and thresholds, only the new faces assigned to them
(:mod:`facerec.cluster.incremental`) --, then the outputs (:mod:`facerec.cluster.outputs`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.cluster.outputs import PEOPLE_TABLE
from facerec.cluster.thresholds import DEFAULT_LINK_FAR, DEFAULT_MERGE_FAR, DEFAULT_SPLIT_FAR
from facerec.errors import ConfigError, DataNotFoundError

CROPS = "crops"
CACHE = "cache"
SOURCE_KEY = ".source-key"
FACES_RULES = ("all", "largest")  # PreprocessConfig.several_faces values a clustering can use


@dataclass
class ClusterRunConfig:
    data: str
    out: str
    checkpoint: str = "dlib_resnet"
    layout: str | None = None
    k: int = 15
    snn: float = 0.6
    link_far: float = DEFAULT_LINK_FAR
    merge_far: float = DEFAULT_MERGE_FAR
    split_far: float = DEFAULT_SPLIT_FAR
    min_faces: int = 2
    sheet_faces: int = 24
    index: str = "auto"
    recluster: bool = False
    batch_size: int = 64
    progress: bool = True
    faces: str = "all"  # of a photo: "all" (each its own face) or "largest" (one per photo)

    def __post_init__(self):
        if not Path(self.data).is_dir():
            raise DataNotFoundError(f"--data {self.data}: no such folder")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError("--out", self.out, "a folder (it is a file)")
        if isinstance(self.sheet_faces, bool) or not isinstance(self.sheet_faces, int) or self.sheet_faces < 1:
            raise ConfigError("--sheet-faces", self.sheet_faces, "an integer >= 1")
        if self.faces not in FACES_RULES:
            raise ConfigError("--faces", self.faces, "'all' (every face of a photo) or 'largest' (one per photo)")


def _only_faces_rule_changed(target: Path, pre_cfg) -> bool:
    """Whether ``target`` holds crops (or an unfinished run's) made with the same settings as
    ``pre_cfg`` but another ``several_faces`` rule (``--faces`` changed since the last run)."""
    import json

    from facerec.data.preprocess import PARTS_DIR

    marker = target / PARTS_DIR / "config.json"
    if not marker.is_file():
        return False
    old = dict(json.loads(marker.read_text()).get("settings") or {})
    new = json.loads(json.dumps(pre_cfg.settings()))
    rule = old.pop("several_faces", "largest"), new.pop("several_faces")
    return rule[0] != rule[1] and old == new


def _crops(cfg: ClusterRunConfig, pre_cfg, out: Path) -> Path:
    """OUT/crops, made or resumed: preprocessing keeps a record per photo, so added photos are the
    only ones cropped when the folder changed since the last run."""
    from facerec.data.crops_cache import crops_key, preprocessed
    from facerec.data.preprocess import preprocess
    from facerec.data.schema import CROPS_TABLE
    from facerec.io import atomic_write_text

    target = out / CROPS
    key = crops_key(cfg.data, pre_cfg)
    marker = target / SOURCE_KEY
    again = _only_faces_rule_changed(target, pre_cfg)
    if again:
        # Face 0 of a photo keeps its crop path and bytes under either rule, so the embeddings
        # cache and the people found stay valid: the run goes on incrementally from them.
        print(f"facerec cluster: {target} holds crops of another --faces rule; cropping again with --faces "
              f"{pre_cfg.several_faces}", flush=True)
    if again or ((target / CROPS_TABLE).is_file() and (not marker.is_file() or marker.read_text() != key)):
        preprocess(cfg.data, target, pre_cfg, overwrite=again, progress=cfg.progress)
    else:
        preprocessed(cfg.data, pre_cfg, out=target, progress=cfg.progress)
    atomic_write_text(marker, key)
    return target


def _embeddings(faces: pd.DataFrame, crops: Path, ckpt: str, model_id: str, out: Path, cfg: ClusterRunConfig
                ) -> tuple[np.ndarray, int]:
    """Embeddings of ``faces`` (row order), embedding only the crops OUT/cache lacks; (x, embedded now)."""
    from facerec.gallery.embed import embed_crops
    from facerec.io import atomic_path, atomic_write_parquet, read_parquet_metadata

    cache = out / CACHE
    emb_file, keys_file = cache / f"embeddings-{model_id[:16]}.npy", cache / f"keys-{model_id[:16]}.parquet"
    old_keys, old_x = np.array([], dtype=object), None
    if emb_file.is_file() and keys_file.is_file():
        if read_parquet_metadata(keys_file).get("model_id") == model_id:
            old_keys = pd.read_parquet(keys_file)["face"].to_numpy()
            old_x = np.load(emb_file)
            if len(old_x) != len(old_keys):
                old_keys, old_x = np.array([], dtype=object), None
    want = faces["crop_path"].to_numpy()
    have = pd.Index(old_keys).get_indexer(want)
    missing = np.flatnonzero(have < 0)
    dim = old_x.shape[1] if old_x is not None else None
    new_x = embed_crops(faces.iloc[missing].reset_index(drop=True), crops, ckpt, batch_size=cfg.batch_size,
                        progress=cfg.progress) if len(missing) else np.zeros((0, dim or 0), np.float32)
    dim = new_x.shape[1] if len(missing) else dim
    x = np.empty((len(want), dim), np.float32)
    if len(missing) < len(want):
        x[have >= 0] = old_x[have[have >= 0]]
    x[missing] = new_x
    if len(missing):
        cache.mkdir(parents=True, exist_ok=True)
        all_keys = np.concatenate([old_keys, want[missing]])
        all_x = np.concatenate([old_x, new_x]) if old_x is not None else new_x
        with atomic_path(emb_file) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, all_x)
        atomic_write_parquet(keys_file, pd.DataFrame({"face": all_keys}), metadata={"model_id": model_id})
    return x, len(missing)


def _previous(out: Path, model_id: str, thresholds: dict) -> pd.DataFrame | None:
    from facerec.io import read_parquet_metadata

    path = out / PEOPLE_TABLE
    if not path.is_file():
        return None
    meta = read_parquet_metadata(path)
    if meta.get("model_id") != model_id or meta.get("thresholds") != thresholds:
        return None  # another model or other thresholds: the old people do not carry over
    return pd.read_parquet(path)


def run_cluster(cfg: ClusterRunConfig) -> dict[str, Any]:
    from facerec.cluster.algorithm import ClusterConfig, cluster_embeddings, confidences, order_by_size
    from facerec.cluster.incremental import assign_new
    from facerec.cluster.outputs import one_line, people_table, write_outputs
    from facerec.cluster.thresholds import model_thresholds
    from facerec.data.preprocess import PreprocessConfig
    from facerec.data.schema import load_crops
    from facerec.detect import DetectorConfig, crops_detector
    from facerec.models.pretrained import check_checkpoint
    from facerec.models.reference import resolve_model
    from facerec.progress import Progress

    t0 = time.perf_counter()
    ckpt = resolve_model(check_checkpoint(cfg.checkpoint))  # the one read of its model.json
    meta = ckpt.metadata
    calibration = ckpt.calibration()
    # Faces found and aligned as the calibration's were: its thresholds hold for those distances only.
    detector = crops_detector((calibration or {}).get("data") or {})
    th = model_thresholds(ckpt, cfg.link_far, cfg.merge_far, split_far=cfg.split_far)
    ccfg = ClusterConfig(link=th.link, merge=th.merge, k=cfg.k, snn=cfg.snn, split=th.split, index=cfg.index,
                         min_faces=cfg.min_faces)
    det_fields = DetectorConfig.from_settings(detector).as_fields() if detector else {}
    pre_cfg = PreprocessConfig(input_kind=ckpt.input_kind.name, layout=cfg.layout, min_images_per_identity=1,
                               several_faces=cfg.faces, **det_fields)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    crops = _crops(cfg, pre_cfg, out)
    t_crop = time.perf_counter()
    faces, _ = load_crops(crops, several_faces_ok=True)
    if not len(faces):
        raise DataNotFoundError(f"--data {cfg.data}: no face was found in its photos (see {crops}/dropped.parquet)")
    faces = faces.reset_index(drop=True)
    x, embedded = _embeddings(faces, crops, ckpt, meta["model_id"], out, cfg)
    t_embed = time.perf_counter()
    thresholds = {"link": th.link, "merge": th.merge, "k": cfg.k, "snn": cfg.snn, "split": th.split}
    prev = None if cfg.recluster else _previous(out, meta["model_id"], thresholds)
    photos = faces["image_id"].to_numpy()
    keys = faces["crop_path"].to_numpy()
    groups = np.full(len(faces), -1, np.int64)
    if prev is not None:
        known = pd.Series(prev["cluster"].to_numpy(), index=prev["face"].to_numpy())
        at = pd.Index(known.index).get_indexer(keys)
        groups[at >= 0] = known.to_numpy()[at[at >= 0]]
    old = groups >= 0
    if prev is not None and old.any():
        mode = "incremental"
        kept_ids, dense = np.unique(groups[old], return_inverse=True)
        with Progress(int((~old).sum()), "assign new faces", "face", enabled=cfg.progress) as bar:
            if (~old).any():
                new = assign_new(x[old], dense, x[~old], ccfg, photos[old], photos[~old])
                # assign_new numbers the kept groups 0..g-1 and new ones from g: back to the kept ids
                g = len(kept_ids)
                groups[~old] = np.where(new < g, kept_ids[np.minimum(new, g - 1)], kept_ids.max() + 1 + new - g)
            bar.update(int((~old).sum()))
        stats = {}
    else:
        mode = "full"
        with Progress(len(faces), "cluster (k-NN graph)", "face", enabled=cfg.progress) as bar:
            res = cluster_embeddings(x, ccfg, photos=photos, progress=bar.update)
        groups, stats = res.groups, res.stats
    if mode == "full":
        groups = order_by_size(groups)
    conf = confidences(x, groups, th.merge)
    sizes = np.bincount(groups)
    labels = np.where(sizes[groups] >= cfg.min_faces, groups, -1)
    t_cluster = time.perf_counter()
    people = people_table(faces, groups, labels, conf, meta["model_id"])
    summary = {
        "faces": int(len(faces)), "photos": int(pd.Series(photos).nunique()), "several_faces": cfg.faces,
        "people": int(len(np.unique(labels[labels >= 0]))), "unassigned": int((labels < 0).sum()),
        "clusters": int(len(np.unique(groups))), "min_faces": cfg.min_faces, "mode": mode,
        "new_faces": int((~old).sum()) if mode == "incremental" else int(len(faces)),
        "embedded_now": int(embedded), "model": cfg.checkpoint, "model_id": meta["model_id"],
        "thresholds": thresholds, "threshold_origin": th.origin, "data": str(cfg.data), "out": str(out),
        "crops": str(crops), "cluster_stats": stats,
    }
    t_write = time.perf_counter()
    write_outputs(out, people, crops, summary | {"seconds": {}}, cfg.sheet_faces, cfg.progress)
    t_end = time.perf_counter()
    summary["seconds"] = {"crop": round(t_crop - t0, 2), "embed": round(t_embed - t_crop, 2),
                          "cluster": round(t_cluster - t_embed, 2), "write": round(t_end - t_write, 2),
                          "total": round(t_end - t0, 2)}
    from facerec.io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    print(one_line(summary), flush=True)
    return summary


def read_people(out: str | os.PathLike) -> pd.DataFrame:
    path = Path(out) / PEOPLE_TABLE
    if not path.is_file():
        raise DataNotFoundError(f"{out}: no {PEOPLE_TABLE}; run `facerec cluster --data PHOTOS --out {out}` first")
    return pd.read_parquet(path)


