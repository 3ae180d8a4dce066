"""LFW face verification end to end: pairs file -> face boxes -> model inputs -> embeddings -> distances ->
k-fold accuracy (Huang et al. 2007, "Labeled Faces in the Wild", UMass TR 07-49, View 2
protocol; :func:`facerec.eval.verification.kfold_verification_accuracy`).

Inputs follow the training data: the configured face detector and its gate (:mod:`facerec.detect`,
MTCNN by default; the study's two-pass Haar cascade with ``detector="haar"``), then the model's input kind
(:mod:`facerec.data.inputs`: the study's crop, or dlib's aligned chip) at its size, stored as
PNG like ``preprocess`` does. Deep-funneled LFW
images are aligned so the named person is at the centre; hence

* several faces found: the box whose centre is nearest the image centre is used;
* no face accepted: a centred square box of side :data:`CENTRE_BOX_FRACTION` of the shorter
  image side (the median Haar box on deep-funneled LFW, 117 px of 250), mapped into the detector's
  own convention, is used and counted (``centre_fallback``), never silently.

The score of a pair is the negative Euclidean distance of its two embeddings (cosine order for
unit-norm embeddings; dlib_resnet's raw descriptors keep their norm); the threshold is fit on the
other folds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facerec.errors import ConfigError, DataNotFoundError

CENTRE_BOX_FRACTION = 0.47
CROPS_TABLE = "lfw_crops.parquet"
CROP_METHODS = ("face", "nearest_centre", "centre")


@dataclass
class LFWCropConfig:
    input_kind: str = "haar_crop"
    crop_size: int | None = None  # None: the input kind's size
    margin: float = 0.2
    batch_size: int = 32
    num_workers: int | None = None
    detector: dict | None = None  # DetectorConfig settings (facerec.detect); None: the default detector

    def __post_init__(self) -> None:
        from facerec.data.inputs import input_kind

        kind = input_kind(self.input_kind)
        if self.crop_size is None:
            self.crop_size = kind.default_size
        kind.check_size(self.crop_size)
        if not isinstance(self.margin, (int, float)) or not 0 <= self.margin <= 2:
            raise ConfigError("margin", self.margin, "a fraction in [0, 2] (the crops folder's margin, e.g. 0.2)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "an integer >= 1")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 1):
            raise ConfigError("num_workers", self.num_workers, "None (every CPU) or an integer >= 1")
        self.detector = self.detector_config().settings()

    def detector_config(self):
        from facerec.detect import DetectorConfig

        if self.detector is None:
            return DetectorConfig()
        if not isinstance(self.detector, dict) or "detector" not in self.detector:
            raise ConfigError("detector", self.detector, "None or the settings of a facerec.detect.DetectorConfig")
        return DetectorConfig.from_settings(self.detector)

    def fingerprint(self) -> str:
        blob = json.dumps({"input_kind": self.input_kind, "crop_size": self.crop_size, "margin": float(self.margin),
                           "format": "png", "centre": CENTRE_BOX_FRACTION, "detector": self.detector}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The fallback face box (x, y, w, h): a centred square of CENTRE_BOX_FRACTION x the shorter side."""
    side = max(1, int(round(CENTRE_BOX_FRACTION * min(height, width))))
    return (width - side) // 2, (height - side) // 2, side, side


def choose_box(boxes: np.ndarray, height: int, width: int) -> tuple[int, str]:
    """(index of the box, method) for one deep-funneled image given its accepted face boxes, or
    (-1, "centre") when there is none (see module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 1:
        return 0, "face"
    if len(boxes) > 1:
        centres = boxes[:, :2] + boxes[:, 2:] / 2.0
        d = np.hypot(centres[:, 0] - width / 2.0, centres[:, 1] - height / 2.0)
        return int(np.argmin(d)), "nearest_centre"
    return -1, "centre"


def subject_box(found, height: int, width: int, detector: str = "haar"):
    """The box rule of deep-funneled LFW for :class:`facerec.data.cropper.FaceCropper`: the
    :func:`choose_box` of the gated detection (never drops a photo). The centre fallback is a box
    of Haar's convention (what :data:`CENTRE_BOX_FRACTION` was measured on), mapped into the
    ``detector``'s, whose boxes the later steps map on."""
    from facerec.data.cropper import BoxChoice

    i, method = choose_box(found.boxes, height, width)
    if i >= 0:
        return BoxChoice(tuple(found.boxes[i]), method, score=float(found.scores[i]))
    from facerec.detect import DETECTORS, DLIB

    box = np.asarray(centre_box(height, width), dtype=np.float64)
    if detector != "haar":  # Haar's box -> dlib's -> the detector's
        box = DETECTORS.get(detector).box_maps[DLIB].inverse(DETECTORS.get("haar").box_maps[DLIB](box))
    return BoxChoice(tuple(box.reshape(4)), method, detail=found.detail() or "no face found")


