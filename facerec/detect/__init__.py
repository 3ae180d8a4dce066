"""Face detectors (registry :data:`DETECTORS`), the face gate and box conventions.

- ``mtcnn`` (default): Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
  Convolutional Networks", IEEE SPL 2016, with the weights of ``facenet-pytorch`` run on ONNX Runtime
  (:mod:`facerec.detect.mtcnn`).
- ``haar``: OpenCV's frontal-face cascade (Viola & Jones, CVPR 2001) in the original study's
  two-pass scheme, unchanged, so the study's tables can be reproduced (:mod:`facerec.detect.haar`).

``DetectorConfig(name=...).build()`` gives a detector; ``detector.find_many(photos)`` the gated faces.
"""

from __future__ import annotations

from facerec.detect import haar as _haar  # noqa: F401  (registers "haar")
from facerec.detect import mtcnn as _mtcnn  # noqa: F401  (registers "mtcnn")
from facerec.detect.base import DETECTORS, DLIB, BoxMap, DetectorConfig, FaceDetector, Faces, Found

# What artifacts made before detectors were registered used: the study's Haar cascade at its defaults.
LEGACY_HAAR = {"detector": "haar", "detector_version": 1, "min_confidence": 0.0, "min_face": 24, "scale_step": 1.1,
               "detect_max_side": 640, "min_neighbors": 5}


def crops_detector(meta: dict) -> dict:
    """The detector settings an artifact's metadata records (crops, galleries, calibrations);
    artifacts older than the detector registry were made with the study's Haar cascade."""
    found = (meta or {}).get("detector")
    return dict(found) if isinstance(found, dict) else dict(LEGACY_HAAR)


def check_same_detector(made_with: dict, used_now: dict, what: str, fix: str) -> None:
    """Refuse to mix faces found by two detectors (or one with other settings): boxes, crops and
    distances of one are not those of the other. ``what`` names the artifact, ``fix`` the command
    that makes them agree."""
    from facerec.errors import ArtifactMismatchError

    if dict(made_with) != dict(used_now):
        diff = sorted(k for k in set(made_with) | set(used_now) if made_with.get(k) != used_now.get(k))
        raise ArtifactMismatchError(
            f"{what} was made with the face detector {_describe(made_with)}, but this run detects with "
            f"{_describe(used_now)} (they differ in {', '.join(diff)}); {fix}")


def _describe(settings: dict) -> str:
    keys = ("min_confidence", "min_face", "scale_step")
    return f"{settings.get('detector')} (" + ", ".join(f"{k} {settings.get(k)}" for k in keys) + ")"

__all__ = ["DETECTORS", "LEGACY_HAAR", "check_same_detector", "crops_detector", "DLIB", "BoxMap", "DetectorConfig", "FaceDetector", "Faces", "Found"]
