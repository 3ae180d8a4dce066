"""Same person or not, as the server answers it.

``/v1/verify`` is a 1:1 question: "same person" iff the Euclidean distance of the two embeddings
is at most the model's calibrated threshold at the requested false accept rate
(``calibration`` of its Embedder's info, :mod:`facerec.eval.calibration`); without a calibration
it answers 409. A ``/v1/search`` hit answers a 1:N question: its ``same_person`` uses the open-set
threshold of the gallery searched at the server's target FPIR (:class:`Decision`, measured by the
Retriever, :mod:`facerec.gallery.openset`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from facerec.errors import ConfigError
from facerec.models.calibration import default_far, operating_point, threshold_for, thresholds

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef


class VerifyJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image1_base64: str = Field(description="The first photo (JPEG/PNG/...), base64; a data: URL prefix is accepted")
    image2_base64: str = Field(description="The second photo, base64")
    far: float | None = Field(None, strict=True, description="False accept rate to decide at: one of the model's calibrated "
                                                "rates (GET /v1/models), default its default_far (0.001)")
    model: str | None = Field(None, description="Served model name; default: the configured one")


class VerifyFace(BaseModel):
    x: int
    y: int
    w: int
    h: int


class VerifyResponse(BaseModel):
    same_person: bool = Field(description="distance <= threshold")
    distance: float = Field(description="Euclidean distance between the two faces' embeddings")
    threshold: float = Field(description="The model's calibrated distance threshold at `far`")
    far: float = Field(description="False accept rate the threshold was fitted at (on held-out people: see "
                                   "GET /v1/models, calibration)")
    model: str
    model_id: str
    boxes: list[VerifyFace] = Field(description="The face used in each photo (the largest), pixels")


class Decision(BaseModel):
    """How a search decided "same person": open-set, for the gallery searched."""

    target_fpir: float = Field(description="False positive identification rate aimed at: the share of searches by "
                                           "someone not in the gallery that show any match (0.01: about 1 in 100)")
    threshold: float | None = Field(description="Distance threshold: a hit is the same person iff distance <= it; "
                                                "null when no threshold could be chosen (method none)")
    gallery_size: int = Field(description="N: the live faces of the gallery the threshold was chosen for")
    gallery_version: int = Field(description="The gallery version it was measured on (after a change it is measured "
                                             "again in the background; searches meanwhile use the previous one)")
    method: Literal["gallery", "calibration", "none"] = Field(
        description="gallery: measured with the gallery's own faces searched against the other identities; "
                    "calibration: from the model's 1:1 calibration for N faces (a gallery too small, of one identity, "
                    "or unlabelled); none: neither is available")
    nonmated_searches: int = Field(description="Searches by people not in the gallery the threshold rests on (method gallery)")
    measured_fpir: float | None = Field(None, description="FPIR at the threshold on those searches")


def decision_of(open_set: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Decision body of a Retriever's open-set answer (None: the Retriever has none)."""
    if not open_set:
        return None
    return {k: open_set.get(k) for k in Decision.model_fields}


def pick(info: dict[str, Any] | None, far: float | None) -> tuple[float, float] | str:
    """(far, threshold) of a served model (its Embedder's info) for a requested FAR (None: the
    default), or why not: ``"uncalibrated"`` (no calibration, or none at its default FAR) or a
    message naming the calibrated FARs."""
    cal = (info or {}).get("calibration")
    try:
        return threshold_for(cal, far)
    except ConfigError:
        table = thresholds(cal)
        if far is None or not table:
            return "uncalibrated"
        return f"far={far!r} is not a calibrated false accept rate of this model: choose one of {sorted(table, reverse=True)}"


def mark_hits(faces: list[dict[str, Any]], threshold: float | None) -> None:
    """Add ``same_person`` (distance <= ``threshold``) to every hit and ``match`` (any hit
    passes) to every face, in place; both null without a threshold."""
    for face in faces:
        if threshold is None:
            for h in face["results"]:
                h["same_person"] = None
            face["match"] = None
            continue
        t = float(threshold)
        for h in face["results"]:
            h["same_person"] = bool(h["distance"] <= t)
        face["match"] = any(h["same_person"] for h in face["results"])


def distance(a: Any, b: Any) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def startup_line(name: str, checkpoint: "str | ModelRef", detector: dict | None = None) -> str:
    """One line for the server's console: the threshold a served model decides with, or how to
    calibrate it (``checkpoint``: its folder or :class:`facerec.models.reference.ModelRef`). A
    calibration of other weights, another input kind or (``detector``: the served detector's
    settings) another detector raises ArtifactMismatchError (before any replica starts)."""
    from facerec.models.reference import resolve_model

    ref = resolve_model(checkpoint)
    meta = ref.metadata
    cal = ref.calibration(detector)
    if cal is None:
        return (f"serve: {name} is not calibrated: /v1/verify answers 409, and search says same person only where "
                f"the gallery can measure its own threshold (labelled, >= 1,000 faces at the default target); "
                f"`facerec calibrate --model {meta.get('pretrained') or checkpoint} --lfw LFW_DIR` (or --crops), "
                f"then restart")
    data = cal.get("data") or {}
    try:
        point = operating_point(cal)
    except ConfigError:
        return f"serve: {name} has a calibration without its default FAR {default_far(cal):g}; /v1/verify needs an explicit far"
    far = float(point["far"])
    return (f"serve: {name} says same person iff distance <= {float(point['threshold']):.4f} (FAR {far:g}; held-out TAR "
            f"{float(point.get('tar_mean') or float('nan')):.3f}; calibrated on {data.get('name')} ({data.get('source')}) "
            f"{cal.get('date')}{', shipped with facerec' if cal.get('origin') == 'shipped' else ''}) in /v1/verify (FARs "
            f"{sorted(thresholds(cal), reverse=True)}); search uses the gallery's open-set threshold "
            f"(GET /v1/models: open_set)")
