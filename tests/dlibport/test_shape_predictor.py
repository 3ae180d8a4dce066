"""The numpy port of dlib's 5-point shape predictor against dlib's own landmarks.

References come from ``_refs.py`` (stored; no dlib needed). With dlib importable, extra
randomised cases are compared live."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from facerec.dlibport import files
from facerec.dlibport.shape_predictor import (
    ShapePredictor,
    dlib_pinv,
    dlib_svd,
    grey_intensity,
    read_shape_predictor_dat,
    rect_from_xywh,
)
from facerec.errors import ArtifactMismatchError, DataNotFoundError


def _load_refs_module():
    # tests run with --import-mode=importlib (no packages): load the helper by path
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("dlibport_refs", Path(__file__).with_name("_refs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_refs = _load_refs_module()

try:
    import dlib
except ImportError:  # the port must work without it; only the live comparisons need it
    dlib = None

needs_dlib = pytest.mark.skipif(dlib is None, reason="dlib-bin not installed")


@pytest.fixture(scope="module")
def model_path():
    try:
        return files.locate(files.SHAPE_5)
    except DataNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def sp(model_path) -> ShapePredictor:
    return ShapePredictor.load()


@pytest.fixture(scope="module")
def refs():
    with np.load(_refs.REFS) as z:
        return dict(zip(z["names"].tolist(), z["landmarks"]))


def test_rect_from_xywh():
    assert rect_from_xywh(10, 20, 30, 40) == (10, 20, 39, 59)


def test_grey_intensity_is_dlibs():
    img = np.array([[[255, 255, 254], [1, 1, 0], [10, 20, 33]]], np.uint8)
    assert grey_intensity(img).tolist() == [[254, 0, 21]]
    assert grey_intensity(img[..., 0]) is not None


def test_model_shapes(sp):
    m = sp.model
    assert sp.num_parts == 5 and sp.depth == 4
    assert m.split_idx.shape == (15, 500, 15, 2)
    assert m.leaves.shape == (15, 500, 16, 10)
    assert m.deltas.shape == (15, 800, 2)
    assert m.leaves.dtype == np.float32


def test_landmarks_equal_dlib(sp, refs):
    cases = _refs.cases()
    for name, img, rect, _ in cases:
        got = sp.predict(img, rect)
        assert got.shape == (5, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, refs[name], rtol=0, atol=1e-4, err_msg=name)


def test_predict_many_batches_match_single(sp, refs):
    cases = _refs.cases()
    got = sp.predict_many([c[1] for c in cases], [c[2] for c in cases])
    np.testing.assert_allclose(got, np.stack([refs[c[0]] for c in cases]), rtol=0, atol=1e-4)
    # one image, several rects
    same = [c for c in cases if c[1] is cases[0][1]]
    got = sp.predict_many(cases[0][1], [c[2] for c in same])
    np.testing.assert_allclose(got, np.stack([refs[c[0]] for c in same]), rtol=0, atol=1e-4)
    assert sp.predict_many(cases[0][1], np.zeros((0, 4))).shape == (0, 5, 2)


def test_predict_many_rejects_count_mismatch(sp):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="2 images for 1 rects"):
        sp.predict_many([img, img], [(0, 0, 9, 9)])


def test_dlib_svd_reconstructs():
    a = [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    u, q, v = dlib_svd(a)
    rec = np.asarray(u) @ np.diag(q) @ np.asarray(v).T
    np.testing.assert_allclose(rec, a, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dlib_pinv(a)) @ a, np.eye(3), atol=1e-14)


def test_cache_is_reused(tmp_path, monkeypatch, model_path):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path))
    a = ShapePredictor.load()
    cached = list((tmp_path / "dlib").glob("*.npz"))
    assert [p.name for p in cached] == [f"{files.SHAPE_5.sha256}.npz"]
    b = ShapePredictor.load()
    for k in ("split_idx", "split_thresh", "leaves", "anchor_idx", "deltas", "initial_shape"):
        assert np.array_equal(getattr(a.model, k), getattr(b.model, k))
    cached[0].write_bytes(b"garbage")  # a damaged cache is rebuilt, never fatal
    c = ShapePredictor.load()
    assert np.array_equal(c.model.leaves, a.model.leaves)


def test_truncated_file_is_refused(tmp_path, model_path):
    bad = tmp_path / files.SHAPE_5.name
    bad.write_bytes(model_path.read_bytes()[:100_000])
    with pytest.raises(ArtifactMismatchError, match=r"shape_predictor_5_face_landmarks\.dat.*SHA-256.*expected"):
        ShapePredictor.load(bad)
    with pytest.raises(ArtifactMismatchError, match=r"file ends early.*truncated"):
        read_shape_predictor_dat(bad)


def test_foreign_file_is_refused(tmp_path, model_path):
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(ArtifactMismatchError, match=r"other\.dat.*expected c4b1e98"):
        ShapePredictor.load(other)
    with pytest.raises(ArtifactMismatchError, match=r"other\.dat.*not a dlib shape_predictor"):
        read_shape_predictor_dat(other)
    # a well-formed dlib file of another kind: version 1, but no mean shape after it
    wrong = tmp_path / "wrong.dat"
    wrong.write_bytes(b"\x01\x01\x01\x02\x01\x03")
    with pytest.raises(ArtifactMismatchError, match=r"wrong\.dat.*expected the mean shape"):
        read_shape_predictor_dat(wrong)
    copy = tmp_path / "copy.dat"
    shutil.copyfile(model_path, copy)
    assert ShapePredictor.load(copy).num_parts == 5  # the right file under another name is fine


@needs_dlib
def test_random_boxes_live(sp, model_path):
    """Random boxes on the reference faces and on smooth random images, against dlib live."""
    d = dlib.shape_predictor(str(model_path))
    rng = np.random.default_rng(1234)
    images, _ = _refs.load_inputs()
    imgs = list(images)
    for _ in range(3):
        small = rng.integers(0, 256, (12, 10, 3)).astype(np.float32)
        imgs.append(np.clip(np.kron(small, np.ones((20, 20, 1))) + rng.normal(0, 6, (240, 200, 3)), 0, 255).astype(np.uint8))
    batch_imgs, rects, want = [], [], []
    for _ in range(60):
        img = imgs[rng.integers(len(imgs))]
        h, w = img.shape[:2]
        s = int(rng.integers(30, 160))
        l, t = int(rng.integers(-s // 3, w - s // 2)), int(rng.integers(-s // 3, h - s // 2))
        rect = (l, t, l + s - 1 + int(rng.integers(-5, 6)), t + s - 1)
        batch_imgs.append(img)
        rects.append(rect)
        want.append([[p.x, p.y] for p in d(img, dlib.rectangle(*rect)).parts()])
    got = sp.predict_many(batch_imgs, rects)
    np.testing.assert_allclose(got, np.asarray(want, np.float32), rtol=0, atol=1e-4)


@needs_dlib
def test_reference_file_is_current(sp, model_path):
    """The stored references are what this dlib gives (guards against stale data files)."""
    d = dlib.shape_predictor(str(model_path))
    with np.load(_refs.REFS) as z:
        stored = dict(zip(z["names"].tolist(), z["landmarks"]))
    for name, img, rect, _ in _refs.cases()[:6]:
        live = np.array([[p.x, p.y] for p in d(img, dlib.rectangle(*rect)).parts()], np.float32)
        np.testing.assert_array_equal(live, stored[name], err_msg=name)
