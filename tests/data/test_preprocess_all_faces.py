"""``several_faces="all"``: every face the detector accepts in a photo is kept, each its own row of
crops.parquet and its own crop file, on a folder-per-person folder of photos the test composes (two
one-face photos side by side make a photo of two faces): the accounting (photos) and the faces
kept, identity sizes counted in photos, face 0 being the crop "largest" keeps (same path, same
bytes), resuming, erasure of every face of a photo, and the stages that need one face per photo
refusing such crops with an error naming the setting and the fix.

Every test runs on synthetic faces the tests draw and on real photos of ../shared/data/celeba-sample
(marked ``shared``)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facerec.data.erasure import Erased, scrub_crops_folder
from facerec.data.images import read_image
from facerec.data.layouts import person_identity
from facerec.data.preprocess import PARTS_DIR, PreprocessConfig, preprocess
from facerec.data.schema import CROPS_TABLE, DROPPED_TABLE, SUMMARY_FILE, load_crops
from facerec.errors import ArtifactMismatchError, ConfigError

# person -> photo -> the one-face source photos it is made of (two: side by side); real sample names
PHOTOS = {
    "alice": {"pair-1.jpg": ("000114.jpg", "000280.jpg"), "pair-2.jpg": ("000131.jpg", "000486.jpg"),
              "solo.jpg": ("000176.jpg",)},
    "bob": {"solo.jpg": ("000306.jpg",)},                               # one photo: identity too small
    "carol": {"pair-3.jpg": ("000501.jpg", "000457.jpg")},              # one photo of two faces: too small too
    "dave": {"d1.jpg": ("000565.jpg",), "d2.jpg": ("000625.jpg",), "blank.jpg": ()},  # blank: no face
}
SOURCES = sorted({s for photos in PHOTOS.values() for srcs in photos.values() for s in srcs})


def _side_by_side(images: list[np.ndarray], height: int = 256) -> np.ndarray:
    fit = [cv2.resize(x, (round(x.shape[1] * height / x.shape[0]), height), interpolation=cv2.INTER_AREA)
           for x in images]
    return np.hstack(fit)


@pytest.fixture(scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.shared)])
def group(request, tmp_path_factory) -> dict:
    """ROOT/<person>/<photo>.jpg; ``faces``: photo -> how many faces it was composed of."""
    if request.param == "real":
        src = {n: request.getfixturevalue("celeba_sample") / "img_celeba" / n for n in SOURCES}
    else:
        src = dict(zip(SOURCES, request.getfixturevalue("synthetic_faces")["one_face"][:len(SOURCES)], strict=True))
    root = tmp_path_factory.mktemp(f"group-{request.param}")
    faces = {}
    for person, photos in PHOTOS.items():
        (root / person).mkdir()
        for name, parts in photos.items():
            rgb = _side_by_side([read_image(src[s]) for s in parts]) if parts else np.full((220, 200, 3), 128, np.uint8)
            cv2.imwrite(str(root / person / name), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            faces[f"{person}/{name}"] = len(parts)
    return {"root": root, "faces": faces}


def _config(rule: str, **kw) -> PreprocessConfig:
    return PreprocessConfig(engine="local", batch_size=2, several_faces=rule, **kw)


@pytest.fixture(scope="module")
def all_run(group, tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    return out, preprocess(group["root"], out, _config("all"), progress=False)


@pytest.fixture(scope="module")
def largest_run(group, tmp_path_factory):
    out = tmp_path_factory.mktemp("largest")
    return out, preprocess(group["root"], out, _config("largest"), progress=False)


def _expected(group) -> tuple[set[str], set[str]]:
    """(photos kept, photos dropped as identity_too_small): people with >= 2 photos that have a face."""
    with_face = {p for p, n in group["faces"].items() if n}
    sizes = Counter(p.split("/")[0] for p in with_face)
    kept = {p for p in with_face if sizes[p.split("/")[0]] >= 2}
    return kept, with_face - kept


def test_every_face_is_its_own_row_and_crop(group, all_run):
    out, summary = all_run
    kept_photos, small = _expected(group)
    listed = len(group["faces"])
    n_faces = sum(group["faces"][p] for p in kept_photos)
    assert (len(kept_photos), n_faces, len(small)) == (5, 7, 2)
    # the invariant is about photos; the faces kept are counted beside it
    assert summary["listed"] == listed and summary["kept"] == len(kept_photos) and summary["faces"] == n_faces
    assert summary["kept"] + sum(summary["dropped"].values()) + summary["erased"] == listed
    assert summary["several_faces"] == "all"
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary

    kept, meta = load_crops(out, several_faces_ok=True)
    assert meta["several_faces"] == "all"
    assert len(kept) == n_faces and kept["crop_path"].is_unique
    assert kept.groupby("image_id").size().to_dict() == {p: group["faces"][p] for p in kept_photos}
    for photo, rows in kept.groupby("image_id"):
        rows = rows.sort_values("face")
        assert rows["face"].tolist() == list(range(len(rows)))
        assert rows["crop_path"].tolist() == [f"crops/{photo}.png"] + [f"crops/{photo}.face{f}.png"
                                                                        for f in range(1, len(rows))]
        crops = [read_image(out / p) for p in rows["crop_path"]]
        assert all(c.shape == (218, 218, 3) for c in crops)
        if len(rows) == 2:
            # one face in each half of the photo, the larger box first, two different crops
            centre = (rows["box_x"] + rows["box_w"] / 2).to_numpy()
            assert sorted(centre < rows["orig_w"].to_numpy() / 2) == [False, True], rows
            area = (rows["box_w"] * rows["box_h"]).to_numpy()
            assert area[0] >= area[1]
            assert (out / rows["crop_path"].iloc[0]).read_bytes() != (out / rows["crop_path"].iloc[1]).read_bytes()
    # the crop files: those the table lists, and every face of the photos of people too small to keep
    # (cropped before the identity sizes are known; the drop manifest names them)
    small = {"crops/bob/solo.jpg.png", "crops/carol/pair-3.jpg.png", "crops/carol/pair-3.jpg.face1.png"}
    assert sorted(str(p.relative_to(out)) for p in (out / "crops").rglob("*.png")) == sorted({*kept["crop_path"], *small})


def test_identities_count_photos_and_drops_are_one_line_per_photo(group, all_run):
    out, summary = all_run
    _, small = _expected(group)
    assert summary["dropped"] == {"no_face": 1, "identity_too_small": 2}
    dropped = pd.read_parquet(out / DROPPED_TABLE)
    assert dropped["image_id"].is_unique  # carol's photo of two faces is one line
    assert set(dropped.loc[dropped["reason"] == "identity_too_small", "image_id"]) == small
    assert dropped.set_index("image_id").loc["carol/pair-3.jpg", "detail"] == "identity has 1 usable image(s), fewer than 2"
    kept, _ = load_crops(out, several_faces_ok=True)
    assert set(kept["identity"]) == {person_identity("alice"), person_identity("dave")}


def test_face_zero_is_what_largest_keeps(group, all_run, largest_run):
    """The largest face of a photo is face 0, at the path and with the bytes "largest" gives it, so
    the crops of the other rules are unchanged."""
    (out_all, _), (out_largest, summary) = all_run, largest_run
    every, _ = load_crops(out_all, several_faces_ok=True)
    largest, meta = load_crops(out_largest)
    assert summary["kept"] == summary["faces"] == len(largest) == 5 and meta["several_faces"] == "largest"
    assert (largest["face"] == 0).all() and largest["image_id"].is_unique
    first = every[every["face"] == 0].set_index("image_id")
    for _, row in largest.iterrows():
        assert row["crop_path"] == f"crops/{row['image_id']}.png" == first.loc[row["image_id"], "crop_path"]
        assert (out_largest / row["crop_path"]).read_bytes() == (out_all / row["crop_path"]).read_bytes()
        assert row[["box_x", "box_y", "box_w", "box_h"]].tolist() == first.loc[
            row["image_id"], ["box_x", "box_y", "box_w", "box_h"]].tolist()


def test_resume_with_all_redoes_only_the_missing_photos(group, all_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(all_run[0], out)
    parts = sorted((out / PARTS_DIR).glob("part-*.parquet"))
    assert len(parts) == 4  # 8 photos in batches of 2
    lost = pd.concat([pd.read_parquet(p) for p in parts[::2]])
    assert (lost["face"] > 0).any(), "the lost batches hold a photo of two faces"
    for p in parts[::2]:  # as if the run had been killed before these batches finished
        p.unlink()
    for image_id, face in zip(lost["image_id"], lost["face"]):
        (out / "crops" / (f"{image_id}.png" if face == 0 else f"{image_id}.face{face}.png")).unlink(missing_ok=True)
    for name in (CROPS_TABLE, DROPPED_TABLE, SUMMARY_FILE):
        (out / name).unlink()

    summary = preprocess(group["root"], out, _config("all"), progress=False)
    assert summary["processed_now"] == lost["image_id"].nunique() == 4 and summary["resumed"] == 4
    assert summary["faces"] == all_run[1]["faces"] and summary["data_version"] == all_run[1]["data_version"]
    before = pd.read_parquet(all_run[0] / CROPS_TABLE)
    after = pd.read_parquet(out / CROPS_TABLE)
    pd.testing.assert_frame_equal(after, before)
    for p in before["crop_path"]:  # same settings -> byte-identical crops, every face
        assert (out / p).read_bytes() == (all_run[0] / p).read_bytes()
    again = preprocess(group["root"], out, _config("all"), progress=False)
    assert again["processed_now"] == 0 and again["resumed"] == 8 and again["faces"] == summary["faces"]


def test_erasure_with_all_removes_every_face_of_a_photo(group, all_run, tmp_path):
    """A scrub of a folder made before the erasure leaves what a preprocessing that honoured it
    from the start writes; every face crop of an erased photo goes."""
    root = group["root"]
    erased = Erased(str(root.resolve()), images=frozenset({"alice/pair-1.jpg"}))
    out = tmp_path / "scrubbed"
    shutil.copytree(all_run[0], out)
    assert (out / "crops/alice/pair-1.jpg.png").is_file() and (out / "crops/alice/pair-1.jpg.face1.png").is_file()
    scrub_crops_folder(out, erased)
    assert not list((out / "crops" / "alice").glob("pair-1.jpg*"))
    kept, _ = load_crops(out, several_faces_ok=True)
    assert "alice/pair-1.jpg" not in set(kept["image_id"]) and len(kept) == all_run[1]["faces"] - 2
    parts = pd.concat([pd.read_parquet(p) for p in (out / PARTS_DIR).glob("part-*.parquet")])
    assert "alice/pair-1.jpg" not in set(parts["image_id"])
    assert parts.groupby("image_id").size()["alice/pair-2.jpg"] == 2  # the other photos keep every face's record
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["kept"], summary["faces"], summary["erased"]) == (4, 5, 1)

    fresh = tmp_path / "fresh"
    honoured = preprocess(root, fresh, _config("all"), progress=False, erased=erased)
    assert (honoured["listed"], honoured["kept"], honoured["faces"], honoured["erased"]) == (8, 4, 5, 1)
    assert not list((fresh / "crops" / "alice").glob("pair-1.jpg*"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / CROPS_TABLE), pd.read_parquet(fresh / CROPS_TABLE))
    for key in ("listed", "kept", "faces", "erased", "dropped", "data_version"):
        assert summary[key] == honoured[key], key
    # resuming the scrubbed folder with the erasure crops nothing again and keeps the erased photo out
    again = preprocess(root, out, _config("all"), progress=False, erased=erased)
    assert again["processed_now"] == 0 and again["faces"] == 5
    assert not list((out / "crops" / "alice").glob("pair-1.jpg*"))


def test_erasing_a_person_removes_every_face_of_their_photos(group, all_run, tmp_path):
    out = tmp_path / "scrubbed"
    shutil.copytree(all_run[0], out)
    scrub_crops_folder(out, Erased(str(group["root"].resolve()), identities=frozenset({person_identity("alice")})))
    assert not list((out / "crops" / "alice").glob("*.png"))  # 3 photos, 5 faces
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (summary["kept"], summary["faces"], summary["erased"]) == (2, 2, 3)
    assert summary["kept"] + sum(summary["dropped"].values()) + summary["erased"] == summary["listed"]


# --------------------------------------------------------------------------- stages of one face per photo

ONE_FACE = r"several_faces='all'.*needs one face per photo.*--several-faces largest \(or drop\) into another --out"


def test_stages_of_one_face_per_photo_refuse_all_crops(all_run, tmp_path, capsys):
    from facerec.cli import main as facerec
    from facerec.train.config import TrainConfig
    from facerec.train.data import prepare_data

    out = all_run[0]
    with pytest.raises(ArtifactMismatchError, match=ONE_FACE):
        load_crops(out)
    with pytest.raises(ArtifactMismatchError, match=ONE_FACE):
        prepare_data(TrainConfig(data_dir=str(out)))
    for argv in (["train-sweep", "--data", str(out), "--out", str(tmp_path / "run")],
                 ["evaluate", "--crops", str(out), "--out", str(tmp_path / "eval")],
                 ["serve", "--crops", str(out)]):
        assert facerec(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"facerec {argv[0]}: error: " in err and "several_faces='all'" in err and "--several-faces largest" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()
    from facerec.run import plan_run

    with pytest.raises(ConfigError, match=r"^preprocess.several_faces='all' is invalid: expected 'largest' or 'drop'"):
        plan_run(tmp_path / "work", preprocess={"several_faces": "all"})


def test_gallery_build_refuses_all_crops(group, tmp_path):
    """The gallery (serve, build-index) embeds one face per photo: crops of the served model's input
    kind made with "all" are refused before anything is embedded or written."""
    from facerec.gallery.build import GalleryBuildConfig, build_gallery

    crops = tmp_path / "crops"
    preprocess(group["root"], crops, _config("all", input_kind="aligned_chip_5pt"), progress=False)
    with pytest.raises(ArtifactMismatchError, match=ONE_FACE):
        build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(tmp_path / "gallery"),
                                         checkpoints={"dlib_resnet": "dlib_resnet"}))
    assert not (tmp_path / "gallery").exists()
