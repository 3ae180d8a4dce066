"""The detector registry, its validated config, the face gate and box maps (facerec.detect.base)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerec.detect import (DETECTORS, DLIB, LEGACY_HAAR, BoxMap, DetectorConfig, Faces, check_same_detector,
                            crops_detector)
from facerec.errors import ArtifactMismatchError, ConfigError


def test_registry_holds_haar_and_mtcnn_and_the_default_is_mtcnn():
    assert DETECTORS.names() == ["haar", "mtcnn"]
    assert DetectorConfig().name == "mtcnn"
    with pytest.raises(ConfigError, match=r"^detector='hog' is invalid: expected one of \['haar', 'mtcnn'\]"):
        DetectorConfig("hog")


@pytest.mark.parametrize("kwargs, match", [
    ({"min_confidence": 1.5}, r"^min_confidence=1\.5 is invalid: expected a detector score in \[0, 1\]"),
    ({"min_confidence": math.nan}, r"^min_confidence=nan is invalid"),
    ({"min_confidence": True}, r"^min_confidence=True is invalid"),
    ({"min_face": 4}, r"^min_face=4 is invalid: expected an integer number of pixels in \[8, 4096\]"),
    ({"min_face": 20.5}, r"^min_face=20\.5 is invalid"),
    ({"scale_step": 1.0}, r"^scale_step=1\.0 is invalid: expected a ratio in \(1, 2\]"),
    ({"scale_step": 2.5}, r"^scale_step=2\.5 is invalid"),
    ({"min_neighbors": -1}, r"^min_neighbors=-1 is invalid"),
    ({"detect_max_side": 32}, r"^detect_max_side=32 is invalid: expected an integer >= 64"),
])
def test_bad_settings_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        DetectorConfig(**kwargs)
    assert info.value.field == next(iter(kwargs))


def test_none_takes_the_detectors_default_and_settings_round_trip():
    for name in DETECTORS.names():
        d = DETECTORS.get(name).defaults
        r = DetectorConfig(name).resolved()
        assert (r.min_confidence, r.min_face, r.scale_step) == (d["min_confidence"], d["min_face"], d["scale_step"])
        s = DetectorConfig(name).settings()
        assert DetectorConfig.from_settings(s).settings() == s
        assert DetectorConfig(name, d["min_confidence"], d["min_face"], d["scale_step"]).settings() == s
    assert DetectorConfig("mtcnn", min_face=64).settings()["min_face"] == 64
    # the study's Haar settings are what artifacts older than the registry were made with; they
    # started the landmarks from the raw Haar box (no map into dlib's convention), version 1
    assert DetectorConfig("haar").settings() == {**LEGACY_HAAR, "detector_version": 2}


def test_box_map_by_hand_and_its_inverse():
    m = BoxMap(dx=0.1, dy=-0.2, sw=0.5, sh=2.0)
    # box x=10, y=20, w=40, h=30: centre (30, 35) -> (30 + 4, 35 - 6) = (34, 29); size (20, 60)
    np.testing.assert_allclose(m(np.array([10, 20, 40, 30])), [[24, -1, 20, 60]])
    boxes = np.array([[10, 20, 40, 30], [0, 0, 7, 9.5]], dtype=float)
    np.testing.assert_allclose(m.inverse(m(boxes)), boxes, atol=1e-12)
    np.testing.assert_allclose(BoxMap()(boxes), boxes)


def _gate(faces: Faces, **cfg):
    return DetectorConfig("mtcnn", **cfg).build().gate(faces)


def test_gate_accepts_rejects_and_orders_largest_first():
    faces = Faces(boxes=[[0, 0, 30, 40], [50, 50, 100, 120], [5, 5, 60, 60], [9, 9, 10, 80]],
                  scores=[0.99, 0.95, 0.5, 0.99])
    found = _gate(faces, min_confidence=0.9, min_face=20)
    # box 3 is 10 px wide (too small), box 2 scored 0.5 (low confidence); the rest largest first
    np.testing.assert_array_equal(found.boxes, [[50, 50, 100, 120], [0, 0, 30, 40]])
    np.testing.assert_allclose(found.scores, [0.95, 0.99])
    assert found.rejected == {"too_small": 1, "low_confidence": 1}
    assert found.reason is None


def test_a_photo_without_an_accepted_face_gets_the_gates_reason():
    small_and_weak = Faces(boxes=[[0, 0, 12, 12], [0, 0, 50, 50]], scores=[0.99, 0.3])
    found = _gate(small_and_weak, min_confidence=0.9, min_face=20)
    assert len(found) == 0 and found.reason == "too_small"  # a small face is still a face: the more useful reason
    assert found.detail() == "1 box(es) too small, 1 box(es) low confidence"
    assert _gate(Faces([[0, 0, 50, 50]], [0.3]), min_confidence=0.9).reason == "low_confidence"
    assert _gate(Faces(np.zeros((0, 4)), []), min_confidence=0.9).reason == "no_face"


def test_boxes_in_maps_into_known_conventions_only():
    det = DetectorConfig("haar").build()
    boxes = np.array([[10, 20, 40, 40]], float)
    np.testing.assert_allclose(det.boxes_in(None, boxes), boxes)
    np.testing.assert_allclose(det.boxes_in(DLIB, boxes), det.box_maps[DLIB](boxes))
    with pytest.raises(ConfigError, match=r"box_convention='retinaface' is invalid: expected one the haar detector"):
        det.boxes_in("retinaface", boxes)


def test_haar_entry_is_the_studys_two_pass_cascade():
    from facerec.data.haar import HaarDetector
    from facerec.data.synth import passport_shot, render, sample_identity

    rng = np.random.default_rng(0)
    person = sample_identity(np.random.default_rng([0, 1]), 1)
    rgb = render(person, passport_shot(person), (178, 218), rng)
    want = HaarDetector().detect(rgb)
    got = DetectorConfig("haar").build().detect_many([rgb])[0]
    np.testing.assert_array_equal(got.boxes, want.boxes)
    assert got.info == {"haar_pass": want.pass_used, "faces_pass1": want.faces_pass1, "faces_pass2": want.faces_pass2}
    assert (got.scores == 1.0).all()


def test_artifacts_record_their_detector_and_a_mismatch_names_the_fix():
    assert crops_detector({}) == LEGACY_HAAR  # made before the registry: the study's Haar
    now = DetectorConfig().settings()
    assert crops_detector({"detector": now}) == now
    check_same_detector(now, dict(now), "gallery G", "rebuild it")
    with pytest.raises(ArtifactMismatchError,
                       match=r"gallery G was made with the face detector haar .* this run detects with mtcnn .*"
                             r"\(they differ in detector, .*\); rebuild it"):
        check_same_detector(LEGACY_HAAR, now, "gallery G", "rebuild it")
