"""Retrieval metrics: identity-based (precision@k, recall@k, MAP@R) and the original study's
attribute-based ones (top-k attribute accuracy, mean attribute distance), plus a seeded random
ranking baseline for the latter.

Conventions: a *query* has a label (identity) and an attribute vector; ``retrieved`` holds,
per query, the gallery results best first, either as labels (identity metrics) or as row
positions into ``gallery_attrs`` (attribute metrics). A gallery item is *relevant* to a query
when it has the query's identity. The query itself must not be in the gallery (or must be
removed from its own results) or every metric is inflated.

Definitions used (all averaged uniformly over queries):

* precision@k = |relevant among the top k| / k   (Manning, Raghavan & Schütze 2008,
  *Introduction to Information Retrieval*, §8.4). precision@1 is the share of queries whose
  first result has the query's identity (rank-1 identification rate).
* recall@k, hit-rate form = share of queries with *at least one* relevant item in the top k,
  as used in deep metric learning (Oh Song et al. 2016, "Deep Metric Learning via Lifted
  Structured Feature Embedding", §6; Musgrave et al. 2020 call it "Recall@K" too). This is not
  the IR recall |relevant in top k| / |relevant|. recall@1 == precision@1.
* MAP@R (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check", ECCV, §3.2):
  R = number of gallery items relevant to the query, and
  MAP@R = (1/R) * sum_{i=1..R} P(i), with P(i) = precision@i if the i-th result is relevant,
  else 0. It rewards ranking *all* same-identity images first, not just one.
* top-k attribute accuracy (original study): for each query and each of its top-k results,
  the share of the 40 attributes on which the two agree; averaged over the k results and over
  queries.
* mean attribute distance (original study): the Hamming distance (number of differing
  attributes) between query and result, averaged over the k results and over queries. With
  A attributes and no missing values it equals A * (1 - attribute accuracy).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from facerec.errors import ConfigError

DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100, 1000)
_CHUNK = 256  # queries per block when gathering (n, k, A) attribute tensors


# --------------------------------------------------------------------------- validation


def _check_labels(query_labels: Any, retrieved_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query_labels)
    r = np.asarray(retrieved_labels)
    if q.ndim != 1:
        raise ConfigError("query_labels", f"array of shape {q.shape}", "a 1-D array, one label per query")
    if r.ndim != 2 or r.shape[0] != q.shape[0]:
        raise ConfigError(
            "retrieved_labels", f"array of shape {r.shape}", f"a 2-D array ({q.shape[0]} queries, k results) of labels"
        )
    if q.shape[0] == 0:
        raise ConfigError("query_labels", "0 queries", "at least one query")
    return q, r


def _check_k(k: Any, available: int, name: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(name, k, "an integer >= 1")
    if k > available:
        raise ConfigError(name, int(k), f"k <= {available}, the number of results retrieved per query (search with a larger k)")
    return int(k)


# --------------------------------------------------------------------------- identity metrics


def precision_at_k(query_labels: Any, retrieved_labels: Any, k: int) -> float:
    """Mean over queries of |same-identity results among the top k| / k (IR precision@k)."""
    q, r = _check_labels(query_labels, retrieved_labels)
    k = _check_k(k, r.shape[1])
    return float((r[:, :k] == q[:, None]).mean())


def precision_at_1(query_labels: Any, retrieved_labels: Any) -> float:
    """Share of queries whose first result has the query's identity (rank-1 accuracy)."""
    return precision_at_k(query_labels, retrieved_labels, 1)


def recall_at_k(query_labels: Any, retrieved_labels: Any, k: int) -> float:
    """Hit-rate Recall@K (Oh Song et al. 2016): share of queries with at least one
    same-identity result among the top k."""
    q, r = _check_labels(query_labels, retrieved_labels)
    k = _check_k(k, r.shape[1])
    return float((r[:, :k] == q[:, None]).any(axis=1).mean())