def cropper_config(cfg: LFWCropConfig):
    """The cropper settings of ``cfg``: its input kind, size and margin, its detector and gate,
    one OpenCV thread (one image per core is the parallelism)."""
    from facerec.data.preprocess import PreprocessConfig

    return PreprocessConfig(input_kind=cfg.input_kind, crop_size=cfg.crop_size, margin=cfg.margin,
                            batch_size=cfg.batch_size, num_workers=cfg.num_workers, opencv_threads=1,
                            **cfg.detector_config().as_fields())


def crop_lfw_images(lfw_root: str | os.PathLike, images: list[str], out_dir: str | os.PathLike,
                    config: LFWCropConfig | None = None) -> pd.DataFrame:
    """Detect and crop ``images`` (paths relative to ``lfw_root``) into ``out_dir/crops/`` on a Ray
    Data actor pool; crops already listed in ``out_dir/lfw_crops.parquet`` with the same
    settings are reused. Returns one row per image: image, crop_path, method, box_*."""
    from facerec.data.inputs import crop_relpath
    from facerec.io import atomic_write_parquet, read_parquet_metadata

    cfg = config or LFWCropConfig()
    root, out = Path(lfw_root), Path(out_dir)
    images = list(dict.fromkeys(images))
    missing = [p for p in images if not (root / p).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{len(missing)} of the {len(images)} images named by the pairs file are missing under {root} "
            f"(first: {root / missing[0]}); pass the LFW root that holds lfw-deepfunneled/ as --lfw"
        )
    table_path = out / CROPS_TABLE
    done = pd.DataFrame(columns=["image", "crop_path", "method", "box_x", "box_y", "box_w", "box_h"])
    if table_path.is_file() and read_parquet_metadata(table_path).get("fingerprint") == cfg.fingerprint():
        done = pd.read_parquet(table_path)
        done = done[[(out / p).is_file() for p in done["crop_path"]]]
    todo = [p for p in images if p not in set(done["image"])]
    t0 = time.perf_counter()
    if todo:
        from facerec.data.cropper import crop_images

        import functools

        rows = crop_images(todo, root, out, cropper_config(cfg),
                           box_rule=functools.partial(subject_box, detector=cfg.detector_config().name))
        bad = rows[rows["status"] != "kept"]
        if len(bad):
            first = bad.iloc[0]
            raise DataNotFoundError(f"{len(bad)} of the {len(todo)} LFW images could not be cropped (first: "
                                    f"{root / first['image_id']}: {first['detail']}); replace or remove them")
        rows["crop_path"] = [crop_relpath(i) for i in rows["image_id"]]
        new = rows.rename(columns={"image_id": "image"})[list(done.columns)]
        done = pd.concat([done, new], ignore_index=True)
        atomic_write_parquet(table_path, done, metadata={"fingerprint": cfg.fingerprint(), "root": str(root.resolve()),
                                                         "input_kind": cfg.input_kind, "crop_size": cfg.crop_size,
                                                         "margin": cfg.margin, "detector": cfg.detector})
    seconds = time.perf_counter() - t0
    result = done.set_index("image").loc[images].reset_index()
    counts = result["method"].value_counts().to_dict()
    print(f"lfw crops: {len(images)} images ({len(todo)} cropped now in {seconds:.1f} s): "
          + ", ".join(f"{m} {counts.get(m, 0)}" for m in CROP_METHODS), flush=True)
    return result


def default_crop_dir(lfw_root: str | os.PathLike, config: LFWCropConfig) -> Path:
    """``lfw-crops/<folder>-<key>`` under the cache root (``$FACEREC_CACHE``, default
    ``~/.cache/facerec``), keyed by the LFW folder and the crop settings."""
    from facerec.io import cache_root

    key = hashlib.sha256(f"{Path(lfw_root).resolve()}|{config.fingerprint()}".encode()).hexdigest()[:10]
    return cache_root() / "lfw-crops" / f"{Path(lfw_root).name}-{key}"


def read_lfw_pairs(lfw_root: str | os.PathLike, pairs_path: str | os.PathLike | None = None,
                   max_pairs_per_fold: int | None = None) -> pd.DataFrame:
    """The pairs of ``pairs_path`` (default ``lfw_root/pairs.txt``; :func:`read_pairs`), optionally
    the first n matched and n mismatched pairs of each fold."""
    from facerec.eval.verification import read_pairs

    root = Path(lfw_root)
    if not root.is_dir():
        raise DataNotFoundError(f"LFW folder {root} not found; pass the folder holding pairs.txt and lfw-deepfunneled/")
    pairs = read_pairs(pairs_path or root / "pairs.txt")
    if max_pairs_per_fold is not None:
        if not isinstance(max_pairs_per_fold, int) or max_pairs_per_fold < 1:
            raise ConfigError("max_pairs_per_fold", max_pairs_per_fold, "None or an integer >= 1")
        pairs = pairs.groupby(["fold", "same"], sort=False).head(max_pairs_per_fold).reset_index(drop=True)
    return pairs


