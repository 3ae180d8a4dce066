"""add() without rebuilding, save/load round trips, and the errors a damaged or mismatched
saved index must raise."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.index import Index, build_index, load_index, read_manifest
from facerec.index.kdtree import KDTreeIndex

KINDS = ["exact", "kdtree", "kdtree_pca", "hnsw"]


def data(n=1500, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_add_then_search_finds_new_items(kind):
    x = data()
    index = build_index(kind, x[:1000], np.arange(1000))
    new = x[1000:1100]
    index.add(new, np.arange(5000, 5100))
    assert index.count == 1100
    # A query sitting on a new vector finds it first.
    d, i = index.search(new[:20] + np.float32(1e-4), 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(5000, 5020))
    # And the merged results equal exact search over old + new.
    ref = build_index("exact", np.concatenate([x[:1000], new]), np.concatenate([np.arange(1000), np.arange(5000, 5100)]))
    q = x[1100:1150]
    _, want = ref.search(q, 10)
    _, got = index.search(q, 10)
    if kind == "hnsw":
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]) >= 0.98
    else:  # kdtree_pca too: 400 x k candidates cover this whole small gallery
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["kdtree", "kdtree_pca"])
def test_tree_delta_buffer_then_rebuild(kind):
    x = data()
    index = build_index(kind, x[:1000], np.arange(1000), rebuild_fraction=0.1)
    tree_before = index._tree
    index.add(x[1000:1050], np.arange(1000, 1050))  # 50 <= 0.1 * 1000: delta only
    assert index.delta_count == 50 and index._tree is tree_before
    index.add(x[1050:1101], np.arange(1050, 1101))  # 101 > 100: rebuild over everything
    assert index.delta_count == 0 and index._tree is not tree_before
    d, i = index.search(x[1090:1095], 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(1090, 1095))


def test_kdtree_pca_add_keeps_the_pca_basis():
    x = data()
    index = build_index("kdtree_pca", x[:1000], n_components=8, rebuild_fraction=0.0)
    basis = index._components.copy()
    index.add(x[1000:1200] * 5, np.arange(1000, 1200))  # would change a refit PCA
    assert index.delta_count == 0  # rebuilt (fraction 0) ...
    np.testing.assert_array_equal(index._components, basis)  # ... with the same projection


def test_hnsw_add_grows_capacity_without_rebuild():
    x = data()
    index = build_index("hnsw", x[:100])
    graph = index._graph
    for s in range(100, 400, 50):
        index.add(x[s : s + 50], np.arange(s, s + 50))
    assert index._graph is graph and graph.get_current_count() == 400
    assert graph.get_max_elements() >= 400


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    x = data()
    index = build_index(kind, x[:1000], np.arange(1000) * 2)
    index.add(x[1000:1040], np.arange(1000, 1040) * 2 + 1)  # trees: a delta buffer is saved too
    q = x[1100:1130]
    d0, i0 = index.search(q, 5)
    out = index.save(tmp_path / "idx", {"model_id": "abc123", "data_version": "v1"})
    manifest = read_manifest(out)
    assert manifest["kind"] == kind and manifest["model_id"] == "abc123"
    assert manifest["embedding_dim"] == 24 and manifest["count"] == 1040
    assert manifest["format_version"] == 1 and manifest["revision"] == 1
    assert manifest["metadata"]["data_version"] == "v1"
    assert set(manifest["files"]) == {p.name for p in out.iterdir()} - {"index.json"}
    assert not any(p.suffix == ".pkl" for p in out.iterdir())
    loaded = load_index(out, expected_model_id="abc123", expected_dim=24)
    assert type(loaded) is type(index) and loaded.count == 1040
    d1, i1 = loaded.search(q, 5)
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_allclose(d1, d0, rtol=1e-6)
    # Loaded indexes still accept additions.
    loaded.add(x[1200:1201], [99_999])
    assert loaded.search(x[1200], 1)[1][0, 0] == 99_999


def test_kdtree_reload_restores_the_delta_split(tmp_path):
    x = data()
    index = build_index("kdtree", x[:1000])
    index.add(x[1000:1050], np.arange(1000, 1050))
    index.save(tmp_path / "t")
    loaded = KDTreeIndex.load(tmp_path / "t")
    assert loaded.delta_count == 50 and loaded._n_tree == 1000


def test_second_save_replaces_atomically_and_bumps_revision(tmp_path):
    x = data()
    target = tmp_path / "idx"
    build_index("exact", x[:100]).save(target, {"model_id": "m"})
    build_index("exact", x[:200]).save(target, {"model_id": "m"})
    assert read_manifest(target)["revision"] == 2
    assert load_index(target).count == 200
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp or old folders left


def test_failed_save_keeps_previous_version(tmp_path, monkeypatch):
    x = data()
    target = tmp_path / "idx"
    build_index("exact", x[:100]).save(target, {"model_id": "m"})
    bigger = build_index("exact", x[:300])

    def boom(self):
        raise OSError("disk full")

    monkeypatch.setattr(type(bigger), "_arrays", boom)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(target, {"model_id": "m"})
    assert load_index(target).count == 100
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_save_refuses_to_replace_a_folder_with_other_content(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="refusing to replace a folder with other content"):
        build_index("exact", data(10)).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "a.jpg").exists()


@pytest.fixture
def saved(tmp_path):
    build_index("kdtree_pca", data(300, 16), n_components=4).save(tmp_path / "idx", {"model_id": "m1"})
    return tmp_path / "idx"


def test_load_other_model_id(saved):
    with pytest.raises(ArtifactMismatchError, match=r"model_id='m1' but expected model_id='m2'.*build_index.py"):
        load_index(saved, expected_model_id="m2")


def test_load_other_dimension(saved):
    with pytest.raises(ArtifactMismatchError, match=r"embedding_dim=16 but expected embedding_dim=128.*build_index.py"):
        load_index(saved, expected_dim=128)


def test_load_damaged_file(saved):
    path = saved / "embeddings.npy"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactMismatchError, match=r"embeddings\.npy: sha256 .* but index\.json records .*damaged.*build_index.py"):
        load_index(saved)


def test_load_damaged_hnsw_graph(tmp_path):
    build_index("hnsw", data(200, 8)).save(tmp_path / "h")
    with open(tmp_path / "h" / "hnsw.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactMismatchError, match=r"hnsw\.bin: sha256"):
        load_index(tmp_path / "h")


def test_load_missing_file(saved):
    os.remove(saved / "pca_components.npy")
    with pytest.raises(DataNotFoundError, match=r"pca_components\.npy not found but listed in .*index\.json"):
        load_index(saved)


def test_load_missing_folder_and_manifest(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"index folder .*nope not found.*build_index.py"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=r"index\.json not found: .* is not a saved index"):
        load_index(tmp_path / "empty")


def test_load_damaged_manifest(saved):
    (saved / "index.json").write_text("{not json")
    with pytest.raises(ArtifactMismatchError, match=r"index\.json is not valid JSON"):
        load_index(saved)


def test_load_other_format_version(saved):
    m = json.loads((saved / "index.json").read_text())
    m["format_version"] = 99
    (saved / "index.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactMismatchError, match=r"format_version=99 but this facerec reads format_version=1"):
        load_index(saved)


def test_subclass_load_checks_kind(saved):
    with pytest.raises(ArtifactMismatchError, match=r"kind='kdtree_pca' but KDTreeIndex.load expects kind='kdtree'"):
        KDTreeIndex.load(saved)
    assert Index.load(saved).kind == "kdtree_pca"