def relevant_counts(query_labels: Any, gallery_labels: Any) -> np.ndarray:
    """R per query: how many gallery items share the query's label."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    if g.ndim != 1:
        raise ConfigError("gallery_labels", f"array of shape {g.shape}", "a 1-D array, one label per gallery item")
    if g.size == 0:
        return np.zeros(q.shape[0], dtype=np.int64)
    uniq, counts = np.unique(g, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, q), 0, len(uniq) - 1)
    return np.where(uniq[pos] == q, counts[pos], 0).astype(np.int64)


def map_at_r(query_labels: Any, retrieved_labels: Any, gallery_labels: Any) -> float:
    """MAP@R of Musgrave et al. 2020 (ECCV, §3.2): (1/R) sum_{i<=R} P(i) * rel(i), averaged
    over queries, where R = number of gallery items with the query's label.

    ``retrieved_labels`` needs at least max(R) columns. Queries with R = 0 are an error (the
    metric is undefined for them): drop them, or keep identities with >= 2 images.
    """
    q, r = _check_labels(query_labels, retrieved_labels)
    R = relevant_counts(q, gallery_labels)
    if (R == 0).any():
        bad = np.flatnonzero(R == 0)
        raise ConfigError(
            "query_labels",
            f"{bad.size} queries with no same-label gallery item (first: query {int(bad[0])}, label {q[bad[0]]!r})",
            "every query label present in gallery_labels (MAP@R is undefined for R = 0; drop those queries)",
        )
    if R.max() > r.shape[1]:
        i = int(R.argmax())
        raise ConfigError(
            "retrieved_labels",
            f"{r.shape[1]} results per query",
            f"at least max R = {int(R.max())} (query {i}); search with k >= {int(R.max())}",
        )
    kmax = int(R.max())
    return float(average_precision_at_r(r[:, :kmax] == q[:, None], R).mean())


def average_precision_at_r(relevant: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per-query AP@R (Musgrave et al. 2020, §3.2): ``relevant`` (m, >= max R) says whether the
    i-th result of each query has its label, ``R`` (m,) >= 1 how many relevant items exist.
    (1/R) sum_{i<=R} P(i) rel(i), with P(i) the precision at rank i."""
    kmax = int(R.max())
    rel = relevant[:, :kmax]
    ranks = np.arange(1, kmax + 1)
    prec = np.cumsum(rel, axis=1) / ranks
    within = ranks[None, :] <= R[:, None]
    return (prec * rel * within).sum(axis=1) / R


# --------------------------------------------------------------------------- leave-one-out retrieval

LOO_BLOCK_BYTES = 64 << 20
"""Default memory budget of :func:`leave_one_out_metrics`'s per-block arrays (64 MiB): the full
n x n float64 distance matrix of 20k validation images would take 3.2 GB in every worker."""


SELECTION_SPARE = 8


def loo_row_bytes(n: int, k: int, dim: int) -> int:
    """Bytes one query row of a :func:`leave_one_out_metrics` block holds: its float32 scores
    against all ``n`` items and argpartition's int64 positions (12 n), and for its ``k``
    candidates the gathered float32 rows with their float64 copy (12 dim each) plus positions,
    distances and relevance (32 each)."""
    return 12 * int(n) + int(k) * (12 * int(dim) + 32)


