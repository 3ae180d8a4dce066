"""facerec.data.erasure on generated photos: the erasure list, preprocessing that honours it (the
erased photos are never cropped and no output names them), and a scrub of a folder made before
the erasure that leaves exactly what a preprocessing honouring it from the start writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facerec.data.erasure import Erased, ErasureList, cached_folders_of, scrub_crops_cache, scrub_crops_folder
from facerec.data.preprocess import PreprocessConfig, preprocess
from facerec.data.synth import generate_synthetic
from facerec.errors import ArtifactMismatchError

LOCAL = PreprocessConfig(engine="local")


def _files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()]


def _holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in _files(root) if needle in p.read_bytes()]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Photos (5 people x 4) and their preprocess output made before any erasure, and the plan:
    one person erased whole (one of their photos is a drop), one photo of another, and three of
    a third, who is then left with one photo (an identity too small to keep)."""
    base = tmp_path_factory.mktemp("erasure")
    photos = generate_synthetic(base / "photos", 5, 4, seed=5, progress=False)
    before = base / "before"
    preprocess(photos, before, LOCAL, progress=False, erased=Erased(str(photos.resolve())))  # nothing erased yet
    kept = pd.read_parquet(before / "crops.parquet")
    dropped = pd.read_parquet(before / "dropped.parquet")
    sizes = kept.groupby("identity").size()
    whole = int(dropped["identity"].iloc[0])  # a person with a dropped photo: erasing them must clear the drop manifest
    full = [int(i) for i in sizes.index if sizes[i] == 4 and i != whole]
    one, shrink = full[0], full[1]
    images = [kept.loc[kept["identity"] == one, "image_id"].iloc[0], *kept.loc[kept["identity"] == shrink, "image_id"].iloc[:3]]
    listing = pd.read_csv(photos / "identity_CelebA.txt", sep=" ", header=None, names=["image_id", "identity"])
    names = set(listing.loc[listing["identity"] == whole, "image_id"]) | set(images)
    left = kept.loc[(kept["identity"] == shrink) & ~kept["image_id"].isin(names), "image_id"].tolist()
    assert len(left) == 1 and whole in set(dropped["identity"])
    return {"photos": photos, "before": before, "whole": whole, "images": images, "names": names,
            "shrunk": left[0], "kept": kept, "dropped": dropped, "lines": int(listing["image_id"].isin(names).sum())}


@pytest.fixture()
def erasures(tmp_path, monkeypatch, made) -> ErasureList:
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    out = ErasureList.default()
    out.record(made["photos"], identities=[made["whole"]], images=made["images"])
    return out


def test_the_list_is_kept_per_photo_folder(tmp_path, made):
    lst = ErasureList(tmp_path / "erased.json")
    assert not lst.of(made["photos"]) and not (tmp_path / "erased.json").exists()
    lst.record(made["photos"], identities=[7], images=["a.jpg"])
    got = lst.record(str(made["photos"]) + "/../photos", identities=[8], images=["a.jpg", "b.jpg"])  # the same folder
    assert got == Erased(str(made["photos"].resolve()), frozenset({7, 8}), frozenset({"a.jpg", "b.jpg"}))
    assert lst.of(made["photos"]) == got and not lst.of(tmp_path)
    data = json.loads((tmp_path / "erased.json").read_text())
    assert data["format"] == "facerec-erased/1" and data["sources"][str(made["photos"].resolve())]["identities"] == [7, 8]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written through a temp file
    assert got.mask(["a.jpg", "c.jpg", "d.jpg"], [1, 8, 2]).tolist() == [True, True, False]
    (tmp_path / "erased.json").write_text("{not json")
    with pytest.raises(ArtifactMismatchError, match=r"erased.json: the erasure list cannot be read .*restore it"):
        lst.of(made["photos"])


def _expected(made) -> tuple[set[str], set[tuple[str, str]]]:
    """Kept photos and (photo, reason) drops of a preprocessing that never saw the erased ones,
    from the output made before the erasure."""
    kept = made["kept"][~made["kept"]["image_id"].isin(made["names"])]
    kept_ids = set(kept["image_id"]) - {made["shrunk"]}
    drops = {(r.image_id, r.reason) for r in made["dropped"].itertuples() if r.image_id not in made["names"]}
    return kept_ids, drops | {(made["shrunk"], "identity_too_small")}


def test_preprocess_never_crops_nor_names_erased_photos(made, erasures, tmp_path):
    out = tmp_path / "after"
    summary = preprocess(made["photos"], out, LOCAL, progress=False)  # the list is read from $FACEREC_CACHE
    kept_ids, drops = _expected(made)
    kept = pd.read_parquet(out / "crops.parquet")
    dropped = pd.read_parquet(out / "dropped.parquet")
    assert set(kept["image_id"]) == kept_ids and made["whole"] not in set(kept["identity"])
    assert {(r.image_id, r.reason) for r in dropped.itertuples()} == drops
    assert summary["erased"] == made["lines"] and summary["listed"] == 20
    assert summary["kept"] + sum(summary["dropped"].values()) + summary["erased"] == summary["listed"]
    assert summary["processed_now"] == 20 - made["lines"]  # never cropped
    for name in made["names"]:
        assert not (out / "crops" / f"{name}.png").exists()
        assert _holding(out, name.encode()) == [], name  # no table, part, summary or list names it
    for name in made["names"] & set(made["kept"]["image_id"]):
        assert _holding(out, (made["before"] / "crops" / f"{name}.png").read_bytes()) == []


