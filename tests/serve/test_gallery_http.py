"""A gallery that can forget, over real HTTP: deletes by image and by identity (404 for what does
not exist), nothing of a deleted crop left in any file of the gallery folder across a restart,
identity listings with display names, a read token, no-store face images, a query photo never
written to disk, deletes racing adds and searches, and a Retriever replica killed mid-delete.

Runs a second application ("forget", at /forget) on a private copy of the test gallery, so the
rows it deletes are not missed by the other HTTP tests."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import TOKEN, served_ids
from .test_web import browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.slow

READ_TOKEN = "read-token-abcdefgh"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
PREFIX = "/forget"


def _config(gallery: Path, serve_artifacts):
    from facerec.serve.app import ServeConfig

    return ServeConfig(gallery_dir=str(gallery),
                       models=[{"name": n, "checkpoint": c, "num_cpus": 0.2, "max_batch_size": 4, "torch_threads": 1}
                               for n, c in serve_artifacts["checkpoints"].items()],
                       default_model="mnv3", gallery_token=TOKEN, read_token=READ_TOKEN, reload_poll_s=0.25,
                       retriever_num_cpus=0.05, ingress_num_cpus=0.05, allow_untrained=True)


def _start(gallery: Path, serve_artifacts) -> None:
    from ray import serve

    from facerec.serve.app import build_app

    serve.run(build_app(_config(gallery, serve_artifacts)), name="forget", route_prefix=PREFIX)


@pytest.fixture(scope="module")
def forget(live_app, serve_artifacts, tmp_path_factory):
    """dict(url, gallery, client) of the "forget" app; deleted at the end of the module."""
    from ray import serve

    gallery = tmp_path_factory.mktemp("forget") / "gallery"
    shutil.copytree(serve_artifacts["gallery"], gallery)
    _start(gallery, serve_artifacts)
    try:
        with httpx.Client(base_url=live_app["url"] + PREFIX, timeout=120) as c:
            yield {"url": live_app["url"] + PREFIX, "gallery": gallery, "client": c}
    finally:
        serve.delete("forget")


def _search(c, data: bytes, headers=READ, **params):
    return c.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")},
                  data={k: str(v) for k, v in params.items()}, headers=headers)


def _files_containing(root: Path, needle: bytes) -> list[str]:
    out = []
    for p in Path(root).rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                out.append(str(p))
        except OSError:
            continue  # sockets, files removed meanwhile
    return out


def _table(gallery: Path):
    from facerec.gallery import read_table

    return read_table(gallery)


def _wait_healthy(c, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if c.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the app did not become healthy again")


def test_read_token_and_private_images(forget, photos):
    c, gallery = forget["client"], forget["gallery"]
    name, data = photos[0]
    image_id = served_ids(gallery)[name]
    assert _search(c, data, headers={}).status_code == 401
    assert _search(c, data, headers={"Authorization": "Bearer nope-nope-nope"}).status_code == 401
    r = _search(c, data, k=3)
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["results"][0]["image_id"] == image_id
    assert _search(c, data, headers=AUTH, k=3).status_code == 200  # the gallery token reads too
    assert c.get(f"/v1/images/{image_id}").status_code == 401
    img = c.get(f"/v1/images/{image_id}", headers=READ)
    assert img.status_code == 200 and img.headers["cache-control"] == "private, no-store"
    # the dataset's file name is not an id: ids cannot be enumerated from it
    assert c.get(f"/v1/images/{name}", headers=READ).status_code == 404
    assert c.get("/v1/gallery/identities").status_code == 401


def test_page_asks_for_the_read_token_and_shows_protected_thumbnails(forget, browser, photos):
    # The page of a server with a read token: the first search is refused (401), the page shows the
    # token field, and with the token it searches again and loads the (protected) thumbnails.
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    try:
        pg = ctx.new_page()
        pg.goto(forget["url"] + "/")
        pg.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=60_000)
        assert pg.is_hidden("#token-label")
        pg.set_input_files("#file", files=[{"name": "q.jpg", "mimeType": "image/jpeg", "buffer": photos[0][1]}])
        pg.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=120_000)
        assert "needs a read token" in pg.inner_text("#status")
        assert pg.is_visible("#token-label")
        pg.fill("#token", READ_TOKEN)
        pg.dispatch_event("#token", "change")
        pg.wait_for_function(
            "(() => { const imgs = [...document.querySelectorAll('#results li img')];"
            " return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0); })()",
            timeout=120_000)
        assert not pg.evaluate("document.getElementById('status').classList.contains('error')")
        assert pg.evaluate("sessionStorage.length + localStorage.length") == 0  # the token is kept nowhere
    finally:
        ctx.close()


def test_identities_listing_and_display_names(forget):
    c, gallery = forget["client"], forget["gallery"]
    table = _table(gallery)
    counts = table.groupby("identity").size()
    first = c.get("/v1/gallery/identities?limit=4", headers=READ).json()
    assert first["total"] == len(counts)
    assert [(i["identity"], i["images"]) for i in first["identities"]] == list(counts.items())[:4]
    rest = c.get(f"/v1/gallery/identities?limit=100&cursor={first['next_cursor']}", headers=READ).json()
    assert [i["identity"] for i in first["identities"] + rest["identities"]] == counts.index.tolist()
    assert rest["next_cursor"] is None
    assert c.get("/v1/gallery/identities?cursor=abc", headers=READ).status_code == 422
    ident = int(counts.index[1])
    r = c.put(f"/v1/gallery/identities/{ident}", json={"display_name": "Ada Lovelace"}, headers=READ)
    assert r.status_code == 401  # naming is a write: the gallery token
    r = c.put(f"/v1/gallery/identities/{ident}", json={"display_name": "Ada Lovelace"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["display_name"] == "Ada Lovelace", r.text
    assert c.put("/v1/gallery/identities/999999", json={"display_name": "x"}, headers=AUTH).status_code == 404
    assert c.put(f"/v1/gallery/identities/{ident}", json={"display_name": ""}, headers=AUTH).status_code == 422
    listed = {i["identity"]: i for i in c.get("/v1/gallery/identities?limit=1000", headers=READ).json()["identities"]}
    assert listed[ident]["display_name"] == "Ada Lovelace"


def test_delete_image_and_identity_leave_nothing_across_restart(forget, photos, serve_artifacts):
    from ray import serve

    from facerec.data.images import decode_image, encode_jpeg

    c, gallery = forget["client"], forget["gallery"]
    ids = served_ids(gallery)
    table = _table(gallery).set_index("image_id")
    name, data = photos[2]
    victim = ids[name]
    ident = int(table.loc[victim, "identity"])
    same_person = [ids[n] for n, _ in photos if n in ids and int(table.loc[ids[n], "identity"]) == ident]
    crops = {i: (gallery / table.loc[i, "crop_path"]).read_bytes() for i in table.index[table["identity"] == ident]}
    assert len(crops) >= 2

    assert c.delete(f"/v1/gallery/images/{victim}").status_code == 401
    r = c.delete(f"/v1/gallery/images/{victim}", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == 1 and r.json()["image_ids"] == [victim]
    assert c.get(f"/v1/images/{victim}", headers=READ).status_code == 404
    assert c.delete(f"/v1/gallery/images/{victim}", headers=AUTH).status_code == 404
    assert c.delete("/v1/gallery/images/doesNotExist123", headers=AUTH).status_code == 404
    # the photo itself now finds other rows only
    hits = _search(c, data, k=50).json()["faces"][0]["results"]
    assert victim not in {h["image_id"] for h in hits}

    r = c.delete(f"/v1/gallery/identities/{ident}", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == len(crops) - 1 and r.json()["identities"] == [ident]
    assert c.delete(f"/v1/gallery/identities/{ident}", headers=AUTH).status_code == 404
    assert c.delete("/v1/gallery/identities/987654", headers=AUTH).status_code == 404

    def check() -> None:
        # another photo of that person (a mirrored copy of one of their photos) finds none of their rows
        other = next(n for n, _ in photos if ids.get(n) in same_person and ids[n] != victim)
        mirrored = encode_jpeg(np.ascontiguousarray(decode_image(dict(photos)[other])[:, ::-1]), quality=90)
        for model in ("mnv3", "r18"):
            res = _search(c, mirrored, k=50, model=model)
            assert res.status_code == 200, res.text
            assert not {h["image_id"] for h in res.json()["faces"][0]["results"]} & set(crops)
            assert all(h["identity"] != ident for h in res.json()["faces"][0]["results"])
        for i in crops:
            assert c.get(f"/v1/images/{i}", headers=READ).status_code == 404
        for i, png in crops.items():
            assert _files_containing(gallery, png) == [], f"bytes of deleted crop {i} still on disk"
        listed = c.get("/v1/gallery/identities?limit=1000", headers=READ).json()["identities"]
        assert ident not in {x["identity"] for x in listed}

    check()
    serve.delete("forget")  # a restart: new replicas load the gallery from disk
    _start(gallery, serve_artifacts)
    check()


def test_query_photo_is_never_written(forget, photos, live_app):
    """A search photo with a unique byte pattern (a JPEG comment): after searching, no file of the
    gallery or of Ray's session folder (logs, spilled objects) holds it."""
    import ray

    c, gallery = forget["client"], forget["gallery"]
    marker = b"facerec-query-marker-" + secrets.token_hex(16).encode()
    data = photos[5][1]
    assert data[:2] == b"\xff\xd8"
    tagged = data[:2] + b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker + data[2:]
    r = _search(c, tagged, k=3)
    assert r.status_code == 200, r.text
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.is_dir()
    assert _files_containing(gallery, marker) == []
    assert _files_containing(session, marker) == []


