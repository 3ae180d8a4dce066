"""`facerec cluster`: clear errors, and photos -> people end to end on a local Ray cluster."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from facerec.cli import main as facerec
from facerec.cluster.metrics import bcubed


def run(argv, capsys):
    rc = facerec(["cluster", *argv])
    return rc, capsys.readouterr()


def test_missing_folder(tmp_path, capsys):
    rc, out = run(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "facerec cluster: error: --data" in out.err and "no such folder" in out.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value,match", [
    ("--snn", "2", "snn=2.0 is invalid"), ("--min-faces", "0", "min_faces=0 is invalid"),
    ("--link-far", "1.5", "--link-far=1.5 is invalid"), ("--k", "0", "k=0 is invalid"),
    ("--split-far", "0", "--split-far=0.0 is invalid"),
])
def test_bad_options(tmp_path, capsys, flag, value, match):
    rc, out = run(["--data", str(tmp_path), "--out", str(tmp_path / "o"), flag, value], capsys)
    assert rc == 2 and match in out.err
    assert not (tmp_path / "o").exists()


def test_uncalibrated_model_is_a_clear_error(tmp_path, capsys):
    rc, out = run(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "ckpt")],
                  capsys)
    assert rc == 2 and "--checkpoint" in out.err and "neither a checkpoint folder" in out.err


@pytest.mark.shared
def test_photos_to_people_then_incremental(tmp_path, capsys, lfw_sample):
    """An unlabelled folder of 4 people's photos: each person found, whole; then photos added: only
    the new faces are cropped, embedded and assigned, to the same people."""
    root = lfw_sample / "lfw-deepfunneled"
    chosen = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 6][:4]
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in chosen:
        for f in sorted(p.glob("*.jpg"))[:4]:
            shutil.copy(f, photos / f.name)
    out = tmp_path / "people"
    # LFW photos hold bystanders too; their owners are unknown, so this test clusters each photo's
    # largest face (the group-photo test below covers --faces all)
    largest = ["--faces", "largest"]
    rc, printed = run(["--data", str(photos), "--out", str(out), "--layout", "unlabelled", *largest], capsys)
    assert rc == 0, printed.err
    assert "16 faces in 16 photos" in printed.out
    assert "preprocess: kept 16 of 16 images, 16 faces, unlabelled" in printed.out  # not "0 identities"
    people = pd.read_parquet(out / "people.parquet")
    truth = people["photo"].str.rsplit("_", n=1).str[0]
    score = bcubed(people["cluster"], truth)
    assert score["precision"] == 1.0 and score["recall"] >= 0.8
    assigned = sorted(people.loc[people["person"] >= 0, "person"].unique())
    assert sorted(p.name for p in (out / "people").iterdir()) == [f"person-{i:05d}.png" for i in assigned]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "full" and summary["embedded_now"] == 16 and summary["faces"] == 16

    for p in chosen:  # two more photos of each person
        for f in sorted(p.glob("*.jpg"))[4:6]:
            shutil.copy(f, photos / f.name)
    rc, printed = run(["--data", str(photos), "--out", str(out), "--layout", "unlabelled", *largest], capsys)
    assert rc == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "incremental" and summary["new_faces"] == 8 and summary["embedded_now"] == 8
    again = pd.read_parquet(out / "people.parquet")
    before = people.set_index("face")["cluster"]
    assert (again.set_index("face").loc[before.index, "cluster"] == before).all()  # nobody re-clustered
    truth = again["photo"].str.rsplit("_", n=1).str[0]
    assert bcubed(again["cluster"], truth)["precision"] == 1.0
    new = again[~again["face"].isin(before.index)]
    # each new face joined the person its photo's owner already was, where that person existed
    owner = people.assign(who=people["photo"].str.rsplit("_", n=1).str[0]).groupby("who")["cluster"].agg(
        lambda c: c.value_counts().index[0])
    hits = np.mean([owner[w] == c for w, c in zip(new["photo"].str.rsplit("_", n=1).str[0], new["cluster"])])
    assert hits >= 0.75


def _sources(request) -> dict[str, list[np.ndarray]]:
    """4 people -> 4 one-face photos each, all of one size: the middle of deep-funneled LFW photos
    (real), or synthetic faces the tests draw (in which the cascade finds one face)."""
    from facerec.data.images import read_image

    if request.param == "real":
        root = request.getfixturevalue("lfw_sample") / "lfw-deepfunneled"
        chosen = [p for p in sorted(root.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4][:4]
        return {p.name: [read_image(f)[40:210, 40:210] for f in sorted(p.glob("*.jpg"))[:4]] for p in chosen}
    synth = request.getfixturevalue("synthetic_faces")
    listing = pd.read_csv(synth["root"] / "identity_CelebA.txt", sep=" ", header=None, names=["image_id", "identity"])
    who = dict(zip(listing["image_id"], listing["identity"]))
    by: dict[int, list] = {}
    for path in synth["one_face"]:
        by.setdefault(int(who[path.name]), []).append(path)
    chosen = [i for i in sorted(by) if len(by[i]) >= 4][:4]
    assert len(chosen) == 4
    return {f"person{i}": [read_image(p) for p in by[i][:4]] for i in chosen}


@pytest.fixture(params=["synthetic", pytest.param("real", marks=pytest.mark.shared)])
def group_photos(request, tmp_path):
    """A folder of 8 photos of two people each, side by side (4 people, each in 4 photos with 3
    different others): (folder, {photo: (left person, right person)}, photo width, source)."""
    import cv2

    faces = _sources(request)
    a, b, c, d = faces
    pairs = [(a, 0, b, 0), (a, 1, b, 1), (c, 0, d, 0), (c, 1, d, 1), (a, 2, c, 2), (b, 2, d, 2), (a, 3, d, 3), (b, 3, c, 3)]
    folder = tmp_path / "photos"
    folder.mkdir()
    truth = {}
    for k, (left, i, right, j) in enumerate(pairs):
        name = f"group-{k}.jpg"
        photo = np.hstack([faces[left][i], faces[right][j]])
        cv2.imwrite(str(folder / name), photo[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        truth[name] = (left, right)
    return folder, truth, photo.shape[1], request.param


def _check_people(out, truth, width, source):
    """Every face of every photo in people.parquet, the two of a photo never one person, each person
    found whole (real faces: the calibration holds for them), and each contact sheet made of its
    own faces' crops."""
    import cv2

    from facerec.data.images import read_image

    people = pd.read_parquet(out / "people.parquet")
    assert len(people) == 2 * len(truth) and people["face"].is_unique
    assert people.groupby("photo").size().to_dict() == {p: 2 for p in truth}
    for photo, rows in people.groupby("photo"):
        assert rows["cluster"].nunique() == 2, rows  # two faces of one photo: two people
        assert (rows["person"] < 0).sum() + rows.loc[rows["person"] >= 0, "person"].nunique() == 2
    who = [truth[p][int(x + w / 2 >= width / 2)] for p, x, w in zip(people["photo"], people["box_x"], people["box_w"])]
    assert sorted(pd.Series(who).value_counts()) == [4, 4, 4, 4]  # one face in each half of every photo
    if source == "real":
        score = bcubed(people["cluster"], pd.Series(who))
        assert score["precision"] == 1.0 and score["recall"] >= 0.8, score
    crops = out / "crops"
    for person, rows in people[people["person"] >= 0].groupby("person"):
        sheet = read_image(out / "people" / f"person-{person:05d}.png")
        tiles = [sheet[24 + r * 96:24 + (r + 1) * 96, c * 96:(c + 1) * 96] for r, c in
                 (divmod(k, 8) for k in range(len(rows)))]
        own = [cv2.resize(read_image(crops / f), (96, 96), interpolation=cv2.INTER_AREA) for f in rows["face"]]
        # each tile is one of the person's own face crops, each crop once (a face after the first of a
        # photo shows its own crop, not the photo's first face)
        matched = sorted(next(i for i, o in enumerate(own) if np.array_equal(t, o)) for t in tiles)
        assert matched == list(range(len(rows)))
    return people


