"""Every index kind against independent references: a hand-computed 2-D example, scipy's
cdist, scikit-learn's brute-force NearestNeighbors, and planted well-separated neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from facerec.index import INDEXES, build_index
from facerec.index.synthetic import clustered_embeddings

KINDS = ["exact", "kdtree", "kdtree_pca", "hnsw"]


def test_registry_lists_the_four_kinds():
    assert INDEXES.names() == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_hand_computed_2d_example(kind):
    gallery = np.array([[0, 0], [1, 0], [0, 2], [3, 4], [-1, -1]], dtype=np.float32)
    ids = np.array([10, 11, 12, 13, 14])
    index = build_index(kind, gallery, ids)
    d, i = index.search(np.array([[0.0, 0.0], [3.0, 3.0]]), k=3)
    # (0,0): itself 0, (1,0) at 1, (-1,-1) at sqrt(2).
    assert i[0].tolist() == [10, 11, 14]
    np.testing.assert_allclose(d[0], [0.0, 1.0, math.sqrt(2)], rtol=1e-6, atol=1e-6)
    # (3,3): (3,4) at 1, (0,2) at sqrt(9+1), (1,0) at sqrt(4+9).
    assert i[1].tolist() == [13, 12, 11]
    np.testing.assert_allclose(d[1], [1.0, math.sqrt(10), math.sqrt(13)], rtol=1e-6)
    assert d.dtype == np.float32 and i.dtype == np.int64


def test_exact_matches_scipy_cdist_and_sklearn_brute():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 48)).astype(np.float32) * rng.uniform(0.5, 2.0, (3000, 1)).astype(np.float32)
    q = rng.standard_normal((40, 48)).astype(np.float32)
    ids = rng.permutation(10_000)[:3000]
    index = build_index("exact", x, ids)
    for k in (1, 7, 50):
        d, i = index.search(q, k)
        ref = cdist(q.astype(np.float64), x.astype(np.float64))
        ref_pos = np.argsort(ref, axis=1)[:, :k]
        np.testing.assert_array_equal(i, ids[ref_pos])
        np.testing.assert_allclose(d, np.take_along_axis(ref, ref_pos, 1), rtol=1e-5, atol=1e-5)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(x)
    dn, pn = nn.kneighbors(q)
    d, i = index.search(q, 5)
    np.testing.assert_array_equal(i, ids[pn])
    np.testing.assert_allclose(d, dn, rtol=1e-5, atol=1e-5)


def test_exact_k_equals_count_returns_everything_sorted():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    d, i = build_index("exact", x).search(x[:2], 30)
    assert sorted(i[0].tolist()) == list(range(30))
    assert (np.diff(d, axis=1) >= 0).all()
    assert i[0, 0] == 0 and d[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_exact_distances_have_no_cancellation_error_for_near_duplicates():
    # ||q||^2 - 2 q.x + ||x||^2 in float32 loses ~1e-3 for nearby large vectors; the index
    # recomputes winners from differences, so tiny distances stay accurate.
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((500, 64)) * 30).astype(np.float32)
    q = x[:5] + np.float32(1e-3)
    d, i = build_index("exact", x).search(q, 1)
    np.testing.assert_array_equal(i[:, 0], np.arange(5))
    np.testing.assert_allclose(d[:, 0], 1e-3 * math.sqrt(64), rtol=1e-2)


def planted(n_background=2000, n_queries=25, k=10, dim=32, seed=0):
    """Queries whose k nearest neighbours are planted at distances 0.1..1.0 along random
    directions inside a Gaussian background whose points lie >= ~8 away: the true answer is
    unambiguous, and the planted points are not isolated islands (which a graph index could
    fail to reach for reasons unrelated to the code under test)."""
    rng = np.random.default_rng(seed)
    background = rng.standard_normal((n_background, dim)).astype(np.float32) * 2.0
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32) * 2.0
    rows, truth = [], []
    for qi, q in enumerate(queries):
        dirs = rng.standard_normal((k, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        radii = 0.1 * np.arange(1, k + 1)
        rows.append((q + dirs * radii[:, None]).astype(np.float32))
        truth.append(n_background + qi * k + np.arange(k))
    gallery = np.concatenate([background, *rows])
    gap = np.sort(cdist(queries, gallery), axis=1)[:, k]
    assert gap.min() > 5.0  # the (k+1)-th neighbour is far beyond the planted 1.0
    return gallery, queries, np.array(truth), 0.1 * np.arange(1, k + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_planted_neighbours_in_order(kind):
    gallery, queries, truth, radii = planted()
    ids = np.arange(gallery.shape[0], dtype=np.int64) * 3 + 7  # ids are not positions
    params = {"num_threads": 1} if kind == "hnsw" else {}  # single-threaded insert: reproducible graph
    index = build_index(kind, gallery, ids, **params)
    d, i = index.search(queries, 10)
    np.testing.assert_array_equal(i, truth * 3 + 7)
    np.testing.assert_allclose(d, np.broadcast_to(radii, d.shape), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["kdtree", "kdtree_pca", "hnsw"])
def test_every_kind_equals_exact_on_random_data(kind):
    # Uniform random 16-d data: tree kinds are exact; PCA loses nothing at n_components=16 = d.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    _, ref = build_index("exact", x).search(q, 10)
    _, got = build_index(kind, x).search(q, 10)
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)])
    assert agree >= (0.99 if kind == "hnsw" else 1.0)


def recall_vs_exact(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / ref.shape[1] for a, b in zip(got, ref)]))


@pytest.fixture(scope="module")
def clustered():
    x, _ = clustered_embeddings(10_200, dim=128, seed=11)
    return x[:10_000], x[10_000:]


@pytest.mark.parametrize("kind", ["kdtree_pca", "hnsw"])
def test_approximate_kinds_recall_on_clustered_data(kind, clustered):
    gallery, queries = clustered
    _, ref = build_index("exact", gallery).search(queries, 10)
    _, got = build_index(kind, gallery).search(queries, 10)
    assert recall_vs_exact(got, ref) >= 0.99


def test_kdtree_pca_exact_fallback_is_exact_and_certified(clustered):
    gallery, queries = clustered
    _, ref = build_index("exact", gallery).search(queries[:50], 10)
    index = build_index("kdtree_pca", gallery, n_components=8, candidate_factor=2, exact_fallback=True)
    d, got, cert = index.search_certified(queries[:50], 10)
    np.testing.assert_array_equal(got, ref)
    assert cert.all()
    # Without the fallback the same small candidate set is not enough, and the certificate says so.
    loose = build_index("kdtree_pca", gallery, n_components=8, candidate_factor=2)
    _, got2, cert2 = loose.search_certified(queries[:50], 10)
    wrong = np.array([set(a) != set(b) for a, b in zip(got2, ref)])
    assert wrong.any()
    assert not (wrong & cert2).any()  # a certified answer is never wrong


def test_pca_basis_matches_sklearn():
    from sklearn.decomposition import PCA

    from facerec.index.kdtree_pca import fit_pca

    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3000, 12)) * np.linspace(3, 0.2, 12)).astype(np.float32)
    mean, comps, ratio = fit_pca(x, 4, block=700)
    ref = PCA(n_components=4, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(mean, ref.mean_, atol=1e-5)
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_single_vector_query_and_k_equal_count(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    index = build_index(kind, x)
    d, i = index.search(x[3], 12)
    assert d.shape == (1, 12) and i[0, 0] == 3
    assert sorted(i[0].tolist()) == list(range(12))


def test_hnsw_k_larger_than_ef_still_returns_k_exact_neighbours():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    index = build_index("hnsw", x, ef=5, num_threads=1)
    _, got = index.search(x[:10], 200)
    ref = np.argsort(cdist(x[:10], x), axis=1)[:, :200]
    assert got.shape == (10, 200)
    assert recall_vs_exact(got, ref) >= 0.99


@pytest.mark.parametrize("k", [1, 10, 150])
def test_exact_batch_path_over_many_gallery_chunks(k, monkeypatch):
    # Batches score the gallery in column chunks; small chunks force the multi-chunk merge
    # (and k > chunk width) on a small gallery.
    from facerec.index import _linalg

    monkeypatch.setattr(_linalg, "CHUNK_COLS", 64)
    monkeypatch.setattr(_linalg, "CHUNK_BYTES", 64 * 4 * 3)  # 3 queries per row block
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1000, 12)).astype(np.float32)
    q = rng.standard_normal((10, 12)).astype(np.float32)
    d, i = build_index("exact", x).search(q, k)
    ref = cdist(q, x)
    pos = np.argsort(ref, axis=1)[:, :k]
    np.testing.assert_array_equal(i, pos)
    np.testing.assert_allclose(d, np.take_along_axis(ref, pos, 1), rtol=1e-5, atol=1e-5)
