"""The real Serve application over real HTTP: search against an exact computation, every bad
input with its status, gallery add with/without token, hot index reload, images endpoint, and a
batch mixing bad and good images."""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

TOKEN = "test-token-0123456789"  # the live_app fixture's token

from facerec.gallery import read_table  # noqa: E402

from .conftest import served_ids  # noqa: E402


@pytest.fixture(scope="module")
def client(live_app):
    with httpx.Client(base_url=live_app["url"], timeout=120) as c:
        yield c


def _reference_query(checkpoint: str, data: bytes) -> np.ndarray:
    """Largest face -> crop -> test_transform -> model, by hand (no serve code)."""
    import torch

    from facerec.data.haar import HaarDetector, crop_face
    from facerec.data.images import decode_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    rgb = decode_image(data)
    box = HaarDetector().detect_all(rgb)[0]
    with torch.inference_mode():
        return model(test_transform(int(meta["image_size"]))(crop_face(rgb, box, 0.2, 218))[None]).numpy()[0]


def _reference_gallery(gallery: Path, checkpoint: str) -> tuple[np.ndarray, pd.DataFrame]:
    import torch

    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    table = read_table(gallery)
    tf = test_transform(int(meta["image_size"]))
    with torch.inference_mode():
        return model(torch.stack([tf(read_image(gallery / p)) for p in table["crop_path"]])).numpy(), table


def _search(client, data: bytes, **params):
    return client.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={k: str(v) for k, v in params.items()})


@pytest.mark.parametrize("model", ["mnv3", "r18"])
def test_search_matches_exact_computation(client, live_app, serve_artifacts, photos, model):
    ckpt = serve_artifacts["checkpoints"][model]
    gallery_emb, table = _reference_gallery(live_app["gallery"], ckpt)
    k = 7
    for name, data in photos[:3]:
        r = _search(client, data, k=k, model=model)
        assert r.status_code == 200, r.text
        body = r.json()
        from facerec.serve.ingress import SearchResponse

        SearchResponse.model_validate(body)  # the documented schema, field by field
        assert body["model"] == model and body["model_id"] == serve_artifacts["model_ids"][model] and body["k"] == k
        assert len(body["faces"]) == 1
        hits = body["faces"][0]["results"]
        assert [h["rank"] for h in hits] == list(range(1, k + 1))
        q = _reference_query(ckpt, data)
        dist = np.sqrt(((gallery_emb - q) ** 2).sum(1))
        order = np.argsort(dist, kind="stable")[:k]
        np.testing.assert_allclose([h["distance"] for h in hits], dist[order], atol=1e-4)
        # ids must agree wherever the exact distances are not (near-)tied
        for i, h in enumerate(hits):
            gap = min([abs(dist[order[i]] - dist[order[j]]) for j in (i - 1, i + 1) if 0 <= j < k] or [1.0])
            if gap > 1e-4:
                assert h["image_id"] == table["image_id"].iloc[order[i]]
                assert h["identity"] == int(table["identity"].iloc[order[i]])
        # the photo's own crop is in the gallery: it is the nearest, and shares the identity
        own = served_ids(live_app["gallery"])[name]
        assert hits[0]["image_id"] == own and hits[0]["attribute_agreement"] == 1.0
        assert set(hits[0]["attributes"]) == set(json.loads(client.get("/v1/models").text)["attribute_names"])
        assert hits[0]["thumbnail_url"] == f"/v1/images/{own}"


def test_search_json_raw_and_query_params(client, live_app, photos):
    name, data = photos[4]
    a = _search(client, data, k=3).json()
    b = client.post("/v1/search", json={"image_base64": base64.b64encode(data).decode(), "k": 3}).json()
    c = client.post("/v1/search?k=3", content=data, headers={"Content-Type": "image/jpeg"}).json()
    d = client.post("/v1/search", json={"image_base64": "data:image/jpeg;base64," + base64.b64encode(data).decode(), "k": 3}).json()
    ids = [[h["image_id"] for h in x["faces"][0]["results"]] for x in (a, b, c, d)]
    assert ids[0] == ids[1] == ids[2] == ids[3] and len(ids[0]) == 3 and ids[0][0] == served_ids(live_app["gallery"])[name]
    assert a["model"] == "mnv3"  # the configured default
    assert len(_search(client, data).json()["faces"][0]["results"]) == 9  # default k


def test_k_bounds(client, photos, serve_artifacts):
    data = photos[0][1]
    assert len(_search(client, data, k=1).json()["faces"][0]["results"]) == 1
    rows = client.get("/v1/models").json()["gallery_rows"]
    all_hits = _search(client, data, k=1000).json()["faces"][0]["results"]
    assert len(all_hits) == rows and len({h["image_id"] for h in all_hits}) == rows


