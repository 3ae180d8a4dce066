"""Merging two identities and moving one image to another identity: each one committed version
(a relabel table the manifest names, over rows files that stay as they are), seen by searches,
listings, deletes, another replica's reload and a killed writer's recovery, and folded into the
rows by compaction."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from facerec.errors import ConfigError, ConflictError, NotFoundError
from facerec.gallery import GallerySnapshot, compact, read_manifest
from facerec.gallery.edit import add_to_gallery, delete_from_gallery, merge_identities, move_image, set_display_name
from facerec.gallery.format import read_rows

from .conftest import make_gallery, png, unit

MODELS = {"a": "id-a", "b": "id-b"}


def _listing(snap) -> dict[int, int]:
    page = snap.identities_page(1000)
    return {it["identity"]: it["images"] for it in page["identities"]}


def _top1(snap, info, rows) -> list[int]:
    return [hits[0]["identity"] for hits in snap.search("a", info["embeddings"]["a"][rows], 1)]


def test_merge_relabels_every_row_of_the_other_identity(small_gallery):
    g, info = small_gallery["dir"], small_gallery
    ids = info["identities"]
    set_display_name(g, 103, "Ann")
    before = read_manifest(g)
    rows_file = (g / "segments" / "s000001" / "rows.npy").read_bytes()
    out = merge_identities(g, into=101, other=103)
    assert out == {"version": before["version"] + 1, "identity": 101, "merged": 103, "moved": 5, "images": 10,
                   "display_name": "Ann"}  # 101 had no name: it takes 103's
    manifest = read_manifest(g)
    assert manifest["version"] == before["version"] + 1 and manifest["rows"] == before["rows"]
    assert manifest["names"] == {"101": "Ann"} and manifest["relabels"]["count"] == 5
    assert (g / "segments" / "s000001" / "rows.npy").read_bytes() == rows_file  # no segment rewritten
    snap = GallerySnapshot.load(g)
    want = {int(i): int((ids == i).sum()) for i in np.unique(ids) if i != 103}
    want[101] = 10
    assert _listing(snap) == want
    of_103 = np.flatnonzero(ids == 103)
    assert _top1(snap, info, of_103) == [101] * 5  # each finds itself, now a row of 101
    assert snap.search("a", info["embeddings"]["a"][of_103[:1]], 1)[0][0]["display_name"] == "Ann"
    assert sorted(snap.image_ids_of(101)) == sorted(np.asarray(info["image_ids"])[np.isin(ids, [101, 103])].tolist())
    assert set(snap.table().query("identity == 101")["image_id"]) == set(snap.image_ids_of(101))
    # a delete of the merged identity takes every row it now holds
    gone = delete_from_gallery(g, identity=101)
    assert gone["deleted"] == 10 and 101 not in _listing(GallerySnapshot.load(g))


def test_move_one_image_and_split_one_off(small_gallery):
    g, info = small_gallery["dir"], small_gallery
    ids, image_ids = info["identities"], info["image_ids"]
    j = int(np.flatnonzero(ids == 102)[2])
    v0 = read_manifest(g)["version"]
    out = move_image(g, image_ids[j], 105)
    assert out == {"version": v0 + 1, "image_id": image_ids[j], "identity": 105, "previous_identity": 102,
                   "images": 6, "display_name": None}
    snap = GallerySnapshot.load(g)
    assert _listing(snap)[102] == 4 and _listing(snap)[105] == 6
    assert _top1(snap, info, [j]) == [105]
    assert _top1(snap, info, np.flatnonzero(ids == 102)[:2]) == [102, 102]  # the others stay
    # an identity with no image yet: the face becomes a person of its own (a split)
    out = move_image(g, image_ids[j], 7777)
    assert out["previous_identity"] == 105 and out["images"] == 1 and out["version"] == v0 + 2
    snap = GallerySnapshot.load(g)
    assert _listing(snap)[7777] == 1 and _listing(snap)[105] == 5
    assert read_manifest(g)["relabels"]["count"] == 1  # one override per row, the latest
    # the last image of a named identity leaves: its name goes, as with a delete
    set_display_name(g, 7777, "Stranger")
    move_image(g, image_ids[j], 102)
    assert "7777" not in read_manifest(g)["names"] and 7777 not in _listing(GallerySnapshot.load(g))


def test_bad_merges_and_moves_change_nothing(small_gallery):
    g, info = small_gallery["dir"], small_gallery
    before = read_manifest(g)
    with pytest.raises(ConfigError, match="from.*another identity than 101"):
        merge_identities(g, 101, 101)
    with pytest.raises(NotFoundError, match="identity 999 has no image"):
        merge_identities(g, 101, 999)
    with pytest.raises(NotFoundError, match="identity 999 has no image"):
        merge_identities(g, 999, 101)
    with pytest.raises(ConfigError, match=r"identity.*an integer in \[0,"):
        merge_identities(g, -1, 101)
    with pytest.raises(NotFoundError, match="no live gallery image 'nope'"):
        move_image(g, "nope", 101)
    with pytest.raises(ConflictError, match="already is of identity 100"):
        move_image(g, info["image_ids"][0], 100)
    with pytest.raises(ConfigError, match="identity"):
        move_image(g, info["image_ids"][0], True)
    delete_from_gallery(g, image_ids=[info["image_ids"][1]])
    with pytest.raises(NotFoundError, match="no live gallery image"):
        move_image(g, info["image_ids"][1], 101)  # deleted
    assert read_manifest(g)["version"] == before["version"] + 1  # only the delete committed
    assert not (g / "relabels").exists() or not list((g / "relabels").iterdir())


def test_another_replica_sees_merges_and_moves(small_gallery):
    from facerec.serve.retriever import RetrieverCore

    g, info = small_gallery["dir"], small_gallery
    one, two = RetrieverCore(str(g), MODELS), RetrieverCore(str(g), MODELS)
    of_104 = np.flatnonzero(info["identities"] == 104)
    merge_identities(g, 100, 104)
    assert one.reload()["version"] == read_manifest(g)["version"]
    assert [h[0]["identity"] for h in one.search("a", info["embeddings"]["a"][of_104], 1)["results"]] == [100] * 5
    assert {it["identity"] for it in one.identities(100)["identities"]}.isdisjoint({104})
    move_image(g, info["image_ids"][of_104[0]], 104)
    two.reload()
    one.reload()
    for core in (one, two):  # a replica reusing its segments and one loading them afresh agree
        res = core.search("a", info["embeddings"]["a"][of_104], 1)["results"]
        assert [h[0]["identity"] for h in res] == [104, 100, 100, 100, 100]
        assert {it["identity"]: it["images"] for it in core.identities(100)["identities"]}[104] == 1


def test_compaction_folds_relabels_into_the_rows(small_gallery):
    g, info = small_gallery["dir"], small_gallery
    rng = np.random.default_rng(3)
    new = {m: unit(rng, 2, e.shape[1]) for m, e in info["embeddings"].items()}
    added = add_to_gallery(g, new, [500, 500], [png(7001), png(7002)])
    merge_identities(g, 101, 500)  # rows of a delta segment
    merge_identities(g, 101, 102)  # rows of the base segment
    move_image(g, info["image_ids"][0], 103)
    before = GallerySnapshot.load(g).table().set_index("row_id")["identity"]
    relabel_file = g / read_manifest(g)["relabels"]["path"]
    assert relabel_file.is_file()
    out = compact(g, force=True)
    assert out["relabels"] is None and len(out["segments"]) == 1
    assert not relabel_file.exists() and not list((g / "relabels").iterdir())
    after = GallerySnapshot.load(g).table().set_index("row_id")["identity"]
    assert after.to_dict() == before.to_dict()
    rows = read_rows(g, out["segments"][0]["id"])  # written into the rows themselves
    assert dict(zip(rows["row_id"].tolist(), rows["identity"].tolist())) == before.to_dict()
    assert before[added["row_ids"][0]] == 101 and before[0] == 103
    assert (rows["identity"] == 101).sum() == 12


CHILD = textwrap.dedent("""
    import os, sys
    import facerec.gallery.edit as edit
    def die(*args, **kwargs):
        os._exit(9)
    edit.commit_manifest = die
    edit.merge_identities(sys.argv[1], 100, 101)
