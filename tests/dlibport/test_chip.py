"""The numpy port of ``dlib.get_face_chip`` against dlib's chips, bit for bit.

Landmarks and chip digests come from ``_refs.py`` (stored; no dlib needed). With dlib
importable, extra randomised cases are compared live."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from facerec.dlibport import chip as chipmod
from facerec.dlibport.chip import (
    align_faces,
    extract_face_chip,
    face_chip_details,
    pyramid_down2,
)
from facerec.dlibport.shape_predictor import ShapePredictor
from facerec.errors import DataNotFoundError

try:
    import dlib
except ImportError:
    dlib = None

needs_dlib = pytest.mark.skipif(dlib is None, reason="dlib-bin not installed")


def _load_refs_module():
    # tests run with --import-mode=importlib (no packages): load the helper by path
    spec = importlib.util.spec_from_file_location("dlibport_refs", Path(__file__).with_name("_refs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_refs = _load_refs_module()


@pytest.fixture(scope="module")
def refs():
    with np.load(_refs.REFS) as z:
        return {
            "landmarks": dict(zip(z["names"].tolist(), z["landmarks"])),
            "sha": dict(zip(z["chip_names"].tolist(), z["chip_sha256"].tolist())),
            "full": {k[len("chip_"):]: z[k] for k in z.files if k.startswith("chip_") and k != "chip_names" and k != "chip_sha256"},
        }


@pytest.fixture(scope="module")
def chip_cases(refs):
    return {name: (img, rect) for name, img, rect, want in _refs.cases() if want}


def _check(name, got, refs):
    full = refs["full"].get(name)
    if full is not None:
        assert got.shape == full.shape, name
        diff = np.abs(got.astype(int) - full).max()
        assert diff == 0, f"{name}: {np.count_nonzero(got != full)} values differ, max {diff}"
    assert _refs.chip_digest(got) == refs["sha"][name], f"{name}: chip differs from dlib's"


@pytest.mark.parametrize("name", ["face0", "face1", "face2", "face3", "face4", "face5"])
def test_chip_equals_dlib(name, refs, chip_cases):
    img, _ = chip_cases[name]
    got = extract_face_chip(img, refs["landmarks"][name], size=150, padding=0.25)
    assert got.dtype == np.uint8 and got.shape == (150, 150, 3)
    _check(name, got, refs)


@pytest.mark.parametrize("name,level", [("face0_x4", 0), ("face0_x8", 1)])
def test_large_face_uses_pyramid(name, level, refs, chip_cases, monkeypatch):
    img, _ = chip_cases[name]
    calls = []
    real = chipmod.pyramid_down2
    monkeypatch.setattr(chipmod, "pyramid_down2", lambda a: calls.append(a.shape) or real(a))
    got = extract_face_chip(img, refs["landmarks"][name])
    assert len(calls) == level + 1, f"expected {level + 1} pyramid levels, got {len(calls)}"
    _check(name, got, refs)


@pytest.mark.parametrize("name", ["face2_cut_left", "face3_cut_top_right"])
def test_chip_outside_image_is_zero(name, refs, chip_cases):
    img, _ = chip_cases[name]
    got = extract_face_chip(img, refs["landmarks"][name])
    _check(name, got, refs)
    assert (got == 0).all(axis=2).mean() > 0.2  # a large part of the chip lies outside the image


def test_grey_chip(refs, chip_cases):
    img, _ = chip_cases["face4_grey"]
    got = extract_face_chip(img, refs["landmarks"]["face4_grey"])
    assert got.shape == (150, 150)
    _check("face4_grey", got, refs)


def test_face_chip_details_shape():
    pts = np.array([[120, 100], [100, 101], [60, 100], [80, 101], [90, 140]], np.float32)
    d = face_chip_details(pts, size=150, padding=0.25)
    assert d.rows == d.cols == 150
    assert abs(d.angle) < 0.05
    with pytest.raises(ValueError, match="5 landmarks"):
        face_chip_details(pts[:4])


def test_pyramid_down2_matches_definition():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (21, 17, 3)).astype(np.uint8)
    got = pyramid_down2(img)
    assert got.shape == (9, 7, 3)
    k = np.array([1, 4, 6, 4, 1])
    w = np.outer(k, k)
    want = np.array([[[(img[2 * r:2 * r + 5, 2 * c:2 * c + 5, ch].astype(int) * w).sum() // 256 for ch in range(3)]
                      for c in range(7)] for r in range(9)])
    np.testing.assert_array_equal(got, want)
    assert pyramid_down2(img[:8]).size == 0


def test_align_faces(refs, chip_cases):
    try:
        sp = ShapePredictor.load()
    except DataNotFoundError as e:
        pytest.skip(str(e))
    names = ["face0", "face1", "face2"]
    imgs = [chip_cases[n][0] for n in names]
    rects = [chip_cases[n][1] for n in names]
    chips, pts = align_faces(imgs, rects, sp)
    assert chips.shape == (3, 150, 150, 3) and pts.shape == (3, 5, 2)
    for n, c, p in zip(names, chips, pts):
        np.testing.assert_allclose(p, refs["landmarks"][n], atol=1e-4)
        _check(n, c, refs)


@needs_dlib
def test_random_landmarks_live():
    """Random (integer) landmark sets, rotations, scales and positions, including faces partly
    or wholly outside the image and large ones, against dlib.get_face_chip."""
    rng = np.random.default_rng(99)
    images, _ = _refs.load_inputs()
    mean = np.array(chipmod.MEAN_FACE_5)
    for i in range(40):
        img = images[i % len(images)]
        if i % 5 == 4:
            img = np.repeat(np.repeat(img, 3, axis=0), 3, axis=1)
        h, w = img.shape[:2]
        scale = rng.uniform(20, 1.2 * max(h, w))
        ang = rng.uniform(-0.6, 0.6)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        ctr = rng.uniform([-0.2 * w, -0.2 * h], [1.2 * w, 1.2 * h])
        pts = np.round((mean - 0.5) @ rot.T * scale + ctr + rng.normal(0, 2, (5, 2)))
        det = dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), [dlib.point(int(x), int(y)) for x, y in pts])
        size = int(rng.choice([150, 150, 80, 151]))
        padding = float(rng.choice([0.25, 0.25, 0.0, 0.4]))
        want = dlib.get_face_chip(img, det, size, padding)
        got = extract_face_chip(img, pts, size=size, padding=padding)
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"case {i}: {np.count_nonzero(got != want)} values differ"