def test_deletes_racing_adds_and_searches(forget, photos):
    """Deletes of identities, adds of new photos and searches at once: no 5xx, every answer
    consistent, and afterwards no search returns a deleted identity."""
    from facerec.data.images import decode_image, encode_jpeg

    c, gallery = forget["client"], forget["gallery"]
    table = _table(gallery)
    victims = [int(i) for i in table["identity"].unique()[-2:]]
    live = [(n, d) for n, d in photos if n in served_ids(gallery)
            and int(table.set_index("image_id").loc[served_ids(gallery)[n], "identity"]) not in victims]
    assert len(live) >= 3, f"only {len(live)} photos of identities that stay"
    new_photos = [encode_jpeg(np.ascontiguousarray(decode_image(d)[:, ::-1]), quality=91) for _, d in live[:3]]

    def job(kind_arg):
        kind, arg = kind_arg
        with httpx.Client(base_url=forget["url"], timeout=120) as cc:
            if kind == "delete":
                return kind, arg, cc.delete(f"/v1/gallery/identities/{arg}", headers=AUTH)
            if kind == "add":
                return kind, arg, cc.post("/v1/gallery", headers=AUTH, data={"identity": str(7000 + arg)},
                                          files={"image": ("n.jpg", new_photos[arg], "image/jpeg")})
            return kind, arg, _search(cc, live[arg % len(live)][1], k=20)

    jobs = [("delete", v) for v in victims] + [("add", i) for i in range(3)] + [("search", i) for i in range(6)]
    order = np.random.default_rng(1).permutation(len(jobs))
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(job, [jobs[i] for i in order]))
    for kind, arg, r in results:
        assert r.status_code < 500, (kind, arg, r.status_code, r.text)
        want = {"delete": {200}, "add": {201, 200}, "search": {200}}[kind]
        assert r.status_code in want, (kind, arg, r.status_code, r.text)
        if kind == "search":
            # a search sees one version: each hit's image is either still there or deleted by then,
            # never a half-deleted row (identity or crop without the other)
            for h in r.json()["faces"][0]["results"]:
                assert isinstance(h["identity"], int) and h["image_id"]
    deadline = time.time() + 10
    while time.time() < deadline:  # every replica has applied the last version
        version = c.get("/v1/models", headers=READ).json()["gallery_version"]
        if version == max(r.json().get("gallery_version", 0) for k, _, r in results if k != "search"):
            break
        time.sleep(0.25)
    after = _table(gallery)
    assert not set(victims) & set(after["identity"].tolist())
    assert {7000, 7001, 7002} <= set(after["identity"].tolist())
    for _, d in live[:4]:
        hits = _search(c, d, k=40).json()["faces"][0]["results"]
        assert not {h["identity"] for h in hits} & set(victims)
        for h in hits[:3]:
            assert c.get(f"/v1/images/{h['image_id']}", headers=READ).status_code == 200