def test_faces_all_on_two_faces(client, live_app, photos, serve_artifacts):
    from facerec.data.images import decode_image, encode_jpeg

    left, right = decode_image(photos[0][1]), decode_image(photos[5][1])
    both = encode_jpeg(np.concatenate([left, right], axis=1), quality=95)
    largest = _search(client, both, k=2, faces="largest").json()
    every = _search(client, both, k=2, faces="all").json()
    assert len(largest["faces"]) == 1 and len(every["faces"]) == 2
    xs = sorted(f["box"]["x"] for f in every["faces"])
    assert xs[0] < left.shape[1] <= xs[1]  # one face in each half
    # each face's results are the exact neighbours of that face's own crop
    import torch

    from facerec.data.haar import crop_face
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    ckpt = serve_artifacts["checkpoints"]["mnv3"]
    gallery_emb, table = _reference_gallery(live_app["gallery"], ckpt)
    model, meta = load_embedder(ckpt)
    rgb = decode_image(both)
    for face in every["faces"]:
        b = face["box"]
        with torch.inference_mode():
            q = model(test_transform(int(meta["image_size"]))(crop_face(rgb, [b["x"], b["y"], b["w"], b["h"]], 0.2, 218))[None]).numpy()[0]
        dist = np.sqrt(((gallery_emb - q) ** 2).sum(1))
        order = np.argsort(dist)[:2]
        np.testing.assert_allclose([h["distance"] for h in face["results"]], dist[order], atol=1e-4)
        assert face["results"][0]["image_id"] == table["image_id"].iloc[order[0]]


@pytest.mark.parametrize("case", ["not_an_image", "truncated_jpeg", "empty", "decompression_bomb", "no_face"])
def test_bad_images(client, bad_images, case):
    data, status, pattern = bad_images[case]
    r = _search(client, data)
    assert r.status_code == status, r.text
    assert re.search(pattern, r.json()["detail"]), r.json()


def _cases(data: bytes):
    big = b"\xff\xd8" + b"\x00" * 400_000
    return [
        ("too large (multipart)", dict(files={"image": ("q.jpg", big, "image/jpeg")}), 413, r"exceeds the limit"),
        ("too large (raw)", dict(content=big, headers={"Content-Type": "image/jpeg"}), 413, r"exceeds the limit of"),
        ("unknown model", dict(files={"image": ("q.jpg", data, "image/jpeg")}, data={"model": "vgg16"}), 400,
         r"model 'vgg16' is not served; choose one of \['mnv3', 'r18'\]"),
        ("k=0", dict(files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "0"}), 422, r"k: Input should be greater than or equal to 1"),
        ("k=1001", dict(files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "1001"}), 422, r"k: Input should be less than or equal to 1000"),
        ("k=abc", dict(files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "abc"}), 422, r"k: Input should be a valid integer"),
        ("faces=some", dict(files={"image": ("q.jpg", data, "image/jpeg")}, data={"faces": "some"}), 422, r"faces: Input should be 'largest' or 'all'"),
        ("no file field", dict(files={"photo": ("q.jpg", data, "image/jpeg")}), 400, r"no file field 'image'"),
        ("bad base64", dict(json={"image_base64": "%%%not base64"}), 400, r"image_base64 is not valid base64"),
        ("empty base64", dict(json={"image_base64": ""}), 400, r"image_base64 is empty"),
        ("json without image", dict(json={"k": 3}), 422, r'must be an object with "image_base64"'),
        ("json unknown field", dict(json={"image_base64": "AAAA", "top": 3}), 422, r"unknown JSON fields \['top'\]"),
        ("broken json", dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, r"body is not valid JSON"),
        ("text body", dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, r"Content-Type 'text/plain' is not accepted"),
    ]


@pytest.mark.parametrize("i", range(14))
def test_bad_request_cases(client, photos, i):
    name, kwargs, status, pattern = _cases(photos[0][1])[i]
    r = client.post("/v1/search", **kwargs)
    assert r.status_code == status, (name, r.text)
    assert re.search(pattern, r.json()["detail"]), (name, r.json())


