"""facerec.gallery on synthetic galleries: search against brute force for every index kind,
adds as delta segments, deletes that leave no byte of the deleted crops or embeddings in any
file, incremental snapshots, compaction, display names and paging."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import ConfigError, NotFoundError
from facerec.gallery import (
    GallerySnapshot,
    add_to_gallery,
    compact,
    delete_from_gallery,
    read_manifest,
    read_table,
    set_display_name,
)

from .conftest import files_containing, make_gallery, png, unit

KINDS = ["exact", "kdtree", "kdtree_pca", "hnsw"]


def _brute(emb: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    d = np.linalg.norm(emb[None] - q[:, None], axis=-1)
    return [ids[np.argsort(row, kind="stable")[:k]].tolist() for row in d]


def _ids(hits) -> list[list[int]]:
    return [[h["row_id"] for h in row] for row in hits]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_matches_exact_through_adds_and_deletes(tmp_path, kind):
    g = tmp_path / "g"
    info = make_gallery(g, n=80, kinds=(kind,))
    rng = np.random.default_rng(5)
    emb = {m: e.copy() for m, e in info["embeddings"].items()}
    ids = np.arange(80)
    q = {m: unit(rng, 6, e.shape[1]) for m, e in emb.items()}
    snap = GallerySnapshot.load(g)
    for m in emb:
        assert _ids(snap.search(m, q[m], 7)) == _brute(emb[m], ids, q[m], 7)
    # adds (deltas) and deletes (tombstones): still the exact neighbours of the live rows
    new = {m: unit(rng, 3, e.shape[1]) for m, e in emb.items()}
    out = add_to_gallery(g, new, [900, 900, 901], [png(1), png(2), png(3)])
    assert out["row_ids"] == [80, 81, 82]
    delete_from_gallery(g, identity=101)
    delete_from_gallery(g, image_ids=[out["image_ids"][1]])
    live = np.array([i for i in range(83) if not (100 + i // 5 == 101 and i < 80) and i != 81])
    snap = GallerySnapshot.load(g, previous=snap)
    for m in emb:
        allemb = np.concatenate([emb[m], new[m]])
        got = _ids(snap.search(m, q[m], 7))
        assert got == _brute(allemb[live], live, q[m], 7)
        # a query equal to a deleted row never finds it
        hits = snap.search(m, emb[m][5:10], 3)
        assert not {h["row_id"] for row in hits for h in row} & set(range(5, 10))
    assert snap.rows == 83 - 5 - 1
    # a fresh replica (no previous snapshot) answers the same
    fresh = GallerySnapshot.load(g)
    for m in emb:
        assert _ids(fresh.search(m, q[m], 7)) == _ids(snap.search(m, q[m], 7))
    # and so does the compacted gallery
    compact(g, force=True)
    after = GallerySnapshot.load(g)
    assert len(after.manifest["segments"]) == 1 and after.manifest["tombstones"] is None
    for m in emb:
        assert _ids(after.search(m, q[m], 7)) == _ids(snap.search(m, q[m], 7))


@pytest.mark.parametrize("kind", KINDS)
def test_deletes_in_one_segment_still_give_k_live_rows(tmp_path, kind):
    """One base segment, tombstones, no delta: the search must go past the deleted neighbours
    (a query next to a deleted identity once got fewer than k rows, even none)."""
    g = tmp_path / "g"
    info = make_gallery(g, n=80, kinds=(kind,))
    emb, identities = info["embeddings"], info["identities"]
    before = GallerySnapshot.load(g)
    delete_from_gallery(g, identity=101)
    delete_from_gallery(g, image_ids=[info["image_ids"][40]])
    live = np.array([i for i in range(80) if identities[i] != 101 and i != 40])
    # a serving replica moves on from its snapshot (reusing the base and its index, which still
    # holds the deleted rows); a fresh replica loads the gallery as it now is
    for snap in (GallerySnapshot.load(g, previous=before), GallerySnapshot.load(g)):
        assert [s["kind"] for s in snap.manifest["segments"]] == ["base"]
        for m, e in emb.items():
            q = e[5:10]  # the deleted identity's own embeddings: every exact neighbour at first is deleted
            for k in (1, 5, 9, 30):
                got = _ids(snap.search(m, q, k))
                assert [len(r) for r in got] == [k] * len(q)
                assert got == _brute(e[live], live, q, k)


def test_add_writes_a_delta_segment_only(small_gallery):
    g = small_gallery["dir"]
    before = {p: p.stat().st_ino for p in (g / "segments").rglob("*") if p.is_file()}
    snap0 = GallerySnapshot.load(g)
    e = {"a": unit(np.random.default_rng(1), 1, 16), "b": unit(np.random.default_rng(2), 1, 8)}
    out = add_to_gallery(g, e, [4242], [png(77)], display_name="Ada")
    after = {p: p.stat().st_ino for p in (g / "segments").rglob("*") if p.is_file()}
    assert all(after[p] == ino for p, ino in before.items())  # nothing of the base rewritten
    new_files = sorted(p.relative_to(g).as_posix() for p in set(after) - set(before))
    assert new_files == ["segments/s000002/emb-a.npy", "segments/s000002/emb-b.npy", "segments/s000002/rows.npy"]
    m = read_manifest(g)
    assert m["version"] == 2 and m["rows"] == 61 and [s["kind"] for s in m["segments"]] == ["base", "delta"]
    snap = GallerySnapshot.load(g, previous=snap0)
    assert snap.segments[0] is snap0.segments[0]  # the base was reused, not reloaded
    top = snap.search("a", e["a"], 1)[0][0]
    assert top["image_id"] == out["image_ids"][0] and top["identity"] == 4242 and top["display_name"] == "Ada"
    assert top["distance"] == pytest.approx(0.0, abs=1e-5)
    assert snap.crop_file(out["image_ids"][0]).read_bytes() == png(77)
    # image ids are random, URL-safe, and not derived from the row
    assert len(out["image_ids"][0]) == 16 and out["image_ids"][0] not in {"000060.png", "added_00000060.png"}
    # the old snapshot is untouched
    assert snap0.rows == 60 and snap0.search("a", e["a"], 1)[0][0]["row_id"] < 60


def test_add_failures_commit_nothing(small_gallery):
    g = small_gallery["dir"]
    before = read_manifest(g)
    with pytest.raises(Exception, match=r"embeddings for 'b' have shape \(1, 5\), expected \(1, 8\)"):
        add_to_gallery(g, {"a": np.zeros((1, 16), np.float32), "b": np.zeros((1, 5), np.float32)}, [1], [png(1)])
    with pytest.raises(ConfigError, match=r"embeddings for every gallery model, also \['b'\]"):
        add_to_gallery(g, {"a": np.zeros((1, 16), np.float32)}, [1], [png(1)])
    with pytest.raises(ConfigError, match=r"display_name='' is invalid"):
        add_to_gallery(g, {"a": np.zeros((1, 16), np.float32), "b": np.zeros((1, 8), np.float32)}, [1], [png(1)], display_name="")
    assert read_manifest(g) == before


def test_delete_identity_leaves_no_bytes(small_gallery):
    g = small_gallery["dir"]
    ident = 103
    rows = np.flatnonzero(small_gallery["identities"] == ident)
    crops = [small_gallery["crops"][i] for i in rows]
    vectors = [small_gallery["embeddings"][m][i].tobytes() for m in ("a", "b") for i in rows]
    image_ids = [small_gallery["image_ids"][i] for i in rows]
    for c in crops:
        assert files_containing(g, c)  # present before
    out = delete_from_gallery(g, identity=ident)
    assert out["deleted"] == 5 and sorted(out["row_ids"]) == rows.tolist() and out["identities"] == [ident]
    for needle in crops + vectors + [i.encode() for i in image_ids]:
        assert files_containing(g, needle) == []
    m = read_manifest(g)
    assert m["rows"] == 55 and m["tombstones"]["count"] == 5
    assert m["segments"][0]["indexes"] == {}  # the saved index held the vectors: gone
    snap = GallerySnapshot.load(g)
    assert all(snap.crop_file(i) is None for i in image_ids)
    hits = snap.search("a", small_gallery["embeddings"]["a"][rows], 60)
    assert all(h["identity"] != ident for row in hits for h in row)
    assert len(hits[0]) == 55
    assert ident not in read_table(g)["identity"].tolist()
    with pytest.raises(NotFoundError, match="no live gallery row for identity 103"):
        delete_from_gallery(g, identity=ident)
    with pytest.raises(NotFoundError, match=r"no live gallery row for image\(s\) \['nope'\]"):
        delete_from_gallery(g, image_ids=["nope"])
    with pytest.raises(NotFoundError, match="no live gallery row"):
        delete_from_gallery(g, image_ids=[image_ids[0]])  # already deleted
    assert read_manifest(g)["version"] == m["version"]


def test_compaction_keeps_results_and_drops_history(small_gallery):
    g = small_gallery["dir"]
    rng = np.random.default_rng(3)
    adds = [add_to_gallery(g, {"a": unit(rng, 1, 16), "b": unit(rng, 1, 8)}, [500 + i], [png(900 + i)]) for i in range(3)]
    delete_from_gallery(g, image_ids=[adds[1]["image_ids"][0]])
    delete_from_gallery(g, identity=100)
    q = unit(rng, 4, 16)
    before = GallerySnapshot.load(g)
    res = before.search("a", q, 10)
    m = compact(g, force=True)
    assert m["rows"] == 60 + 3 - 1 - 5 and len(m["segments"]) == 1 and m["segments"][0]["kind"] == "base"
    assert sorted(p.name for p in (g / "segments").iterdir()) == [m["segments"][0]["id"]]
    assert not any((g / "tombstones").iterdir())
    assert len(list((g / "crops").iterdir())) == m["rows"]
    after = GallerySnapshot.load(g)
    assert [[(h["image_id"], h["row_id"]) for h in r] for r in after.search("a", q, 10)] == \
        [[(h["image_id"], h["row_id"]) for h in r] for r in res]
    assert files_containing(g, png(901)) == []
    # row ids are never reused: the next add continues after the highest ever given
    out = add_to_gallery(g, {"a": unit(rng, 1, 16), "b": unit(rng, 1, 8)}, [7], [png(5)])
    assert out["row_ids"] == [63]


def test_policy_decides_when_compaction_is_due(small_gallery):
    from facerec.gallery import CompactionPolicy

    g = small_gallery["dir"]
    policy = CompactionPolicy(max_delta_segments=2, min_rows=0)
    assert compact(g, policy) is None
    rng = np.random.default_rng(0)
    for i in range(3):
        add_to_gallery(g, {"a": unit(rng, 1, 16), "b": unit(rng, 1, 8)}, [1], [png(i)])
    assert policy.due(read_manifest(g))
    assert compact(g, policy)["version"] == 5
    with pytest.raises(ConfigError, match="max_tombstone_fraction=0 is invalid"):
        CompactionPolicy(max_tombstone_fraction=0)


def test_display_names_and_identity_pages(small_gallery):
    g = small_gallery["dir"]
    set_display_name(g, 102, "Grace Hopper")
    snap = GallerySnapshot.load(g)
    page = snap.identities_page(limit=5)
    assert page["total"] == 12 and [i["identity"] for i in page["identities"]] == [100, 101, 102, 103, 104]
    assert page["identities"][2] == {"identity": 102, "images": 5, "display_name": "Grace Hopper"}
    assert page["next_cursor"] == "104"
    rest = snap.identities_page(limit=100, after=104)
    assert [i["identity"] for i in rest["identities"]] == list(range(105, 112)) and rest["next_cursor"] is None
    with pytest.raises(NotFoundError, match="identity 999 has no image"):
        set_display_name(g, 999, "x")
    with pytest.raises(ConfigError, match="display_name='a\\\\nb' is invalid"):
        set_display_name(g, 102, "a\nb")
    # deleting the identity forgets its name too
    delete_from_gallery(g, identity=102)
    assert "102" not in read_manifest(g)["names"]
    assert files_containing(g, b"Grace Hopper") == []


def test_upgrade_from_format_1_keeps_neighbours(tmp_path):
    """A format-1 gallery written as the previous version did (table, full-copy version folders,
    enumerable ids): upgraded in place, it answers with the same rows and distances, its ids are
    random, its old folders are gone, and format-1 galleries are refused with the upgrade hint."""
    import json

    import pandas as pd

    from facerec.data.schema import ATTRIBUTE_NAMES
    from facerec.errors import ArtifactMismatchError
    from facerec.gallery.upgrade import upgrade_gallery
    from facerec.index import build_index
    from facerec.io import atomic_write_parquet

    g = tmp_path / "g1"
    rng = np.random.default_rng(4)
    n = 30
    emb = unit(rng, n, 12)
    (g / "crops").mkdir(parents=True)
    table = pd.DataFrame({"row_id": np.arange(n), "image_id": [f"{i:06d}.jpg" for i in range(n)],
                          "identity": np.arange(n) // 3, "crop_path": [f"crops/{i:06d}.jpg.png" for i in range(n)],
                          "source": ["dataset"] * (n - 1) + ["upload"]})
    for c in ("box_x", "box_y", "box_w", "box_h"):
        table[c] = np.int32(1)
    for a in ATTRIBUTE_NAMES:
        table[a] = np.int8(1)
    for i, rel in enumerate(table["crop_path"]):
        (g / rel).write_bytes(png(i))
    for v in (1, 2):  # two full copies, as adds left them
        folder = g / "indexes" / "m" / f"v{v:06d}"
        build_index("kdtree", emb, np.arange(n)).save(folder / "index", {"model_id": "mid"})
        np.save(folder / "embeddings.npy", emb)
    atomic_write_parquet(g / "gallery.parquet", table)
    (g / "gallery.json").write_text(json.dumps({
        "format": "facerec-gallery/1", "version": 2, "rows": n, "crop_size": 150, "margin": 0.2,
        "models": {"m": {"model_id": "mid", "embedding_dim": 12, "index_kind": "kdtree", "index_params": {},
                         "path": "indexes/m/v000002"}}}))
    with pytest.raises(ArtifactMismatchError, match="python -m facerec.gallery upgrade"):
        read_manifest(g)
    q = unit(rng, 4, 12)
    want = _brute(emb, np.arange(n), q, 5)
    m = upgrade_gallery(g)
    assert m["format"] == "facerec-gallery/2" and m["rows"] == n
    assert not (g / "indexes").exists() and not (g / "gallery.parquet").exists()
    snap = GallerySnapshot.load(g)
    assert _ids(snap.search("m", q, 5)) == want
    t = snap.table()
    assert t["source_id"].tolist() == table["image_id"].tolist() and t["source"].iloc[-1] == "upload"
    assert not set(t["image_id"]) & set(table["image_id"])
    assert snap.crop_file(t["image_id"].iloc[7]).read_bytes() == png(7)
    assert len(list((g / "crops").iterdir())) == n