def test_group_photos_give_every_face_and_never_one_person_twice(tmp_path, capsys, group_photos):
    folder, truth, width, source = group_photos
    out = tmp_path / "people"
    rc, printed = run(["--data", str(folder), "--out", str(out)], capsys)
    assert rc == 0, printed.err
    assert "16 faces in 8 photos" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["faces"], summary["photos"], summary["several_faces"], summary["mode"]) == (16, 8, "all", "full")
    _check_people(out, truth, width, source)


def test_faces_largest_then_all_goes_on_incrementally(tmp_path, capsys, group_photos):
    """--faces largest keeps one face per photo; the same --out clustered again with every face
    crops the photos again, keeps the people already found (face 0 keeps its crop) and assigns the
    second faces, never to the person of their photo's first."""
    folder, truth, width, source = group_photos
    out = tmp_path / "people"
    rc, printed = run(["--data", str(folder), "--out", str(out), "--faces", "largest"], capsys)
    assert rc == 0, printed.err
    assert "8 faces in 8 photos" in printed.out
    first = pd.read_parquet(out / "people.parquet")
    assert first["photo"].is_unique and json.loads((out / "summary.json").read_text())["several_faces"] == "largest"

    rc, printed = run(["--data", str(folder), "--out", str(out)], capsys)
    assert rc == 0, printed.err
    assert "holds crops of another --faces rule" in printed.out and "16 faces in 8 photos" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mode"], summary["new_faces"], summary["embedded_now"]) == ("incremental", 8, 8)
    people = _check_people(out, truth, width, source)
    before = first.set_index("face")["cluster"]
    assert (people.set_index("face").loc[before.index, "cluster"] == before).all()  # nobody re-clustered
