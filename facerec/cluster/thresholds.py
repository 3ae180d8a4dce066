"""The clustering's thresholds from the model's 1:1 calibration (``facerec calibrate``, or the one a
pretrained model ships): distances at a per-pair false accept rate, read off the calibration's
impostor curve (:func:`facerec.gallery.openset.one_to_one_threshold`), so "same person" in a
cluster means what it means in a verification, for the model that made the embeddings.

Three rates: ``link_far`` for the links between single faces (backed by shared neighbours),
``split_far`` for the average linkage above which a linked group is split unless many links hold it,
and ``merge_far`` for merging groups by their average pairwise distance; defaults chosen by
``benchmarks/bench_cluster.py`` on celeba-sample and lfw-sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from facerec.errors import ConfigError

DEFAULT_LINK_FAR = 1e-3
DEFAULT_MERGE_FAR = 1e-4
DEFAULT_SPLIT_FAR = 5e-4


@dataclass(frozen=True)
class Thresholds:
    link: float
    merge: float
    origin: str  # where they came from: "calibration (shipped|local) at FAR ..." or "given"
    split: float | None = None  # None: linked groups are not split

    def __post_init__(self):
        for name in ("link", "merge") + (("split",) if self.split is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(name, v, "a positive L2 distance (e.g. 0.54 for dlib_resnet)")


def _far(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
        raise ConfigError(name, value, "a per-pair false accept rate strictly between 0 and 1, e.g. 0.001")
    return float(value)


def from_calibration(calibration: dict[str, Any] | None, link_far: float = DEFAULT_LINK_FAR,
                     merge_far: float = DEFAULT_MERGE_FAR, model: str = "the model",
                     split_far: float = DEFAULT_SPLIT_FAR) -> Thresholds:
    """Thresholds at ``link_far`` / ``split_far`` / ``merge_far`` from a calibration
    (:func:`read_calibration`'s dict)."""
    from facerec.gallery.openset import impostors_of, one_to_one_threshold

    link_far, merge_far = _far(link_far, "link_far"), _far(merge_far, "merge_far")
    split_far = _far(split_far, "split_far")
    impostors = impostors_of(calibration)
    if impostors is None:
        raise ConfigError("checkpoint", model, "a calibrated model: run `facerec calibrate --model "
                          f"{model} --lfw LFW_DIR` first, or give --threshold DISTANCE")
    link, merge = one_to_one_threshold(impostors, link_far), one_to_one_threshold(impostors, merge_far)
    split = one_to_one_threshold(impostors, split_far)
    return Thresholds(link=float(link), merge=float(merge), split=float(split),
                      origin=f"calibration ({calibration.get('origin', 'local')}) of {model} at FAR "
                             f"{link_far:g} (link) / {split_far:g} (split) / {merge_far:g} (merge)")


def model_thresholds(checkpoint: str | os.PathLike, link_far: float = DEFAULT_LINK_FAR,
                     merge_far: float = DEFAULT_MERGE_FAR, detector: dict[str, Any] | None = None,
                     split_far: float = DEFAULT_SPLIT_FAR) -> Thresholds:
    """:func:`from_calibration` of the calibration stored beside ``checkpoint`` (or shipped with it)."""
    from facerec.models.reference import resolve_model

    return from_calibration(resolve_model(checkpoint).calibration(detector), link_far, merge_far, str(checkpoint),
                            split_far)