def test_scrubbing_a_folder_made_before_leaves_what_a_fresh_run_writes(made, erasures, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(made["before"], old)
    crop_bytes = {n: (old / "crops" / f"{n}.png").read_bytes() for n in made["names"] if (old / "crops" / f"{n}.png").exists()}
    assert crop_bytes and all(_holding(old, b) for b in crop_bytes.values())
    assert scrub_crops_folder(old, erasures.of(made["photos"])) > 0
    fresh = tmp_path / "fresh"
    preprocess(made["photos"], fresh, LOCAL, progress=False)

    def table(folder, name):
        return pd.read_parquet(folder / name).sort_values("image_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(table(old, "crops.parquet"), table(fresh, "crops.parquet"))
    pd.testing.assert_frame_equal(table(old, "dropped.parquet"), table(fresh, "dropped.parquet"))
    from facerec.io import read_parquet_metadata

    assert read_parquet_metadata(old / "crops.parquet")["data_version"] == read_parquet_metadata(fresh / "crops.parquet")["data_version"]
    s_old, s_new = (json.loads((f / "summary.json").read_text()) for f in (old, fresh))
    for key in ("listed", "kept", "dropped", "erased", "identities", "kept_fraction", "haar_pass2", "data_version"):
        assert s_old[key] == s_new[key], key
    for name, data in crop_bytes.items():
        assert _holding(old, data) == [], name
    parts = pd.concat([pd.read_parquet(p) for p in (old / "_parts").glob("part-*.parquet")])
    assert not set(parts["image_id"]) & made["names"]
    stamp = (old / "crops.parquet").stat().st_mtime_ns
    assert scrub_crops_folder(old, erasures.of(made["photos"])) == 0  # idempotent: nothing rewritten
    assert (old / "crops.parquet").stat().st_mtime_ns == stamp


def test_the_crops_cache_is_scrubbed_and_reapplied(made, erasures, tmp_path):
    from filelock import FileLock

    from facerec.data.crops_cache import preprocessed

    # A folder of the same name elsewhere with its own cache folder ("photos-<key>" too): not touched.
    twin = shutil.copytree(made["photos"], tmp_path / "elsewhere" / "photos")
    other = preprocessed(twin, LOCAL, progress=False)
    other_rows = len(pd.read_parquet(other / "crops.parquet"))
    # the cache folder of the erased folder, as a run before the erasure left it
    cached = preprocessed(made["photos"], LOCAL, progress=False)  # made now: the list is honoured at once
    assert not set(pd.read_parquet(cached / "crops.parquet")["image_id"]) & made["names"]
    shutil.rmtree(cached)
    shutil.copytree(made["before"], cached)
    assert cached_folders_of(erasures.crops_cache, made["photos"]) == [cached]
    with FileLock(str(cached.parent / f".{cached.name}.lock")):  # a preprocessing of it is running
        out = scrub_crops_cache(erasures, made["photos"], lock_timeout_s=0.2)
    assert out == {"scrubbed": [], "busy": [str(cached)]}
    assert set(pd.read_parquet(cached / "crops.parquet")["image_id"]) & made["names"]
    assert preprocessed(made["photos"], LOCAL, progress=False) == cached  # the next use applies the list
    assert not set(pd.read_parquet(cached / "crops.parquet")["image_id"]) & made["names"]
    shutil.rmtree(cached)
    shutil.copytree(made["before"], cached)
    assert scrub_crops_cache(erasures, made["photos"]) == {"scrubbed": [str(cached)], "busy": []}
    kept_ids, _ = _expected(made)
    assert set(pd.read_parquet(cached / "crops.parquet")["image_id"]) == kept_ids
    assert len(pd.read_parquet(other / "crops.parquet")) == other_rows


def test_identity_erasure_reaches_an_unfinished_folder(made, erasures, tmp_path):
    """A folder with resume parts and crops but no table yet: the photo folder's listing says
    which photos the erased identity has."""
    part = tmp_path / "part"
    shutil.copytree(made["before"], part)
    for name in ("crops.parquet", "dropped.parquet", "summary.json"):
        (part / name).unlink()
    whole = set(pd.read_csv(made["photos"] / "identity_CelebA.txt", sep=" ", header=None)
                .pipe(lambda t: t.loc[t[1] == made["whole"], 0]))
    scrub_crops_folder(part, Erased(str(made["photos"].resolve()), frozenset({made["whole"]})))
    assert not [n for n in whole if (part / "crops" / f"{n}.png").exists()]
    parts = pd.concat([pd.read_parquet(p) for p in (part / "_parts").glob("part-*.parquet")])
    assert not set(parts["image_id"]) & whole and len(parts) == 20 - len(whole)
    assert np.isin(list(whole), made["kept"]["image_id"]).any()
