"""A model's verification calibration, stored beside its checkpoint: the distance thresholds at
which "same person" holds at each calibrated false accept rate, with the data they came from.

Written by ``facerec calibrate`` (:mod:`facerec.eval.calibrate`) into ``measured.json`` under
``calibration`` (:func:`facerec.models.pretrained.record_measurement`: never into ``model.json``,
whose weights are the model's identity), read by the server (:func:`read_calibration`). Torch-free:
a Serve replica on ONNX Runtime reads it.

A registered pretrained model may ship a calibration as package data (``calibrations/<name>.json``,
e.g. dlib_resnet's on lfw-sample, with its provenance), so verification works on a fresh install:
:func:`read_calibration` falls back on it when nothing was measured beside the checkpoint, and only
for the same weights, input kind and detector; a local ``facerec calibrate`` overrides it. Each
calibration read carries ``origin``: ``"local"`` or ``"shipped"``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.io import read_json_object

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

KEY = "calibration"
FOLDER = "calibration"  # the ROC PNG and the tables, beside model.json
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent / "calibrations"  # package data: <pretrained name>.json
DEFAULT_FAR = 1e-3  # what a calibration without a default_far decides at
FAR_RTOL = 1e-9  # a requested FAR matches a calibrated one within this relative tolerance


def store_calibration(checkpoint_dir: str | os.PathLike, calibration: dict[str, Any]) -> list[str]:
    """Store ``calibration`` beside the checkpoint (atomically), and beside every cached pretrained
    checkpoint with the same weights, so the folder that is served has it. Returns the folders."""
    from facerec.models.pretrained import record_for_same_weights

    return record_for_same_weights(checkpoint_dir, KEY, calibration)


def read_calibration(checkpoint_dir: "str | os.PathLike | ModelRef", meta: dict[str, Any] | None = None,
                     detector: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The calibration stored beside ``checkpoint_dir``, or None for an uncalibrated model.

    ``checkpoint_dir``: a :class:`facerec.models.reference.ModelRef` (``meta`` then defaults to
    its metadata; :meth:`ModelRef.calibration` calls this), or a checkpoint folder whose
    ``model.json`` is ``meta`` (read here when not given).

    A calibration measured on other weights (another ``model_id``), on another input kind than
    the checkpoint's, or -- when ``detector`` (settings of ``facerec.detect.DetectorConfig``) is
    given -- on faces of another detector raises :class:`ArtifactMismatchError`: its thresholds
    would be meaningless (a detector's boxes change the aligned faces, hence the distances)."""
    from facerec.data.inputs import kind_of
    from facerec.models.pretrained import MEASURED_FILE
    from facerec.models.reference import ModelRef, resolve_model

    if meta is None or isinstance(checkpoint_dir, ModelRef):
        ref = resolve_model(checkpoint_dir)
        meta = ref.metadata if meta is None else meta
        if isinstance(checkpoint_dir, ModelRef) or ref.pretrained == checkpoint_dir:  # a pretrained name: its folder
            checkpoint_dir = ref.location
    path = Path(checkpoint_dir) / MEASURED_FILE
    cal = read_json_object(path, fix="delete it and re-run `facerec calibrate`").get(KEY) if path.is_file() else None
    if not cal:
        return shipped_calibration(meta, detector)
    fix = f"re-run `facerec calibrate --model {checkpoint_dir} ...` for these weights"
    if cal.get("model_id") != meta.get("model_id"):
        raise ArtifactMismatchError(f"{path}: the calibration was measured on model_id {cal.get('model_id')} but the "
                                    f"checkpoint is {meta.get('model_id')}; {fix}")
    if cal.get("input_kind") != kind_of(meta).name:
        raise ArtifactMismatchError(f"{path}: the calibration was measured on {cal.get('input_kind')} inputs but the "
                                    f"model takes {kind_of(meta).name}; {fix}")
    if detector is not None:
        from facerec.detect import check_same_detector, crops_detector

        d = dict(detector)
        check_same_detector(crops_detector(cal.get("data") or {}), d, f"the calibration in {path}",
                            f"calibrate with the served detector: `facerec calibrate --model {checkpoint_dir} --lfw LFW_DIR "
                            f"--detector {d.get('detector')} --min-confidence {d.get('min_confidence')} --min-face "
                            f"{d.get('min_face')} --scale-step {d.get('scale_step')}`, then restart")
    if not thresholds(cal):
        return None  # measured, but no FAR was resolvable: nothing to decide with
    return {**cal, "origin": "local"}