def lfw_embeddings(lfw_root: str | os.PathLike, model: Any, pairs: pd.DataFrame,
                   crop_dir: str | os.PathLike | None = None, crop_config: LFWCropConfig | None = None,
                   batch_size: int = 64, num_actors: int | None = None, use_gpu: bool | None = None
                   ) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """Every image the pairs name, cropped as ``model`` needs (:func:`crop_lfw_images`) and
    embedded (:func:`facerec.gallery.embed.embed_crops_with_stats`): (crops table with its ``image``
    column, embeddings row i = crops row i, embedding stats)."""
    from facerec.gallery.embed import EmbedConfig, embed_crops_with_stats

    root = Path(lfw_root)
    if crop_config is None:
        from facerec.gallery.embed import resolve_model_source

        source = resolve_model_source(model)  # the model decides its input kind and size
        crop_config = LFWCropConfig(input_kind=source.input_kind,
                                    crop_size=source.image_size if source.input_kind != "haar_crop" else None)
    cfg = crop_config
    crop_dir = Path(crop_dir) if crop_dir else default_crop_dir(root, cfg)
    images = list(dict.fromkeys(pairs["path1"].tolist() + pairs["path2"].tolist()))
    crops = crop_lfw_images(root, images, crop_dir, cfg)
    emb, stats = embed_crops_with_stats(crops, crop_dir, model, EmbedConfig(batch_size=batch_size, num_actors=num_actors,
                                                                           use_gpu=use_gpu))
    return crops, emb, {**stats, "detector": cfg.detector}


def lfw_verification(lfw_root: str | os.PathLike, model: Any, pairs_path: str | os.PathLike | None = None,
                     crop_dir: str | os.PathLike | None = None, crop_config: LFWCropConfig | None = None,
                     batch_size: int = 64, num_actors: int | None = None, use_gpu: bool | None = None,
                     max_pairs_per_fold: int | None = None) -> dict[str, Any]:
    """Verification accuracy of ``model`` (checkpoint folder or Embedder) on LFW pairs.

    ``pairs_path`` defaults to ``lfw_root/pairs.txt`` (any number of folds).
    ``max_pairs_per_fold`` keeps the first n matched and n mismatched pairs of each fold (for
    quick checks; None = all). Returns {mean, std, per_fold (DataFrame: fold, threshold,
    accuracy, n_pairs), folds, pairs, images, crop_methods {method: n}, centre_fallback,
    model_id, seconds}.
    """
    from facerec.eval.verification import kfold_verification_accuracy

    t0 = time.perf_counter()
    pairs = read_lfw_pairs(lfw_root, pairs_path, max_pairs_per_fold)
    crops, emb, stats = lfw_embeddings(lfw_root, model, pairs, crop_dir, crop_config, batch_size, num_actors, use_gpu)
    pos = {img: i for i, img in enumerate(crops["image"])}
    i1 = pairs["path1"].map(pos).to_numpy()
    i2 = pairs["path2"].map(pos).to_numpy()
    # Negative Euclidean distance of the embeddings as the model gives them: for unit-norm
    # embeddings the same order as cosine similarity; for dlib_resnet's raw descriptors it keeps
    # the norm, which verifies better (lfw-sample: 98.28 % against 97.39 % after normalising).
    scores = -np.linalg.norm(emb[i1].astype(np.float64) - emb[i2].astype(np.float64), axis=1)
    mean, std, per_fold = kfold_verification_accuracy(scores, pairs["same"].to_numpy(), pairs["fold"].to_numpy())
    methods = crops["method"].value_counts().to_dict()
    out = {
        "mean": mean, "std": std, "per_fold": per_fold, "folds": int(pairs["fold"].nunique()), "pairs": int(len(pairs)),
        "images": int(len(crops)), "crop_methods": {m: int(methods.get(m, 0)) for m in CROP_METHODS},
        "centre_fallback": int(methods.get("centre", 0)), "model_id": stats.get("model_id"),
        "detector": stats["detector"],
        "seconds": time.perf_counter() - t0, "scores": scores, "same": pairs["same"].to_numpy(),
    }
    print(f"lfw: accuracy {mean * 100:.2f} +- {std * 100:.2f} % over {out['folds']} folds ({out['pairs']} pairs, "
          f"{out['centre_fallback']} centre-crop fallbacks of {out['images']} images), model {out['model_id']}", flush=True)
    return out
