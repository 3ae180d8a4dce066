"""The real Serve application over real HTTP: search against an exact computation, every bad
input with its status, gallery add with/without token, hot index reload, images endpoint, and a
batch mixing bad and good images."""

from __future__ import annotations

import base64
import json
import re
import socket
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

    from facerec.data.haar import crop_face
    from facerec.data.images import decode_image
    from facerec.detect import DetectorConfig
    from facerec.data.transforms import test_transform
    from facerec.models import load_embedder

    model, meta = load_embedder(checkpoint)
    rgb = decode_image(data)
    box = DetectorConfig().build().find(rgb).boxes[0]
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
    models = client.get("/v1/models").json()
    rows = models["gallery_rows"]
    assert models["gallery_labelled"] is True  # a CelebA-layout gallery: its identities are the folder's labels
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

    from facerec.detect import DetectorConfig

    ckpt = serve_artifacts["checkpoints"]["mnv3"]
    gallery_emb, table = _reference_gallery(live_app["gallery"], ckpt)
    model, meta = load_embedder(ckpt)
    rgb = decode_image(both)
    # the detector's own (sub-pixel) boxes, which the response reports rounded
    exact = {tuple(int(round(v)) for v in b): b for b in DetectorConfig().build().find(rgb).boxes}
    for face in every["faces"]:
        b = exact[tuple(face["box"][k] for k in ("x", "y", "w", "h"))]
        with torch.inference_mode():
            q = model(test_transform(int(meta["image_size"]))(crop_face(rgb, b, 0.2, 218))[None]).numpy()[0]
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
    assert r.status_code == 422 and "image 1: no face in the" in r.json()["detail"] and "nothing was added" in r.json()["detail"]
    r = client.post("/v1/gallery", headers=auth, data={"identity": "-3"}, files={"image": ("a.jpg", photos[1][1], "image/jpeg")})
    assert r.status_code == 422 and "field identity: Input should be greater than or equal to 0 (got '-3')" in r.json()["detail"]
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


# --------------------------------------------------------------------------------------------
# Hardening: what a public API meets (issue 13)
# --------------------------------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _mirrored(data: bytes, quality: int) -> bytes:
    """A photo that is not in the gallery yet (mirrored, re-encoded)."""
    from facerec.data.images import decode_image, encode_jpeg

    return encode_jpeg(np.ascontiguousarray(decode_image(data)[:, ::-1]), quality=quality)


def _mirrored_with_face(photos, quality: int, start: int) -> bytes:
    """The first of ``photos`` from ``start`` on whose mirrored copy still has a face the served
    detector accepts (a drawn face can score under the gate once mirrored and re-encoded)."""
    from facerec.data.images import decode_image
    from facerec.detect import DetectorConfig

    det = DetectorConfig().build()
    for _, data in photos[start:] + photos[:start]:
        photo = _mirrored(data, quality)
        if len(det.find(decode_image(photo))):
            return photo
    pytest.fail("no synthetic photo keeps an accepted face once mirrored")


@pytest.mark.parametrize("identity", [2**63, 2**53, -1])
@pytest.mark.parametrize("how", ["form", "json"])
def test_out_of_range_identity_is_refused_before_any_write(client, live_app, photos, how, identity):
    """2**63 used to pass the check, overflow in the Retriever (500) after index folders and a
    crop were written. Now every identity outside 0..2**53-1 is a 422 and the gallery folder is
    exactly as it was."""
    before = _tree(live_app["gallery"])
    if how == "form":
        r = client.post("/v1/gallery", headers=AUTH, data={"identity": str(identity)},
                        files={"image": ("a.jpg", photos[7][1], "image/jpeg")})
    else:
        r = client.post("/v1/gallery", headers=AUTH,
                        json={"identity": identity, "images_base64": [base64.b64encode(photos[7][1]).decode()]})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "bad_parameter" and set(r.json()) == {"detail", "code"}
    bound = "less than or equal to 9007199254740991" if identity > 0 else "greater than or equal to 0"
    assert re.search(rf"identity: Input should be {bound} \(got '?{identity}'?\)", r.json()["detail"]), r.json()
    assert _tree(live_app["gallery"]) == before