def shipped_path(meta: dict[str, Any]) -> Path | None:
    """The package-data calibration of the pretrained model ``meta`` names, if one ships."""
    name = meta.get("pretrained")
    if not isinstance(name, str) or not name.isidentifier():
        return None
    path = SHIPPED / f"{name}.json"
    return path if path.is_file() else None


def shipped_calibration(meta: dict[str, Any], detector: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The calibration shipped for the pretrained model of ``meta`` when it was measured on these
    weights (``model_id``), this input kind and -- when ``detector`` is given -- this detector's
    faces; None otherwise. Unlike a local calibration, a mismatch is no error: the user asked for
    nothing, so the model is served as uncalibrated (``facerec calibrate`` measures it)."""
    from facerec.data.inputs import kind_of

    path = shipped_path(meta)
    if path is None:
        return None
    cal = read_json_object(path, fix="the package data is damaged: reinstall facerec").get(KEY)
    if not cal or cal.get("model_id") != meta.get("model_id") or cal.get("input_kind") != kind_of(meta).name:
        return None
    if detector is not None:
        from facerec.detect import crops_detector

        if dict(crops_detector(cal.get("data") or {})) != dict(detector):  # check_same_detector's rule
            return None
    if not thresholds(cal):
        return None
    return {**cal, "origin": "shipped"}


def _resolvable(calibration: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [p for p in (calibration or {}).get("operating_points", [])
            if p.get("resolvable") and p.get("threshold") is not None]


def thresholds(calibration: dict[str, Any] | None) -> dict[float, float]:
    """{far: distance threshold} of the resolvable operating points ("same" iff distance <= it);
    {} for an uncalibrated model (None)."""
    return {float(p["far"]): float(p["threshold"]) for p in _resolvable(calibration)}


def default_far(calibration: dict[str, Any] | None) -> float:
    """The FAR a model decides at when none is asked for."""
    return float((calibration or {}).get("default_far") or DEFAULT_FAR)


def operating_point(calibration: dict[str, Any] | None, far: float | None = None) -> dict[str, Any]:
    """The resolvable operating point at ``far`` (default: the calibration's default FAR), a
    stored calibration's or its :func:`summary`'s; ConfigError naming the calibrated FARs for any
    other value (none for an uncalibrated model)."""
    far = default_far(calibration) if far is None else float(far)
    points = _resolvable(calibration)
    for p in points:
        # Relative: FARs are spaced by decades, and a FAR that went through JSON or a form field
        # must still find its point.
        if math.isclose(float(p["far"]), far, rel_tol=FAR_RTOL):
            return p
    raise ConfigError("far", far, f"one of the calibrated false accept rates "
                                  f"{sorted((float(p['far']) for p in points), reverse=True)}")


def threshold_for(calibration: dict[str, Any] | None, far: float | None = None) -> tuple[float, float]:
    """(far, threshold) of :func:`operating_point`."""
    p = operating_point(calibration, far)
    return float(p["far"]), float(p["threshold"])


def summary(calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """What /v1/models shows: thresholds, cross-validated TAR, EER and where they come from."""
    if calibration is None:
        return None
    data = calibration.get("data") or {}
    points = []
    for p in calibration.get("operating_points", []):
        points.append({k: p.get(k) for k in ("far", "resolvable", "threshold", "tar_mean", "tar_std", "far_mean",
                                             "tar_pooled", "far_pooled", "note")})
    eer = calibration.get("eer") or {}
    return {
        # "shipped": package data measured by facerec's authors (see "provenance"); "local": facerec calibrate here
        "origin": calibration.get("origin", "local"),
        "provenance": calibration.get("provenance"),
        "default_far": calibration.get("default_far"),
        "fars": sorted(thresholds(calibration), reverse=True),
        "operating_points": points,
        "eer": eer.get("mean"),
        "eer_std": eer.get("std"),
        "accuracy": (calibration.get("accuracy") or {}).get("mean"),
        "data": {k: data.get(k) for k in ("source", "name", "data_version", "folds")},
        "pairs": calibration.get("pairs", {}).get("total"),
        "date": calibration.get("date"),
    }