def loo_block_rows(n: int, k: int, dim: int, block_bytes: int = LOO_BLOCK_BYTES) -> int:
    """Query rows per block so a block's arrays stay within ``block_bytes`` (at least one row)."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, (int, np.integer)) or block_bytes < 1:
        raise ConfigError("block_bytes", block_bytes, "a positive number of bytes, e.g. 64 << 20")
    return max(1, min(int(n), int(block_bytes) // loo_row_bytes(n, k, dim)))


def leave_one_out_metrics(embeddings: Any, labels: Any, block_bytes: int = LOO_BLOCK_BYTES) -> dict[str, float]:
    """precision@1 and MAP@R (Musgrave et al. 2020, §3.2) of leave-one-out retrieval among
    ``embeddings`` by L2 distance: every item with at least one other item of its label is a
    query, all other items are its gallery (R = number of others with its label); items alone
    with their label are gallery only. The protocol of pytorch-metric-learning's
    ``AccuracyCalculator(...).get_accuracy(x, labels)`` (``ref_includes_query=True``).

    Exact top-R neighbours without an n x n matrix: queries go in blocks whose arrays fit
    ``block_bytes`` (:func:`loo_block_rows`); each block scores all items with one float32
    matrix product (||x||^2/2 - q.x ranks like ||q - x||^2), ``np.argpartition`` keeps its R
    best (and a few more), and those are re-ranked by float64 distances computed from the differences (no
    cancellation), ties by position as a stable sort would. The embeddings are centred first and
    :data:`SELECTION_SPARE` more candidates than R are kept, so the float32 selection does not
    decide near-ties. Returns NaNs when no item has a match.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    if x.ndim != 2:
        raise ConfigError("embeddings", f"array of shape {x.shape}", "a 2-D array (items, dimensions)")
    if lab.ndim != 1 or lab.shape[0] != x.shape[0]:
        raise ConfigError("labels", f"array of shape {lab.shape}", f"a 1-D array of {x.shape[0]} labels, one per embedding")
    R = relevant_counts(lab, lab) - 1  # the query itself is not in its gallery
    queries = np.flatnonzero(R > 0)
    if queries.size == 0:
        return {"precision_at_1": float("nan"), "map_at_r": float("nan")}
    n, dim = x.shape
    # Distances do not change under translation; centred, the float32 expansion's rounding scales
    # with the embeddings' spread, not their norm (a model barely out of initialisation maps every
    # face within ~1e-4 of one point: uncentred, float32 scores would rank those by rounding noise).
    x = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32)
    xt = np.ascontiguousarray(x.T)
    half_sq = 0.5 * np.einsum("ij,ij->i", x, x)
    spare = SELECTION_SPARE  # candidates beyond R, so float32 rounding at the R-th place cannot drop a neighbour
    step = loo_block_rows(n, min(n - 1, int(R[queries].max()) + spare), dim, block_bytes)
    hits = ap_sum = 0.0
    for s in range(0, queries.size, step):
        q = queries[s:s + step]
        k = int(R[q].max())
        c = min(n - 1, k + spare)
        scores = x[q] @ xt
        np.subtract(half_sq, scores, out=scores)
        scores[np.arange(q.size), q] = np.inf  # leave the query out
        cand = np.argpartition(scores, c - 1, axis=1)[:, :c] if c < n - 1 else np.argsort(scores, axis=1)[:, :c]
        del scores
        diff = x[cand].astype(np.float64)
        diff -= x[q, None, :]
        d2 = np.einsum("bkd,bkd->bk", diff, diff)
        del diff
        cand = np.take_along_axis(cand, np.lexsort((cand, d2), axis=-1), axis=1)[:, :k]
        rel = lab[cand] == lab[q, None]
        hits += float(rel[:, 0].sum())
        ap_sum += float(average_precision_at_r(rel, R[q]).sum())
    return {"precision_at_1": hits / queries.size, "map_at_r": ap_sum / queries.size}


# --------------------------------------------------------------------------- attribute metrics


