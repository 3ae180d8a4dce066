"""Serving an unlabelled photo folder: its faces clustered into people (the gallery's identities,
labelled: false, ids stable across rebuilds), and people merged, faces moved and people named
over real HTTP, each a committed gallery version another replica sees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import TOKEN

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/people"


def _by_source(gallery: Path) -> dict[str, int]:
    from facerec.gallery import read_table

    t = read_table(gallery)
    return dict(zip(t["source_id"], t["identity"].astype(int)))


@pytest.fixture(scope="module")
def people(serve_artifacts, tmp_path_factory):
    """dict(folder, workdir, gallery, thresholds, build) of a gallery served from an unlabelled copy
    of the synthetic photos (flat: nobody named), clustered on the untrained test models' embeddings
    at thresholds read off those embeddings (they have no calibration)."""
    from facerec.cluster.thresholds import Thresholds
    from facerec.gallery import load_embeddings
    from facerec.serve.local import prepare_gallery

    base = tmp_path_factory.mktemp("unlabelled")
    folder = base / "photos"
    folder.mkdir()
    for p in sorted((serve_artifacts["photos"] / "img_celeba").iterdir()):
        shutil.copyfile(p, folder / p.name)
    old = os.environ.get("FACEREC_CACHE")
    os.environ["FACEREC_CACHE"] = str(base / "cache")
    try:
        def build(thresholds, rebuild=True):
            return prepare_gallery(base / "work", data=folder, checkpoints=serve_artifacts["checkpoints"],
                                   preprocess_engine="local", rebuild=rebuild, cluster_thresholds=thresholds)[0]

        probe = build(Thresholds(link=1e-6, merge=1e-6, origin="given"))  # every face a person of its own
        probe_ids = _by_source(probe)  # before the rebuild below replaces it (same workdir key)
        _, emb, _ = load_embeddings(probe, "mnv3")
        d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        # the median nearest-neighbour distance: about half the faces find company
        at = float(np.median(d.min(axis=1))) * 1.05
        thresholds = Thresholds(link=at, merge=at, origin="given")
        gallery = build(thresholds)
        yield {"folder": folder, "workdir": base / "work", "gallery": gallery, "thresholds": thresholds,
               "build": build, "probe_ids": probe_ids}
    finally:
        if old is None:
            os.environ.pop("FACEREC_CACHE", None)
        else:
            os.environ["FACEREC_CACHE"] = old


def test_unlabelled_folder_becomes_people(people):
    from facerec.cluster.algorithm import ClusterConfig, cluster_embeddings
    from facerec.gallery import load_embeddings, read_manifest

    g = people["gallery"]
    manifest = read_manifest(g)
    assert manifest["labelled"] is False and manifest["names"] == {}
    assert manifest["people"]["model"] == "mnv3" and manifest["people"]["mode"] == "full"
    probe = people["probe_ids"]
    assert sorted(probe.values()) == list(range(len(probe)))  # tiny thresholds: one id per face
    table, emb, _ = load_embeddings(g, "mnv3")
    th = people["thresholds"]
    # the same partition as clustering the gallery's stored embeddings here
    want = cluster_embeddings(emb, ClusterConfig(link=th.link, merge=th.merge, min_faces=1),
                              photos=table["source_id"].to_numpy()).groups
    got = table["identity"].to_numpy()
    assert (got[:, None] == got[None]).tolist() == (want[:, None] == want[None]).tolist()
    sizes = np.bincount(np.unique(got, return_inverse=True)[1])
    assert sizes.max() >= 2 and (sizes == 1).any()  # people of several faces, and one-offs with their own id
    assert (got >= 0).all() and len(np.unique(got)) == manifest["people"]["people"]


def test_ids_stable_across_rebuilds(people):
    g, th = people["gallery"], people["thresholds"]
    first = _by_source(g)
    again = people["build"](th)
    assert again == g and _by_source(g) == first
    # without the kept people, the clustering gives the same ids again (deterministic)
    files = list(people["workdir"].glob("people-*.parquet"))
    assert len(files) == 1
    files[0].unlink()
    people["build"](th)
    assert _by_source(g) == first
    # a restart serves the gallery as built (no rebuild asked)
    assert people["build"](th, rebuild=False) == g and _by_source(g) == first


def test_new_faces_join_existing_people_without_renumbering(people, tmp_path):
    from facerec.cluster.gallery import gallery_people
    from facerec.gallery import load_embeddings, read_manifest

    g = people["gallery"]
    table, emb, _ = load_embeddings(g, "mnv3")
    df = table.assign(image_id=table["source_id"])  # a face's photo, as in the crops table
    models = read_manifest(g)["models"]
    path = tmp_path / "people.parquet"
    ckpts = {"mnv3": models["mnv3"]["checkpoint"]}
    old = df.iloc[:16]
    ids_old, fields = gallery_people(old, {"mnv3": emb[:16]}, models, ckpts, path, people["thresholds"])
    assert fields["people"]["mode"] == "full" and fields["labelled"] is False
    ids_all, fields = gallery_people(df, {"mnv3": emb}, models, ckpts, path, people["thresholds"])
    assert fields["people"]["mode"] == "incremental"
    assert ids_all[:16].tolist() == ids_old.tolist()  # every known face keeps its person
    new = ids_all[16:]
    assert ((np.isin(new, ids_old)) | (new > ids_old.max())).all()


def test_open_set_threshold_of_an_unlabelled_gallery_is_the_calibrations(people):
    from facerec.gallery import load_embeddings
    from facerec.gallery.openset import impostor_curve
    from facerec.serve.retriever import RetrieverCore

    g = people["gallery"]
    table, emb, meta = load_embeddings(g, "mnv3")
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)[np.triu_indices(len(emb), 1)]
    core = RetrieverCore(str(g), {"mnv3": meta["model_id"]},
                         open_set={"mnv3": {"target_fpir": 0.01, "impostors": impostor_curve(d)}})
    decision = core.search("mnv3", emb[:1], 1)["open_set"]
    assert decision["method"] == "calibration" and decision["nonmated_searches"] == 0


# ---- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(people, live_app, serve_artifacts, tmp_path_factory):
    from ray import serve

    from facerec.serve.app import ServeConfig, build_app

    gallery = tmp_path_factory.mktemp("people-app") / "gallery"
    shutil.copytree(people["gallery"], gallery)
    config = ServeConfig(gallery_dir=str(gallery),
                         models=[{"name": n, "checkpoint": c, "num_cpus": 0.2, "max_batch_size": 4, "torch_threads": 1}
                                 for n, c in serve_artifacts["checkpoints"].items()],
                         default_model="mnv3", gallery_token=TOKEN, reload_poll_s=0.25,
                         retriever_num_cpus=0.05, ingress_num_cpus=0.05, allow_untrained=True)
    serve.run(build_app(config), name="people", route_prefix=PREFIX)
    try:
        with httpx.Client(base_url=live_app["url"] + PREFIX, timeout=120) as c:
            yield {"client": c, "gallery": gallery}
    finally:
        serve.delete("people")


def _listing(c) -> dict[int, int]:
    r = c.get("/v1/gallery/identities", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {it["identity"]: it["images"] for it in r.json()["identities"]}


def _top(c, data: bytes) -> dict:
    r = c.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "1", "model": "mnv3"})
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]["results"][0]


def test_merge_move_and_name_people_over_http(app, photos):
    from facerec.gallery import read_manifest, read_table
    from facerec.serve.retriever import RetrieverCore

    c, g = app["client"], app["gallery"]
    table = read_table(g)
    by_source = dict(zip(table["source_id"], table["identity"].astype(int)))
    before = _listing(c)
    # the page words a hit "same person by the clustering", not "by the gallery's label", on this flag
    assert c.get("/v1/models").json()["gallery_labelled"] is False
    assert sum(before.values()) == len(table) and all(it is None for it in
                                                      [x["display_name"] for x in c.get("/v1/gallery/identities").json()["identities"]])
    name, data = next((n, d) for n, d in photos if n in by_source)
    hit = _top(c, data)
    into, other = hit["identity"], next(i for i in sorted(before) if i != hit["identity"])
    v0 = read_manifest(g)["version"]

    r = c.post(f"/v1/gallery/identities/{other}/merge", json={"from": into}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"identity": other, "merged": into, "moved": before[into], "images": before[into] + before[other],
                    "display_name": None, "gallery_version": v0 + 1}
    assert read_manifest(g)["version"] == v0 + 1
    after = _listing(c)
    assert into not in after and after[other] == before[into] + before[other]
    assert _top(c, data)["identity"] == other  # the same face, now of the person it was merged into

    r = c.put(f"/v1/gallery/identities/{other}", json={"display_name": "Grandma"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["gallery_version"] == v0 + 2
    assert _top(c, data)["display_name"] == "Grandma"

    image_id = hit["image_id"]
    r = c.put(f"/v1/gallery/images/{image_id}/identity", json={"identity": into}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"image_id": image_id, "identity": into, "previous_identity": other, "images": 1,
                        "display_name": None, "gallery_version": v0 + 3}
    assert _top(c, data)["identity"] == into and _listing(c)[into] == 1
    # another replica (a Retriever on the same gallery) sees the same versions
    core = RetrieverCore(str(g), {"mnv3": read_manifest(g)["models"]["mnv3"]["model_id"]})
    listed = {it["identity"]: it["images"] for it in core.identities(1000)["identities"]}
    assert core.snapshot.version == v0 + 3 and listed == _listing(c)


def test_merge_and_move_refusals(app, photos):
    from facerec.gallery import read_manifest, read_table

    c, g = app["client"], app["gallery"]
    table = read_table(g)
    ids = sorted(set(table["identity"].astype(int)))
    image_id = table["image_id"].iloc[0]
    own = int(table["identity"].iloc[0])
    v = read_manifest(g)["version"]
    cases = [
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", json={"from": ids[1]}), 401, "unauthorized", "bearer token"),
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", json={"from": 10**12}, headers=AUTH), 404, "not_found",
         "identity 1000000000000 has no image"),
        (c.post(f"/v1/gallery/identities/{10**12}/merge", json={"from": ids[0]}, headers=AUTH), 404, "not_found",
         "identity 1000000000000 has no image"),
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", json={"from": ids[0]}, headers=AUTH), 422, "bad_parameter",
         "another identity than"),
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", json={"from": "7"}, headers=AUTH), 422, "bad_parameter",
         "from: Input should be a valid integer"),
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", json={}, headers=AUTH), 422, "bad_parameter", "from: Field required"),
        (c.post(f"/v1/gallery/identities/{ids[0]}/merge", content=b"from=1", headers={**AUTH, "Content-Type": "text/plain"}),
         415, "unsupported_media_type", "application/json"),
        (c.put("/v1/gallery/images/nope-not-there/identity", json={"identity": ids[0]}, headers=AUTH), 404, "not_found",
         "no live gallery image"),
        (c.put(f"/v1/gallery/images/{image_id}/identity", json={"identity": own}, headers=AUTH), 409, "gallery_conflict",
         f"already is of identity {own}"),
        (c.put(f"/v1/gallery/images/{image_id}/identity", json={"identity": -3}, headers=AUTH), 422, "bad_parameter",
         "identity: Input should be greater than or equal to 0"),
        (c.put(f"/v1/gallery/images/{image_id}/identity", json={"identity": ids[0]}), 401, "unauthorized", "bearer token"),
    ]
    for r, status, code, message in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert r.json()["code"] == code and message in r.json()["detail"], r.text
    assert read_manifest(g)["version"] == v  # nothing committed


def test_openapi_documents_the_routes(app):
    spec = app["client"].get("/openapi.json").json()
    merge = spec["paths"]["/v1/gallery/identities/{identity}/merge"]["post"]
    move = spec["paths"]["/v1/gallery/images/{image_id}/identity"]["put"]
    assert merge["requestBody"]["content"]["application/json"]["schema"]["required"] == ["from"]
    assert move["requestBody"]["content"]["application/json"]["schema"]["required"] == ["identity"]
    assert merge["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/MergeResponse")
    assert move["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/MoveResponse")
    assert {"404", "422"} <= set(merge["responses"]) and {"404", "409", "422"} <= set(move["responses"])