def test_largest_identity_is_stored_exactly(client, live_app, photos):
    from facerec.gallery import read_table

    r = client.post("/v1/gallery", headers=AUTH, data={"identity": str(2**53 - 1)},
                    files={"image": ("a.jpg", _mirrored(photos[8][1], 91), "image/jpeg")})
    assert r.status_code == 201, r.text
    table = read_table(live_app["gallery"])
    row = table[table["image_id"] == r.json()["image_ids"][0]]
    assert int(row["identity"].iloc[0]) == 2**53 - 1 == r.json()["identity"]


@pytest.mark.parametrize("payload, pattern", [
    ({"identity": True}, r"identity: Input should be a valid integer \(got true\)"),
    ({"identity": "12"}, r"identity: Input should be a valid integer \(got '12'\)"),
])
def test_json_identity_is_strict(client, live_app, photos, payload, pattern):
    before = _tree(live_app["gallery"])
    r = client.post("/v1/gallery", headers=AUTH, json={**payload, "images_base64": [base64.b64encode(photos[7][1]).decode()]})
    assert r.status_code == 422 and re.search(pattern, r.json()["detail"]), r.text
    assert _tree(live_app["gallery"]) == before


@pytest.mark.parametrize("query, pattern", [
    ("k=0", r"^query parameter k: Input should be greater than or equal to 1 \(got '0'\)$"),
    ("k=abc", r"^query parameter k: Input should be a valid integer, unable to parse string as an integer \(got 'abc'\)$"),
    ("faces=bogus", r"^query parameter faces: Input should be 'largest' or 'all' \(got 'bogus'\)$"),
])
def test_query_string_errors_have_the_one_error_shape(client, photos, query, pattern):
    r = client.post(f"/v1/search?{query}", content=photos[0][1], headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422
    assert set(r.json()) == {"detail", "code"} and r.json()["code"] == "bad_parameter", r.text
    assert re.search(pattern, r.json()["detail"]), r.json()


def test_json_k_true_is_not_1(client, photos):
    image = base64.b64encode(photos[0][1]).decode()
    r = client.post("/v1/search", json={"image_base64": image, "k": True})
    assert r.status_code == 422 and re.search(r"^k: Input should be a valid integer \(got true\)$", r.json()["detail"]), r.text
    assert client.post("/v1/search", json={"image_base64": image, "k": 2}).status_code == 200


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nowhere", 404, "not_found"),
    ("GET", "/v1/search", 405, "method_not_allowed"),
    ("POST", "/v1/search", 415, "unsupported_media_type"),
])
def test_every_4xx_has_the_one_error_shape(client, method, path, status, code):
    r = client.request(method, path)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"detail", "code"} and r.json()["code"] == code and r.json()["detail"]


def test_multipart_form_limits(client, photos):
    """Starlette's multipart limits: a search takes one file; a malformed body is a 400."""
    two = [("image", ("a.jpg", photos[0][1], "image/jpeg")), ("image", ("b.jpg", photos[1][1], "image/jpeg"))]
    r = client.post("/v1/search", files=two)
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    assert re.search(r"Too many files\. Maximum number of files is 1", r.json()["detail"]), r.text
    r = client.post("/v1/search", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code in (400, 422) and set(r.json()) == {"detail", "code"}, r.text


def test_openapi_documents_the_uploads(client):
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/jpeg"} <= set(search)
    def schema_of(content, field):  # the non-null alternative of a generated form field
        form = spec["components"]["schemas"][content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]]
        s = form["properties"][field]
        return next(x for x in s.get("anyOf", [s]) if x.get("type") != "null"), form

    image, form = schema_of(search, "image")  # generated from the UploadFile / Form parameters
    assert image == {"type": "string", "contentMediaType": "application/octet-stream"}
    assert {"k", "model", "faces"} <= set(form["properties"])
    add = spec["paths"]["/v1/gallery"]["post"]["requestBody"]["content"]
    assert schema_of(add, "image")[0]["type"] == "array"
    ident = schema_of(add, "identity")[0]
    assert ident["minimum"] == 0 and ident["maximum"] == 2**53 - 1


