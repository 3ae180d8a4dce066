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
    rc, printed = run(["--data", str(photos), "--out", str(out), "--layout", "unlabelled"], capsys)
    assert rc == 0, printed.err
    assert "16 faces in 16 photos" in printed.out
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
    rc, printed = run(["--data", str(photos), "--out", str(out), "--layout", "unlabelled"], capsys)
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
