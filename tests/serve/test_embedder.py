"""FaceEmbedderCore (what an Embedder replica runs): per-item errors, batch independence."""

from __future__ import annotations

import re

import numpy as np
import pytest

from facerec.serve.embedder import FaceEmbedderCore


@pytest.fixture(scope="module")
def core(serve_artifacts):
    return FaceEmbedderCore(serve_artifacts["checkpoints"]["mnv3"], crop_size=218, margin=0.2, torch_threads=1)


def _reference(checkpoint: str, data: bytes) -> tuple[np.ndarray, list[list[int]]]:
    """decode -> the default detector and gate -> crop -> test_transform -> model, composed by hand."""
    import torch

    from facerec.data.haar import crop_face
    from facerec.detect import DetectorConfig
    from facerec.data.images import decode_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    rgb = decode_image(data)
    boxes = DetectorConfig().build().find(rgb).boxes
    tf = test_transform(int(meta["image_size"]))
    with torch.inference_mode():
        emb = model(torch.stack([tf(crop_face(rgb, b, 0.2, 218)) for b in boxes])).numpy()
    return emb, [[int(round(v)) for v in b] for b in boxes]


def test_bad_items_do_not_fail_the_batch(core, photos, bad_images, serve_artifacts):
    good = [d for _, d in photos[:3]]
    bad = {name: d for name, (d, _, _) in bad_images.items()}
    items = [(good[0], "largest", False), (bad["not_an_image"], "largest", False), (good[1], "largest", False),
             (bad["decompression_bomb"], "largest", False), (bad["no_face"], "largest", False),
             (bad["empty"], "largest", False), (bad["truncated_jpeg"], "largest", False), (good[2], "all", True)]
    res = core.embed_many(items)
    assert len(res) == len(items)
    want = {1: "not_an_image", 3: "decompression_bomb", 4: "no_face", 5: "empty", 6: "truncated_jpeg"}
    for i, name in want.items():
        _, status, pattern = bad_images[name]
        assert res[i]["ok"] is False and res[i]["status"] == status, (name, res[i])
        assert re.search(pattern, res[i]["message"]), (name, res[i]["message"])
    for i, data in [(0, good[0]), (2, good[1]), (7, good[2])]:
        assert res[i]["ok"] is True and res[i]["batch_size"] == len(items)
        emb, boxes = _reference(serve_artifacts["checkpoints"]["mnv3"], data)
        n = len(res[i]["faces"]) if i == 7 else 1
        assert [f["box"] for f in res[i]["faces"]] == boxes[:n]
        np.testing.assert_allclose(np.stack([f["embedding"] for f in res[i]["faces"]]), emb[:n], atol=1e-5)
    assert "crops_png" in res[7] and res[7]["crops_png"][0][:8] == b"\x89PNG\r\n\x1a\n"


def test_batched_equals_alone(core, photos):
    data = [d for _, d in photos[:4]]
    together = core.embed_many([(d, "largest", False) for d in data])
    for d, t in zip(data, together):
        alone = core.embed_many([(d, "largest", False)])[0]
        np.testing.assert_allclose(alone["faces"][0]["embedding"], t["faces"][0]["embedding"], atol=1e-5)


def test_info(core, serve_artifacts):
    info = core.info()
    assert info["model_id"] == serve_artifacts["model_ids"]["mnv3"]
    assert info["embedding_dim"] == 32 and info["image_size"] == 64 and info["backbone"] == "mobilenet_v3_small"


def test_parallel_prepare_matches_serial_and_restores_opencv_threads(core, photos, serve_artifacts):
    import cv2

    pooled = FaceEmbedderCore(serve_artifacts["checkpoints"]["mnv3"], crop_size=218, margin=0.2, torch_threads=1,
                              prepare_threads=2)
    items = [(d, "all", False) for _, d in photos[:6]]
    before = cv2.getNumThreads()
    got = pooled.embed_many(items)
    assert cv2.getNumThreads() == before  # the batch's single-threaded OpenCV switch is undone
    want = core.embed_many(items)  # serial prepare, OpenCV's own threading
    for g, w in zip(got, want):
        assert [f["box"] for f in g["faces"]] == [f["box"] for f in w["faces"]]
        np.testing.assert_allclose(np.stack([f["embedding"] for f in g["faces"]]),
                                   np.stack([f["embedding"] for f in w["faces"]]), atol=1e-5)