def test_query_param_validation(client, photos):
    r = client.post("/v1/search?k=0", content=photos[0][1], headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422


def test_images_endpoint(client, live_app, photos):
    name = photos[0][0]
    image_id = served_ids(live_app["gallery"])[name]
    r = client.get(f"/v1/images/{image_id}")
    # stored inputs are PNG: exactly the pixels that were embedded; a face is kept by no cache
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, no-store"
    assert r.content == (live_app["gallery"] / "crops" / f"{image_id}.png").read_bytes()
    assert client.get(f"/v1/images/{name}").status_code == 404  # the dataset's name is not an id
    assert client.get("/v1/images/999999.jpg").status_code == 404
    assert client.get("/v1/images/gallery.json").status_code == 404  # a real file, but not a gallery id
    assert client.get("/v1/images/gallery.parquet").status_code == 404
    assert client.get("/v1/images/..").status_code in (400, 404)
    assert client.get("/v1/images/.hidden").status_code == 400
    assert client.get("/v1/images/..%2Fgallery.json").status_code == 404
    assert client.get("/v1/images/%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/v1/images/" + "a" * 300).status_code == 400


def test_concurrent_batch_with_bad_images(client, live_app, photos, bad_images):
    """Fire good and bad images at once: they share batches, every good one succeeds with the
    answer it gets alone, every bad one gets its own 4xx."""
    good = photos[:10]
    bad = [(n, d) for n, (d, _, _) in bad_images.items() if n != "empty"]
    alone = {n: [h["image_id"] for h in _search(client, d, k=3).json()["faces"][0]["results"]] for n, d in good}
    jobs = [(n, d, True) for n, d in good] + [(n, d, False) for n, d in bad]
    order = np.random.default_rng(0).permutation(len(jobs))
    jobs = [jobs[i] for i in order]

    def send(job):
        with httpx.Client(base_url=live_app["url"], timeout=120) as c:
            return job, _search(c, job[1], k=3)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    batch_sizes = []
    for (name, _, is_good), r in results:
        if is_good:
            assert r.status_code == 200, (name, r.text)
            assert [h["image_id"] for h in r.json()["faces"][0]["results"]] == alone[name]
            batch_sizes.append(r.json()["timing_ms"]["batch_size"])
        else:
            assert r.status_code == bad_images[name][1], (name, r.text)
    assert max(batch_sizes) >= 2, f"no request was batched with another: {batch_sizes}"


def test_gallery_add_requires_token(client, live_app, photos):
    data = photos[0][1]
    before = client.get("/v1/models").json()["gallery_version"]
    r = client.post("/v1/gallery", files={"image": ("a.jpg", data, "image/jpeg")}, data={"identity": "5"})
    assert r.status_code == 401 and "missing bearer token" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/v1/gallery", files={"image": ("a.jpg", data, "image/jpeg")}, data={"identity": "5"},
                    headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401 and "wrong bearer token" in r.json()["detail"]
    r = client.post("/v1/gallery", files={"image": ("a.jpg", data, "image/jpeg")}, data={"identity": "5"},
                    headers={"Authorization": TOKEN})  # no scheme
    assert r.status_code == 401
    assert client.get("/v1/models").json()["gallery_version"] == before


def test_gallery_add_then_search(client, live_app, photos, bad_images, serve_artifacts):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = json.loads((live_app["gallery"] / "gallery.json").read_text())
    # one bad image among good ones: nothing is added
    r = client.post("/v1/gallery", headers=auth, data={"identity": "4242"},
                    files=[("image", ("a.jpg", photos[1][1], "image/jpeg")), ("image", ("b.jpg", bad_images["no_face"][0], "image/jpeg"))])
    assert r.status_code == 422 and "image 1: no face detected" in r.json()["detail"] and "nothing was added" in r.json()["detail"]
    r = client.post("/v1/gallery", headers=auth, data={"identity": "-3"}, files={"image": ("a.jpg", photos[1][1], "image/jpeg")})
    assert r.status_code == 422 and "identity must be an integer >= 0" in r.json()["detail"]
    assert json.loads((live_app["gallery"] / "gallery.json").read_text())["version"] == before["version"]

    # a new photo (mirrored: not in the gallery) of identity 4242
    from facerec.data.images import decode_image, encode_jpeg

    new_photo = encode_jpeg(np.ascontiguousarray(decode_image(photos[2][1])[:, ::-1]), quality=93)
    r = client.post("/v1/gallery", headers=auth, data={"identity": "4242"}, files={"image": ("new.jpg", new_photo, "image/jpeg")})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["added"] == 1 and out["identity"] == 4242 and out["gallery_version"] == before["version"] + 1
    new_id = out["image_ids"][0]
    # persisted before the answer: the manifest and table on disk already hold it
    on_disk = json.loads((live_app["gallery"] / "gallery.json").read_text())
    assert on_disk["version"] == out["gallery_version"] and on_disk["rows"] == before["rows"] + 1
    table = read_table(live_app["gallery"])
    assert table["image_id"].iloc[-1] == new_id and int(table["identity"].iloc[-1]) == 4242
    # and searchable at once with both models
    for model in ("mnv3", "r18"):
        top = _search(client, new_photo, k=2, model=model).json()["faces"][0]["results"][0]
        assert top["image_id"] == new_id and top["identity"] == 4242
        assert top["distance"] == pytest.approx(0.0, abs=1e-4)
    assert client.get(f"/v1/images/{new_id}").status_code == 200

    # JSON variant
    r = client.post("/v1/gallery", headers=auth, json={"identity": 4243, "images_base64": [base64.b64encode(photos[3][1]).decode()]})
    assert r.status_code == 201 and r.json()["gallery_version"] == before["version"] + 2


def test_external_index_change_is_picked_up(client, live_app, photos, serve_artifacts):
    """Another writer (another replica, a rebuild job) commits a new version on disk: the
    Retriever swaps to it without restart; the explicit reload() answers with it too."""
    from ray import serve

    from facerec.data.images import decode_image, encode_jpeg
    from facerec.gallery import add_to_gallery

    photo = encode_jpeg(decode_image(photos[6][1]), quality=80)  # a re-encoded copy
    v0 = client.get("/v1/models").json()["gallery_version"]
    emb = {m: _reference_query(c, photo)[None] for m, c in serve_artifacts["checkpoints"].items()}
    crop = (live_app["gallery"] / "crops" / f"{served_ids(live_app['gallery'])[photos[6][0]]}.png").read_bytes()
    out = add_to_gallery(live_app["gallery"], emb, [9090], [crop])
    deadline = time.time() + 30
    while time.time() < deadline:
        body = _search(client, photo, k=1).json()
        if body["gallery_version"] == out["version"]:
            break
        time.sleep(0.3)
    assert body["gallery_version"] == out["version"] == v0 + 1
    top = body["faces"][0]["results"][0]
    assert top["image_id"] == out["image_ids"][0] and top["identity"] == 9090
    assert top["distance"] == pytest.approx(0.0, abs=1e-4)
    handle = serve.get_deployment_handle("Retriever", app_name=live_app["app_name"])
    info = handle.reload.remote(force=True).result()
    assert info["version"] == out["version"] and info["rows"] == out["row_ids"][0] + 1


def test_models_health_docs(client, serve_artifacts):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["models"] == ["mnv3", "r18"]
    m = client.get("/v1/models").json()
    assert m["default"] == "mnv3"
    by_name = {x["name"]: x for x in m["models"]}
    for name, mid in serve_artifacts["model_ids"].items():
        assert by_name[name]["model_id"] == mid and by_name[name]["index_kind"] == "kdtree"
        assert by_name[name]["max_batch_size"] == 8 and by_name[name]["image_size"] == 64
    assert len(m["attribute_names"]) == 40
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/v1/search"]["post"]
    assert set(search["requestBody"]["content"]) >= {"multipart/form-data", "application/json"}
    assert {"400", "413", "422"} <= set(search["responses"])
    assert "/v1/gallery" in spec["paths"] and "/v1/images/{image_id}" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "<title>facerec" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_second_app_under_route_prefix(live_app, serve_artifacts, photos):
    """A second application on the same gallery, serving only one of its two models, mounted at
    /subset: links carry the prefix, and adding images is refused with 409 (they could not
    enter the other model's index) instead of a 500."""
    from ray import serve

    from facerec.serve.app import ServeConfig, build_app

    cfg = ServeConfig(gallery_dir=str(live_app["gallery"]),
                      models=[{"name": "r18", "checkpoint": serve_artifacts["checkpoints"]["r18"], "num_cpus": 0.2,
                               "max_batch_size": 4, "torch_threads": 1}],
                      gallery_token=TOKEN, retriever_num_cpus=0.05, ingress_num_cpus=0.05, allow_untrained=True)
    serve.run(build_app(cfg), name="subset", route_prefix="/subset")
    try:
        with httpx.Client(base_url=live_app["url"] + "/subset", timeout=120) as c:
            body = _search(c, photos[0][1], k=2).json()
            assert body["model"] == "r18"
            hit = body["faces"][0]["results"][0]
            assert hit["thumbnail_url"] == f"/subset/v1/images/{hit['image_id']}"
            assert httpx.get(live_app["url"] + hit["thumbnail_url"], timeout=60).status_code == 200
            r = c.post("/v1/gallery", headers={"Authorization": f"Bearer {TOKEN}"}, data={"identity": "1"},
                       files={"image": ("a.jpg", photos[0][1], "image/jpeg")})
            assert r.status_code == 409, r.text
            assert "serve all of the gallery's models ['mnv3', 'r18']" in r.json()["detail"]
            assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
    finally:
        serve.delete("subset")
