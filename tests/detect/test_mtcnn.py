"""The ``mtcnn`` detector (Zhang et al., IEEE SPL 2016) on ONNX Runtime against facenet-pytorch's
MTCNN, whose weights it exports: same boxes, scores and counts; the export's reuse; batching,
pickling, empty input, and no torch in the detecting process.

Parity, measured with facenet-pytorch 2.5.3 set to the detector's exact settings (``min_face_size``
= ``SCAN_MIN_FACE_FRACTION * min_face``, ``factor`` = 1 / ``scale_step``, ONet threshold
``ONET_FLOOR``): on 300 CelebA photos and on the drawn photos below, every facenet box is matched
by one of ours at IoU >= 0.99999 with a score within 1e-5 and the same count in every photo (the
pyramid and crops are resampled as torch's ``interpolate(mode="area")``; what is left is float
rounding of ORT against torch). The tests assert the looser bounds the task set (IoU >= 0.9,
scores within 0.02, the same count in >= 95% of photos) and report the worst case they saw.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from facerec.detect import DetectorConfig
from facerec.detect.base import Faces
from facerec.errors import DataNotFoundError
from facerec.models.onnx_runtime import onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime is not installed (pip install onnxruntime)")

MIN_IOU, MAX_SCORE_DIFF, MIN_SAME_COUNT = 0.9, 0.02, 0.95


@pytest.fixture(scope="module")
def mtcnn_cache(tmp_path_factory):
    """A private cache holding the MTCNN export (the first ``ensure_mtcnn_onnx`` exports it)."""
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch makes the export (pip install facenet-pytorch==2.5.3)")
    from facerec.detect.mtcnn import ensure_mtcnn_onnx

    cache = tmp_path_factory.mktemp("mtcnn") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_CACHE", str(cache))
        folder = ensure_mtcnn_onnx()
        yield {"cache": cache, "folder": folder}


def _detector(**kw):
    from facerec.detect.mtcnn import MTCNN

    return MTCNN(DetectorConfig("mtcnn", **kw), threads=1)


def _drawn_photos(n: int = 12, seed: int = 0, extras: bool = True) -> list[np.ndarray]:
    """``n`` >= 6 faces facerec.data.synth draws (one per photo), and with ``extras`` a 2x2 mosaic
    of four of them (several faces in one photo) and one upscaled 2x (larger faces)."""
    import cv2

    from facerec.data.synth import render, sample_identity, sample_shot

    rng = np.random.default_rng(seed)
    photos = []
    for k in range(n):
        person = sample_identity(rng, k)
        photos.append(render(person, sample_shot(rng, person), (178, 218), rng))
    if not extras:
        return photos
    photos.append(np.vstack([np.hstack(photos[0:2]), np.hstack(photos[2:4])]))
    photos.append(cv2.resize(photos[5], None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR))
    return photos


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def _compare_with_facenet(photos: list[np.ndarray]) -> dict:
    """Each facenet-pytorch box against its best match among ours, at the detector's settings."""
    import torch
    from facenet_pytorch import MTCNN as FacenetMTCNN

    from facerec.detect.mtcnn import ONET_FLOOR, PNET_THRESHOLD, RNET_THRESHOLD, SCAN_MIN_FACE_FRACTION

    torch.set_num_threads(1)
    det = _detector()
    c = det.config
    ref = FacenetMTCNN(keep_all=True, min_face_size=SCAN_MIN_FACE_FRACTION * c.min_face, factor=1 / c.scale_step,
                       thresholds=[PNET_THRESHOLD, RNET_THRESHOLD, ONET_FLOOR], device="cpu")
    worst_iou, worst_score, same, faces = 1.0, 0.0, 0, 0
    for photo, ours in zip(photos, det.detect_many(photos)):
        boxes, probs = ref.detect(photo)
        boxes = np.zeros((0, 4)) if boxes is None else np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
        same += len(boxes) == len(ours)
        faces += len(boxes)
        for box, prob in zip(boxes, probs if len(boxes) else []):
            if not len(ours):
                worst_iou = 0.0
                continue
            iou = _iou(box, ours.boxes)
            j = int(np.argmax(iou))
            worst_iou = min(worst_iou, float(iou[j]))
            worst_score = max(worst_score, abs(float(prob) - float(ours.scores[j])))
    return {"worst_iou": worst_iou, "worst_score_diff": worst_score, "same_count": same / len(photos), "faces": faces}


def _assert_parity(r: dict) -> None:
    print(f"parity vs facenet-pytorch: {r}")
    assert r["faces"] > 0
    assert r["worst_iou"] >= MIN_IOU, r
    assert r["worst_score_diff"] <= MAX_SCORE_DIFF, r
    assert r["same_count"] >= MIN_SAME_COUNT, r


def test_parity_with_facenet_on_drawn_photos(mtcnn_cache):
    _assert_parity(_compare_with_facenet(_drawn_photos()))


@pytest.mark.shared
def test_parity_with_facenet_on_celeba(mtcnn_cache, celeba_sample):
    from facerec.data.images import read_image

    paths = sorted((celeba_sample / "img_celeba").glob("*.jpg"))[:40]
    _assert_parity(_compare_with_facenet([read_image(p) for p in paths]))