""")


def test_a_merge_killed_before_its_commit_leaves_the_old_version(small_gallery):
    g = small_gallery["dir"]
    before = read_manifest(g)
    out = subprocess.run([sys.executable, "-c", CHILD, str(g)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 9, out.stderr[-2000:]
    assert list((g / "relabels").iterdir())  # its relabel file was written...
    assert read_manifest(g) == before  # ...but not committed
    assert _listing(GallerySnapshot.load(g))[101] == 5
    merge_identities(g, 102, 103)  # the next writer removes the orphan
    assert [p.name for p in (g / "relabels").iterdir()] == [f"r{before['version'] + 1:06d}.npy"]


def test_unlabelled_gallery_thresholds_come_from_the_calibration(tmp_path):
    import json

    from facerec.gallery.openset import impostor_curve
    from facerec.serve.retriever import RetrieverCore

    info = make_gallery(tmp_path / "g", n=1200, per_identity=6, seed=4)
    e, ids = info["embeddings"]["a"], info["identities"]
    d = np.linalg.norm(e[:300, None] - e[None, :300], axis=-1)
    iu = np.triu_indices(300, 1)
    impostors = impostor_curve(d[iu][(ids[:300, None] != ids[None, :300])[iu]])
    policy = {"a": {"target_fpir": 0.01, "impostors": impostors}}
    labelled = RetrieverCore(str(tmp_path / "g"), MODELS, open_set=policy)
    assert labelled.search("a", e[:1], 1)["open_set"]["method"] == "gallery"
    manifest = json.loads((tmp_path / "g" / "gallery.json").read_text())
    (tmp_path / "g" / "gallery.json").write_text(json.dumps({**manifest, "labelled": False}))
    unlabelled = RetrieverCore(str(tmp_path / "g"), MODELS, open_set=policy)
    assert unlabelled.search("a", e[:1], 1)["open_set"]["method"] == "calibration"