def test_replica_killed_during_a_delete(forget):
    """The Retriever replica dies while its delete waits for the gallery's write lock (held here):
    the client gets 503 with Retry-After, nothing of the delete is applied, and the retried delete
    succeeds on the replica Serve starts in its place."""
    import ray

    from facerec.gallery import read_manifest, write_lock

    c, gallery = forget["client"], forget["gallery"]
    table = _table(gallery)
    ident = int(table["identity"].iloc[0])
    n_rows = int((table["identity"] == ident).sum())
    before = read_manifest(gallery)
    box: dict = {}
    with write_lock(gallery):
        t = threading.Thread(target=lambda: box.setdefault("r", c.delete(f"/v1/gallery/identities/{ident}", headers=AUTH)))
        t.start()
        time.sleep(2.0)  # the request reaches the replica, which blocks on the lock
        names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "forget#Retriever" in a["name"]]
        assert names, ray.util.list_named_actors(all_namespaces=True)
        for a in names:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
        t.join(120)
    r = box["r"]
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert read_manifest(gallery) == before  # not applied at all
    assert int((_table(gallery)["identity"] == ident).sum()) == n_rows
    _wait_healthy(c)
    r = c.delete(f"/v1/gallery/identities/{ident}", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted"] == n_rows, r.text