def test_security_headers_and_favicon(client, photos):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
    image_id = _search(client, photos[0][1], k=1).json()["faces"][0]["results"][0]["image_id"]
    responses = [client.get(p) for p in ("/", "/static/app.js", "/docs", "/openapi.json", "/v1/models", "/healthz",
                                         f"/v1/images/{image_id}", "/nowhere", "/favicon.ico")]
    responses += [client.post("/v1/search?k=0", content=b"x", headers={"Content-Type": "image/jpeg"}),
                  client.post("/v1/gallery", data={"identity": "1"}, files={"image": ("a.jpg", b"x", "image/jpeg")})]
    for r in responses:
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", r.url
        assert h["x-frame-options"] == "DENY", r.url
        assert "frame-ancestors 'none'" in h["content-security-policy"], r.url
        assert h["referrer-policy"] in ("no-referrer", "same-origin"), r.url


def test_docs_need_no_network(client):
    html = client.get("/docs").text
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method in item:
            assert f"{method.upper()}</span> <code>{path}</code>" in html, (method, path)
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links and all(u.startswith(("/", "#")) for u in links), [u for u in links if not u.startswith(("/", "#"))]
    assert "cdn" not in html.lower()
    assert client.get("/static/docs.css").status_code == 200


def test_duplicate_add_is_reported_not_stored_twice(client, live_app, photos):
    from facerec.gallery import read_table

    photo = _mirrored_with_face(photos, 88, 9)
    first = client.post("/v1/gallery", headers=AUTH, data={"identity": "5151"}, files={"image": ("a.jpg", photo, "image/jpeg")})
    assert first.status_code == 201 and first.json()["duplicate_of"] == [None] and first.json()["added"] == 1, first.text
    rows = len(read_table(live_app["gallery"]))
    again = client.post("/v1/gallery", headers=AUTH, data={"identity": "5151"}, files={"image": ("b.jpg", photo, "image/jpeg")})
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["added"] == 0 and body["duplicate_of"] == first.json()["image_ids"] == body["image_ids"]
    assert body["gallery_version"] == first.json()["gallery_version"] and len(read_table(live_app["gallery"])) == rows
    # the same bytes twice in one request, plus a new photo: one new row each, the repeat points at it
    other = _mirrored(photos[10][1], 87)
    both = client.post("/v1/gallery", headers=AUTH, data={"identity": "5151"},
                       files=[("image", ("c.jpg", other, "image/jpeg")), ("image", ("d.jpg", other, "image/jpeg")),
                              ("image", ("e.jpg", photo, "image/jpeg"))])
    assert both.status_code == 201, both.text
    b = both.json()
    assert b["added"] == 1 and b["duplicate_of"] == [None, b["image_ids"][0], first.json()["image_ids"][0]]
    assert len(read_table(live_app["gallery"])) == rows + 1


# ---- the UploadGate: request bodies bounded before they are read ---------------------------

