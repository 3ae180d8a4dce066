"""Erasures in the gallery: a delete's hook runs before anything is written, the erasure list is
applied to an existing gallery (dataset rows only), a build leaves erased photos out, and a
compaction leaves no byte of deleted rows behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facerec.data.erasure import Erased, ErasureList
from facerec.gallery import (
    GalleryBuildConfig,
    add_to_gallery,
    apply_erasures,
    build_gallery,
    compact,
    delete_from_gallery,
    photo_folder,
    read_manifest,
    read_table,
)

from .conftest import files_containing, png, unit


def test_a_failing_hook_deletes_nothing(small_gallery):
    g = small_gallery["dir"]
    before = read_manifest(g)
    seen = []

    def refuse(found):
        seen.append(found)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        delete_from_gallery(g, identity=101, before_commit=refuse)
    assert read_manifest(g) == before
    assert sorted(seen[0]["source_ids"]) == [f"{i:06d}.jpg" for i in range(5, 10)] and seen[0]["identities"] == [101] * 5
    for c in small_gallery["crops"][5:10]:
        assert files_containing(g, c)  # untouched
    out = delete_from_gallery(g, identity=101, before_commit=seen.append)
    assert sorted(out["source_ids"]) == [f"{i:06d}.jpg" for i in range(5, 10)] and len(seen) == 2


def test_erasures_delete_dataset_rows_and_keep_uploads(small_gallery):
    g = small_gallery["dir"]
    rng = np.random.default_rng(1)
    upload = add_to_gallery(g, {"a": unit(rng, 1, 16), "b": unit(rng, 1, 8)}, [101], [png(777)])
    erased = Erased("/photos", frozenset({101}), frozenset({"000003.jpg", "999999.jpg"}))
    out = apply_erasures(g, erased)
    assert sorted(out["row_ids"]) == [3, 5, 6, 7, 8, 9]
    gone = [3, 5, 6, 7, 8, 9]
    for i in gone:
        assert files_containing(g, small_gallery["crops"][i]) == []
        assert files_containing(g, small_gallery["embeddings"]["a"][i].tobytes()) == []
        assert files_containing(g, f"{i:06d}.jpg".encode()) == []  # the record naming the photo is zeroed
    table = read_table(g)
    assert set(table.loc[table["identity"] == 101, "image_id"]) == set(upload["image_ids"])  # the upload stays
    assert apply_erasures(g, erased) is None  # nothing left to erase
    assert apply_erasures(g, Erased("/photos")) is None


def test_compaction_keeps_no_byte_of_deleted_rows(small_gallery):
    g = small_gallery["dir"]
    delete_from_gallery(g, identity=102)
    delete_from_gallery(g, image_ids=[small_gallery["image_ids"][0]])
    compact(g, force=True)
    gone = [0, *range(10, 15)]
    for i in gone:
        for needle in (small_gallery["crops"][i], small_gallery["embeddings"]["a"][i].tobytes(),
                       small_gallery["embeddings"]["b"][i].tobytes(), small_gallery["image_ids"][i].encode(),
                       f"{i:06d}.jpg".encode()):
            assert files_containing(g, needle) == [], i
    m = read_manifest(g)
    assert m["tombstones"] is None and m["rows"] == 54 and not any((g / "tombstones").iterdir())
    assert len(list((g / "crops").iterdir())) == 54


@pytest.fixture(scope="module")
def crops_and_model(tmp_path_factory):
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.data.synth import generate_synthetic
    from facerec.serve.defaults import make_default_checkpoint

    base = tmp_path_factory.mktemp("build")
    photos = generate_synthetic(base / "photos", 4, 4, seed=2, progress=False)
    crops = base / "crops"
    preprocess(photos, crops, PreprocessConfig(engine="local"), progress=False, erased=Erased(str(photos.resolve())))
    make_default_checkpoint("mobilenet_v3_small", base / "ckpt", crops, image_size=32, embedding_dim=8)
    return {"photos": photos, "crops": crops, "ckpt": str(base / "ckpt")}


def test_a_build_leaves_erased_photos_out(crops_and_model, tmp_path):
    crops = crops_and_model["crops"]
    kept = pd.read_parquet(crops / "crops.parquet")
    whole = int(kept["identity"].iloc[0])
    single = kept.loc[kept["identity"] != whole, "image_id"].iloc[0]
    lst = ErasureList(tmp_path / "erased.json")
    lst.record(crops_and_model["photos"], identities=[whole], images=[single])
    names = set(kept.loc[kept["identity"] == whole, "image_id"]) | {single}
    out = tmp_path / "gallery"
    build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(out), checkpoints={"m": crops_and_model["ckpt"]},
                                     kinds=["exact"], erasure_list=str(lst.path)))
    table = read_table(out)
    assert set(table["source_id"]) == set(kept["image_id"]) - names
    for name in names:
        assert files_containing(out, (crops / "crops" / f"{name}.png").read_bytes()) == []
    assert photo_folder(out) == str(crops_and_model["photos"].resolve()) == read_manifest(out)["photos"]
    # a gallery from before the field: the crops folder names the photos
    manifest = read_manifest(out)
    del manifest["photos"]
    from facerec.gallery.format import commit_manifest

    commit_manifest(out, manifest)
    assert photo_folder(out) == str(crops_and_model["photos"].resolve())
    # another list (the default one, empty here): everything is built
    other = tmp_path / "all"
    build_gallery(GalleryBuildConfig(crops_dir=str(crops), out_dir=str(other), checkpoints={"m": crops_and_model["ckpt"]},
                                     kinds=["exact"], erasure_list=str(tmp_path / "none.json")))
    assert set(read_table(other)["source_id"]) == set(kept["image_id"])