def test_landmarks_and_box_format(mtcnn_cache):
    faces = _detector().detect_many(_drawn_photos(3, extras=False))
    for f in faces:
        assert isinstance(f, Faces) and len(f) >= 1
        lm = np.asarray(f.info["landmarks"])
        assert lm.shape == (len(f), 5, 2)
        x, y, w, h = f.boxes.T
        inside = (lm[..., 0] >= x[:, None] - 0.1 * w[:, None]) & (lm[..., 0] <= (x + 1.1 * w)[:, None])
        assert inside.all() and (w > 0).all() and (h > 0).all()
        assert ((f.scores >= 0.5) & (f.scores <= 1.0)).all()


def test_large_photo_is_scanned_at_detect_max_side(mtcnn_cache):
    """A photo 4x the size of another (pixel-replicated) with detect_max_side at the small one's
    size is scanned as exactly the small one: the same faces, boxes 4x."""
    small = _drawn_photos(2, extras=False)[1]
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
    want = _detector().detect_many([small])[0]
    got = _detector(min_face=80, detect_max_side=max(small.shape[:2])).detect_many([big])[0]
    assert len(want) >= 1 and len(got) == len(want)
    np.testing.assert_allclose(got.boxes, 4 * want.boxes, atol=1e-6)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got.info["landmarks"]), 4 * np.asarray(want.info["landmarks"]), atol=1e-6)


def test_batch_equals_one_by_one(mtcnn_cache):
    photos = _drawn_photos(6)[-4:-1]  # sizes differ: the mosaic is 4x the others
    det = _detector()
    batched = det.detect_many(photos)
    for photo, b in zip(photos, batched):
        one = det.detect_many([photo])[0]
        assert len(one) == len(b)
        # ORT may block a batch of crops differently from a single one: float rounding only.
        np.testing.assert_allclose(b.boxes, one.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, one.scores, atol=1e-5)
    assert det.detect_many([]) == []


def test_no_face_in_noise_and_tiny_images(mtcnn_cache):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    plain = np.full((200, 200, 3), 128, dtype=np.uint8)
    tiny = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    one_px = np.zeros((1, 1, 3), dtype=np.uint8)
    det = _detector()
    out = det.detect_many([noise, plain, tiny, one_px])
    assert not (out[0].scores > 0.9).any() and len(out[1]) == 0 and len(out[2]) == 0 and len(out[3]) == 0
    assert out[2].info["landmarks"] == []
    found = det.find(tiny)
    assert found.reason == "no_face"


def test_gate_counts_small_and_weak_boxes(mtcnn_cache):
    photo = _drawn_photos(1, extras=False)[0]
    det = _detector()
    raw = det.detect_many([photo])[0]
    side = float(np.min(raw.boxes[:, 2:]))
    strict = _detector(min_face=int(side) + 1, min_confidence=1.0)
    found = strict.find(photo)
    assert found.reason in ("too_small", "low_confidence") and len(found) == 0


def test_pickles_after_running(mtcnn_cache):
    photo = _drawn_photos(1, extras=False)[0]
    det = _detector()
    want = det.detect_many([photo])[0]
    clone = pickle.loads(pickle.dumps(det))
    got = clone.detect_many([photo])[0]
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_export_is_reused_and_damage_is_exported_again(tmp_path):
    pytest.importorskip("facenet_pytorch", reason="facenet-pytorch makes the export (pip install facenet-pytorch==2.5.3)")
    from facerec.detect.mtcnn import NETS, SIDECAR, ensure_mtcnn_onnx, read_mtcnn_sidecar
    from facerec.errors import ArtifactMismatchError

    folder = ensure_mtcnn_onnx(tmp_path / "mtcnn")
    meta = read_mtcnn_sidecar(folder)
    assert meta["max_abs_diff_vs_torch"] <= 1e-4 and meta["facenet_pytorch"] and set(meta["sha256"]) == set(NETS)
    files = [folder / f"{n}.onnx" for n in NETS] + [folder / SIDECAR]
    before = {p: p.stat().st_mtime_ns for p in files}
    assert ensure_mtcnn_onnx(folder) == folder
    assert {p: p.stat().st_mtime_ns for p in files} == before

    rnet = folder / "rnet.onnx"
    data = bytearray(rnet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rnet.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError, match="rnet.onnx has SHA-256"):
        read_mtcnn_sidecar(folder)
    ensure_mtcnn_onnx(folder)
    assert read_mtcnn_sidecar(folder)["sha256"] == meta["sha256"]  # the export is deterministic


def test_missing_facenet_pytorch_says_what_to_install(tmp_path, monkeypatch):
    from facerec.detect.mtcnn import ensure_mtcnn_onnx

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import raises ImportError
    with pytest.raises(DataNotFoundError, match=r"pip install facenet-pytorch==2\.5\.3"):
        ensure_mtcnn_onnx(tmp_path / "empty")


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from facerec.detect import DetectorConfig

    photo = np.load(sys.argv[1])
    d = DetectorConfig("mtcnn").build()
    faces = d.detect_many([photo])
    print(json.dumps({"faces": len(faces[0]), "torch": "torch" in sys.modules,
                      "facenet_pytorch": "facenet_pytorch" in sys.modules}))
""")


def test_detection_does_not_import_torch(mtcnn_cache, tmp_path):
    import json

    np.save(tmp_path / "photo.npy", _drawn_photos(1, extras=False)[0])
    env = {**os.environ, "FACEREC_CACHE": str(mtcnn_cache["cache"]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "photo.npy")], env=env, capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"faces": 1, "torch": False, "facenet_pytorch": False}