def _open(url: str, path: str, headers: dict[str, str], body: bytes = b"") -> socket.socket:
    """A raw HTTP/1.1 request: headers (and ``body``, maybe less than declared) sent, nothing more."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(head.encode() + b"\r\n" + body)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the HTTP response read from socket ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _response(s: socket.socket) -> tuple[int, dict[str, str], dict]:
    status, headers, body = read_response(s)
    return status, headers, json.loads(body or b"{}")


def test_declared_length_over_the_limit_is_refused_before_the_body(live_app):
    # nothing of the 50 MB is sent: the answer comes from the headers alone
    with _open(live_app["url"], "/v1/search", {"Content-Type": "image/jpeg", "Content-Length": "50000000"}) as s:
        status, headers, body = _response(s)
    limit = live_app["config"].max_upload_bytes * 4 // 3 + 64 * 1024  # one photo as base64 JSON + form overhead
    assert status == 413 and body["code"] == "too_large", body
    assert body["detail"] == f"request body of 50,000,000 bytes exceeds the limit of {limit:,} bytes"
    assert headers["x-content-type-options"] == "nosniff"
    # a gallery write without the token is refused before its body too
    with _open(live_app["url"], "/v1/gallery", {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "9000000"}) as s:
        status, headers, body = _response(s)
    assert status == 401 and body["code"] == "unauthorized" and headers["www-authenticate"].startswith("Bearer")


def test_undeclared_body_is_cut_at_the_limit(client):
    def chunks():  # chunked transfer encoding: no Content-Length to check up front
        for _ in range(10):
            yield b"\x00" * 100_000

    r = client.post("/v1/search", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    assert re.search(r"request body exceeds the limit of [\d,]+ bytes", r.json()["detail"])


def test_uploads_in_flight_over_the_budget_get_503(live_app):
    """Two uploads that declared 450 kB each and are still sending hold 900 kB of the replica's
    1 MB budget: the next upload is refused at once with 503 + Retry-After (not read, not
    queued); once they are gone, uploads are accepted again."""
    url = live_app["url"]
    junk = b"\xff\xd8" + b"\x00" * 199_998

    def probe() -> tuple[int, dict[str, str], dict]:
        with _open(url, "/v1/search", {"Content-Type": "image/jpeg", "Content-Length": str(len(junk))}, junk) as s:
            return _response(s)

    held = [_open(url, "/v1/search", {"Content-Type": "image/jpeg", "Content-Length": "450000"}, b"\xff\xd8" + b"\x00" * 998)
            for _ in range(2)]
    try:
        deadline = time.time() + 60
        status, headers, body = probe()
        while status != 503 and time.time() < deadline:  # until the Ingress has both held requests
            time.sleep(0.2)
            status, headers, body = probe()
        assert status == 503, (status, body)
        assert body["code"] == "busy" and "1,000,000 bytes in flight at most" in body["detail"]
        assert int(headers["retry-after"]) >= 1
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 60
    status, _, body = probe()
    while status == 503 and time.time() < deadline:  # the closed requests release their reservation
        time.sleep(0.2)
        status, _, body = probe()
    assert status == 400 and body["code"] == "unreadable", (status, body)  # accepted, read, judged: not an image


def test_ingress_returns_upload_buffers_to_the_system(live_app):
    """The Ingress replica process runs with glibc's mmap threshold fixed at 1 MB (its large
    upload buffers are unmapped when freed instead of kept on the heap)."""
    from facerec.serve.app import INGRESS_ENV

    def cmdline(d: Path) -> bytes:
        try:
            return (d / "cmdline").read_bytes()
        except OSError:  # a process that ended meanwhile
            return b""

    pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and b"ServeReplica:facerec:Ingress" in cmdline(d)]
    assert len(pids) == 1, pids
    environ = (Path("/proc") / str(pids[0]) / "environ").read_bytes().split(b"\0")
    assert INGRESS_ENV == {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    assert b"MALLOC_MMAP_THRESHOLD_=1048576" in environ


def test_replica_killed_during_a_request_gives_503_with_retry_after(live_app, photos):
    """A search is inside the mnv3 Embedder replica (held in its batch queue: the replica's
    batch wait is raised to 30 s through its own reconfigure) when the replica's actor is
    killed: the answer is a 503 with Retry-After, not a bare 500. Serve then starts a new
    replica (with the deployment's own batching) and searches succeed again. Last in this
    module: the replica it kills is back before the next module's tests."""
    import ray
    from ray import serve

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::facerec#Embedder_mnv3#")]
    assert len(replicas) == 1, replicas
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    handle = serve.get_deployment_handle("Embedder_mnv3", app_name=live_app["app_name"])
    handle.reconfigure.remote({"max_batch_size": 8, "batch_wait_timeout_s": 30.0}).result()
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=live_app["url"], timeout=120) as c:
        pending = pool.submit(_search, c, photos[11][1], k=1, model="mnv3")
        time.sleep(2.0)  # it reaches the replica in milliseconds, then waits there for a batch
        assert not pending.done(), pending.result().text
        ray.kill(victim, no_restart=True)
        r = pending.result(timeout=120)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "replica_died" and "retry" in r.json()["detail"], r.text
    assert int(r.headers["retry-after"]) >= 1
    with httpx.Client(base_url=live_app["url"], timeout=120) as c:
        deadline = time.time() + 120
        r = _search(c, photos[11][1], k=1, model="mnv3")
        while r.status_code != 200 and time.time() < deadline:
            time.sleep(0.5)
            r = _search(c, photos[11][1], k=1, model="mnv3")
        assert r.status_code == 200, r.text
