"""What the served detector answers: every face of a photo of several people, and never a search of
a non-face (a texture, a shirt, a wall: 422 ``no_face`` saying why). In process on the Embedder's
core (no Ray), and over HTTP on the live app; on drawn faces, and on real CelebA photos when
../shared/data is present."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.data.images import decode_image, encode_jpeg


@pytest.fixture(scope="module")
def core(serve_artifacts):
    from facerec.serve.embedder import FaceEmbedderCore

    return FaceEmbedderCore(serve_artifacts["checkpoints"]["mnv3"], crop_size=218, margin=0.2, torch_threads=1)


def mosaic(images: list[np.ndarray], tile: int = 200) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The photos side by side, each resized into a tile x tile cell on a grey canvas; the cells'
    top-left corners."""
    import cv2

    canvas = np.full((tile, tile * len(images), 3), 120, np.uint8)
    corners = []
    for k, img in enumerate(images):
        h, w = img.shape[:2]
        s = tile / max(h, w)
        small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        canvas[: small.shape[0], k * tile: k * tile + small.shape[1]] = small
        corners.append((k * tile, 0))
    return canvas, corners


def _faces_per_cell(boxes: list[list[int]], corners, tile: int) -> list[int]:
    centres = [(b[0] + b[2] / 2, b[1] + b[3] / 2) for b in boxes]
    return [sum(x0 <= cx < x0 + tile and y0 <= cy < y0 + tile for cx, cy in centres) for x0, y0 in corners]


def _textures() -> dict[str, np.ndarray]:
    """Non-faces a user might upload: plaid cloth, a knitted-looking noise, a brick wall."""
    import cv2

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    plaid = np.stack([(((x // 16) % 2) * 120 + ((y // 24) % 2) * 90 + 20), ((x // 8) % 3) * 60 + 40,
                      ((y // 16) % 2) * 150 + 50], -1).astype(np.uint8)
    knit = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3)).astype(np.uint8), (7, 7), 2)
    bricks = np.full((240, 320, 3), (150, 60, 40), np.uint8)
    bricks[(y % 30) < 3] = 200
    bricks[((x + 40 * ((y // 30) % 2)) % 80 < 3)] = 200
    return {"plaid": plaid, "knit": knit, "bricks": bricks}


def test_a_photo_of_several_people_gives_every_face(core, photos):
    tile = 200
    people = [decode_image(d) for _, d in photos[:3]]
    canvas, corners = mosaic(people, tile)
    [res] = core.embed_many([(encode_jpeg(canvas, quality=95), "all", False)])
    assert res["ok"], res
    assert _faces_per_cell([f["box"] for f in res["faces"]], corners, tile) == [1, 1, 1]
    assert all(f["score"] >= core.detector_config.resolved().min_confidence for f in res["faces"])
    # largest-first: "largest" answers the first face of "all"
    [one] = core.embed_many([(encode_jpeg(canvas, quality=95), "largest", False)])
    assert len(one["faces"]) == 1 and one["faces"][0]["box"] == res["faces"][0]["box"]


@pytest.mark.parametrize("name", ["plaid", "knit", "bricks"])
def test_a_texture_is_no_face_and_never_searched(core, name):
    [res] = core.embed_many([(encode_jpeg(_textures()[name], quality=90), "all", False)])
    assert res["ok"] is False and res["status"] == 422 and res["code"] == "no_face", res
    assert res["message"].startswith("no face in the 320x240 image: ")


@pytest.mark.shared
def test_real_photos_of_several_people_and_shirts(core, celeba_sample):
    """Four CelebA photos side by side give four faces; the region under each face (the shirt, the
    chest) alone gives 422."""
    import pandas as pd

    from facerec.data.images import read_image
    from facerec.detect import DetectorConfig

    det = DetectorConfig().build()
    folder = celeba_sample / "img_celeba"
    names = pd.read_csv(celeba_sample / "identity_CelebA.txt", sep=" ", header=None)[0].tolist()
    singles, shirts = [], []
    for name in names[::37]:
        rgb = read_image(folder / name)
        found = det.find(rgb)
        if len(found) != 1:
            continue
        x, y, w, h = found.boxes[0]
        if len(singles) < 4 and w > 60:
            singles.append(rgb)
        below = int(y + 1.25 * h)  # under the chin: shoulders and clothes
        if rgb.shape[0] - below >= 64 and len(shirts) < 10:
            shirts.append(rgb[below:])
        if len(singles) == 4 and len(shirts) == 10:
            break
    assert len(singles) == 4 and len(shirts) >= 5
    canvas, corners = mosaic(singles, 200)
    [res] = core.embed_many([(encode_jpeg(canvas, quality=95), "all", False)])
    assert _faces_per_cell([f["box"] for f in res["faces"]], corners, 200) == [1, 1, 1, 1]
    answers = core.embed_many([(encode_jpeg(s, quality=95), "all", False) for s in shirts])
    assert [(a["ok"], a.get("code")) for a in answers] == [(False, "no_face")] * len(shirts)


def test_http_search_of_several_people_answers_each_face(live_app, photos):
    import httpx

    canvas, corners = mosaic([decode_image(d) for _, d in photos[:2]], 200)
    with httpx.Client(base_url=live_app["url"], timeout=120) as client:
        r = client.post("/v1/search?faces=all&k=3", content=encode_jpeg(canvas, quality=95),
                        headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        boxes = [[f["box"][k] for k in ("x", "y", "w", "h")] for f in r.json()["faces"]]
        assert _faces_per_cell(boxes, corners, 200) == [1, 1]
        assert all(len(f["results"]) == 3 for f in r.json()["faces"])
        shirt = client.post("/v1/search", content=encode_jpeg(_textures()["plaid"], quality=90),
                            headers={"Content-Type": "image/jpeg"})
        assert shirt.status_code == 422 and shirt.json()["code"] == "no_face", shirt.text