def _check_attrs(query_attrs: Any, gallery_attrs: Any, retrieved: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qa = np.asarray(query_attrs)
    ga = np.asarray(gallery_attrs)
    rt = np.asarray(retrieved)
    if qa.ndim != 2:
        raise ConfigError("query_attrs", f"array of shape {qa.shape}", "a 2-D array (queries, attributes), e.g. (n, 40)")
    if ga.ndim != 2 or ga.shape[1] != qa.shape[1]:
        raise ConfigError(
            "gallery_attrs", f"array of shape {ga.shape}", f"a 2-D array (gallery, {qa.shape[1]}) matching query_attrs"
        )
    if rt.ndim != 2 or rt.shape[0] != qa.shape[0]:
        raise ConfigError(
            "retrieved", f"array of shape {rt.shape}", f"a 2-D array ({qa.shape[0]} queries, k) of gallery row positions"
        )
    if rt.dtype.kind not in "iu":
        raise ConfigError("retrieved", f"dtype {rt.dtype}", "integer gallery row positions (0-based rows of gallery_attrs)")
    if rt.size and (rt.min() < 0 or rt.max() >= ga.shape[0]):
        raise ConfigError(
            "retrieved",
            f"positions in [{rt.min()}, {rt.max()}]",
            f"0-based rows of gallery_attrs, in [0, {ga.shape[0] - 1}] (map index ids to table rows first)",
        )
    return qa, ga, rt


def _agreements(qa: np.ndarray, ga: np.ndarray, rt: np.ndarray, k: int) -> np.ndarray:
    """(n, k) number of attributes on which query i and its j-th result agree."""
    out = np.empty((qa.shape[0], k), dtype=np.int32)
    for s in range(0, qa.shape[0], _CHUNK):
        sel = ga[rt[s : s + _CHUNK, :k]]  # (m, k, A)
        out[s : s + _CHUNK] = (sel == qa[s : s + _CHUNK, None, :]).sum(axis=2)
    return out


def attribute_topk_accuracy(query_attrs: Any, gallery_attrs: Any, retrieved: Any, k: int) -> float:
    """The original study's top-k attribute accuracy: share of attributes on which query and
    result agree, averaged over the top k results and over queries."""
    qa, ga, rt = _check_attrs(query_attrs, gallery_attrs, retrieved)
    k = _check_k(k, rt.shape[1])
    return float(_agreements(qa, ga, rt, k).mean() / qa.shape[1])


def mean_attribute_distance(query_attrs: Any, gallery_attrs: Any, retrieved: Any, k: int) -> float:
    """The original study's mean attribute distance: Hamming distance (number of differing
    attributes) between query and result, averaged over the top k results and over queries."""
    qa, ga, rt = _check_attrs(query_attrs, gallery_attrs, retrieved)
    k = _check_k(k, rt.shape[1])
    return float(qa.shape[1] - _agreements(qa, ga, rt, k).mean())


def effective_ks(ks: Iterable[int], gallery_size: int) -> list[int]:
    """``ks`` clipped to the gallery size, duplicates removed, order kept."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("ks", k, "integers >= 1, e.g. (10, 20, 50, 100, 1000)")
        ke = min(int(k), gallery_size)
        if ke not in out:
            out.append(ke)
    if not out:
        raise ConfigError("ks", list(ks), "at least one k")
    return out


def attribute_metrics(
    query_attrs: Any, gallery_attrs: Any, retrieved: Any, ks: Iterable[int] = DEFAULT_KS
) -> pd.DataFrame:
    """Both attribute metrics for each k of ``ks`` (clipped to the gallery size; the ``k``
    column holds the value used). Columns: k, attribute_accuracy, mean_attribute_distance."""
    qa, ga, rt = _check_attrs(query_attrs, gallery_attrs, retrieved)
    kk = effective_ks(ks, ga.shape[0])
    kmax = _check_k(max(kk), rt.shape[1], name="ks")
    agree = _agreements(qa, ga, rt, kmax)
    # Mean over the first k columns for every k at once via a cumulative sum over ranks.
    csum = np.cumsum(agree.mean(axis=0, dtype=np.float64))
    n_attr = qa.shape[1]
    rows = []
    for k in kk:
        mean_agree = csum[k - 1] / k
        rows.append({"k": k, "attribute_accuracy": mean_agree / n_attr, "mean_attribute_distance": n_attr - mean_agree})
    return pd.DataFrame(rows, columns=["k", "attribute_accuracy", "mean_attribute_distance"])


def random_ranking(n_queries: int, gallery_size: int, k: int, seed: int = 0) -> np.ndarray:
    """(n_queries, k) gallery positions of a uniformly random ranking per query (no repeats
    within a query), from ``numpy.random.default_rng(seed)``."""
    k = min(k, gallery_size)
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(gallery_size, size=k, replace=False) for _ in range(n_queries)]).astype(np.int64)


def random_ranking_baseline(
    query_attrs: Any, gallery_attrs: Any, ks: Iterable[int] = DEFAULT_KS, seed: int = 0
) -> pd.DataFrame:
    """:func:`attribute_metrics` of a seeded random ranking: the chance level the study
    compares against. Its expectation is the mean query-gallery agreement over all pairs."""
    qa = np.asarray(query_attrs)
    ga = np.asarray(gallery_attrs)
    if qa.ndim != 2 or ga.ndim != 2:
        raise ConfigError("query_attrs/gallery_attrs", f"shapes {qa.shape}, {ga.shape}", "2-D arrays (n, attributes)")
    kk = effective_ks(ks, ga.shape[0])
    rt = random_ranking(qa.shape[0], ga.shape[0], max(kk), seed=seed)
    return attribute_metrics(qa, ga, rt, kk)
