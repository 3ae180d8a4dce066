"""Bad input to build/add/search raises a ConfigError (a ValueError) naming the field, the value
and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import ConfigError
from facerec.index import build_index

KINDS = ["exact", "kdtree", "kdtree_pca", "hnsw"]


@pytest.fixture(scope="module", params=KINDS)
def index(request):
    rng = np.random.default_rng(0)
    return build_index(request.param, rng.standard_normal((50, 8)).astype(np.float32))


def test_k_out_of_range(index):
    q = np.zeros((1, 8), np.float32)
    with pytest.raises(ConfigError, match=r"k=0 is invalid: expected 1 <= k <= 50"):
        index.search(q, 0)
    with pytest.raises(ConfigError, match=r"k=51 is invalid: expected 1 <= k <= 50"):
        index.search(q, 51)
    with pytest.raises(ConfigError, match=r"k=2.5 is invalid: expected an integer"):
        index.search(q, 2.5)


def test_query_of_wrong_dimension(index):
    with pytest.raises(ConfigError, match=r"queries='array of shape \(2, 9\)'.*8 columns, the index's embedding_dim"):
        index.search(np.zeros((2, 9), np.float32), 1)
    with pytest.raises(ConfigError, match=r"queries='array of shape \(1, 2, 8\)'.*2-D array"):
        index.search(np.zeros((1, 2, 8), np.float32), 1)


def test_nan_query(index):
    q = np.zeros((3, 8), np.float32)
    q[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf in 1 row\(s\), first row 2.*finite values"):
        index.search(q, 1)


def test_non_numeric_query(index):
    with pytest.raises(ConfigError, match=r"dtype <U1"):
        index.search(np.array([["a"] * 8]), 1)


def test_add_wrong_dimension_and_duplicate_ids(index):
    with pytest.raises(ConfigError, match=r"embeddings='array of shape \(1, 3\)'"):
        index.add(np.zeros((1, 3), np.float32), [100])
    with pytest.raises(ConfigError, match=r"ids='id 7 already in the index'"):
        index.add(np.zeros((1, 8), np.float32), [7])
    with pytest.raises(ConfigError, match=r"ids='array of shape \(2,\)'.*1 ids, one per embedding row"):
        index.add(np.zeros((1, 8), np.float32), [100, 101])
    with pytest.raises(ConfigError, match=r"ids='array of dtype float64'"):
        index.add(np.zeros((1, 8), np.float32), [1.5])
    assert index.count == 50  # nothing was added by the failed calls


def test_build_errors():
    x = np.zeros((5, 4), np.float32)
    with pytest.raises(ConfigError, match=r"index kind='annoy' is invalid: expected one of \['exact', 'hnsw', 'kdtree', 'kdtree_pca'\]"):
        build_index("annoy", x)
    with pytest.raises(ConfigError, match=r"embeddings='0 rows'"):
        build_index("exact", np.zeros((0, 4), np.float32))
    with pytest.raises(ConfigError, match=r"ids='duplicate id 3'"):
        build_index("exact", x, [1, 2, 3, 3, 4])
    with pytest.raises(ConfigError, match=r"params=\['ef_search'\] is invalid: expected parameters of index kind 'hnsw'"):
        build_index("hnsw", x, ef_search=10)
    with pytest.raises(ConfigError, match=r"M=0 is invalid"):
        build_index("hnsw", x, M=0)
    with pytest.raises(ConfigError, match=r"candidate_factor=0.5 is invalid"):
        build_index("kdtree_pca", x, candidate_factor=0.5)
    with pytest.raises(ConfigError, match=r"leaf_size=0 is invalid"):
        build_index("kdtree", x, leaf_size=0)
    with pytest.raises(ConfigError, match=r"NaN/inf"):
        build_index("kdtree", np.full((3, 2), np.inf))
