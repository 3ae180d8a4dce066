"""KD-tree in a PCA-reduced space with exact re-ranking: the KD-tree made to earn its place
at 128-d.

1. At build, fit PCA on the gallery (eigenvectors of the covariance, Pearson 1901 / Jolliffe
   2002) and keep the top ``n_components`` directions (default 32: enough variance for
   recall@10 >= 0.99 up to a million vectors, few enough dimensions for the tree to prune).
2. Search: project the query, take the ``k' = candidate_factor * k`` nearest gallery points in
   the reduced space from a scikit-learn ``KDTree``, recompute their full-dimensional L2
   distances and return the best ``k``.

Because the projection is orthogonal, reduced distances are *lower bounds* of the true ones:
||P(q - x)|| <= ||q - x||. So when the k-th re-ranked true distance is <= the largest reduced
distance among the k' candidates, no other point can beat it and the answer is certified
exact (:meth:`KDTreePCAIndex.search_certified` reports this per query). With
``exact_fallback=True`` the uncertified queries run a radius query in the reduced space with
the k-th true distance as radius, which returns every point that could still be closer, so
the result is always exact (at the cost of large candidate sets when the reduced space
explains little variance).

``add`` projects new rows with the *existing* PCA basis (no refit) into the delta buffer of
:mod:`facerec.index.kdtree`; the tree rebuild on buffer overflow keeps that basis too.
Refit the PCA by building the index again from scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerec.errors import ConfigError
from facerec.index._linalg import brute_force_topk, topk_from_candidates
from facerec.index.base import INDEXES, check_array
from facerec.index.kdtree import _DeltaTreeIndex, check_tree_params

# Reduced distances are computed in float32 from float32 projections; keep the certificate
# (and the fallback radius) on the safe side of that rounding.
_REL_SLACK = 1e-5
_ABS_SLACK = 1e-6


@dataclass(frozen=True)
class KDTreePCAParams:
    """``n_components``: PCA dimension (clipped to the embedding dimension).
    ``candidate_factor``: k' = ceil(candidate_factor * k) reduced-space candidates re-ranked.
    ``exact_fallback``: make every answer exact via the lower-bound radius query."""

    # benchmarks/bench_index.py, clustered 128-d embeddings with a 1/j eigenspectrum
    # (facerec.index.synthetic), k' = 400 x k: with 16 components (~62% of the variance)
    # recall@10 vs exact was 1.000 / 0.991 / 0.887 at 10k / 100k / 1M vectors, because the number
    # of points whose reduced distance undercuts the true 10th neighbour grows with n; with 32
    # (~75%) it is 1.000 / 1.000 / 0.994 at p50 2.9 / 15 / 102 ms per query on one core (16: 3.2 /
    # 12 / 56 ms). exact_fallback makes every answer exact.
    n_components: int = 32
    candidate_factor: float = 400.0
    leaf_size: int = 40
    rebuild_fraction: float = 0.1
    exact_fallback: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise ConfigError("n_components", self.n_components, "an integer >= 1 (PCA dimension, e.g. 8-16)")
        cf = self.candidate_factor
        if isinstance(cf, bool) or not isinstance(cf, (int, float)) or not cf >= 1:
            raise ConfigError("candidate_factor", cf, "a number >= 1 (k' = candidate_factor * k candidates)")
        if not isinstance(self.exact_fallback, bool):
            raise ConfigError("exact_fallback", self.exact_fallback, "true or false")
        check_tree_params(self.leaf_size, self.rebuild_fraction)


def fit_pca(x: np.ndarray, n_components: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (d,), top components (p, d) and explained-variance ratios (p,) of the rows of x.

    The covariance is accumulated in float64 blocks (no n x d float64 copy), then eigh; signs
    are fixed so each component's largest-magnitude entry is positive (deterministic output)."""
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    for s in range(0, n, block):
        xb = x[s : s + block].astype(np.float64) - mean
        cov += xb.T @ xb
    cov /= max(1, n)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:n_components]
    comps = vecs[:, order].T
    signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    total = vals.clip(min=0).sum()
    ratio = vals[order].clip(min=0) / total if total > 0 else np.zeros(len(order))
    return mean.astype(np.float32), comps.astype(np.float32), ratio.astype(np.float32)


@INDEXES.register("kdtree_pca")
class KDTreePCAIndex(_DeltaTreeIndex):
    kind = "kdtree_pca"
    Params = KDTreePCAParams

    def _fit(self, x: np.ndarray) -> None:
        p = min(self.params.n_components, x.shape[1])
        self._mean, self._components, self._explained = fit_pca(x, p)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of rows ``x`` (n, d) in the PCA space (n, n_components)."""
        return (x - self._mean) @ self._components.T

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self._explained

    def _tree_points(self, n: int) -> np.ndarray:
        return self.project(self._store.rows(0, n))

    def search_certified(self, queries, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``search``, plus a bool (n,) array: True where the lower bound proves the
        answer exact (always True with ``exact_fallback``)."""
        from facerec.index.base import as_matrix, check_k

        k = check_k(k, self.count)
        q = as_matrix(queries, "queries", dim=self.dim, allow_vector=True)
        return self._search_cert(q, k)

    def _search(self, q: np.ndarray, k: int):
        d, i, _ = self._search_cert(q, k)
        return d, i

    def _search_cert(self, q: np.ndarray, k: int):
        nt = self._n_tree
        kc = min(nt, max(k, math.ceil(self.params.candidate_factor * k)))
        kt = min(k, kc)
        zq = self.project(q)
        # Dual-tree traversal (Gray & Moore 2001) shares work across a batch: ~1.7x faster
        # for 100 queries with k' = 4000; a single query gains nothing from it.
        rd, cand = self._tree.query(zq, k=kc, return_distance=True, sort_results=True, dualtree=q.shape[0] >= 8)
        d, pos = topk_from_candidates(q, self._store.XT, cand.astype(np.int64), kt)
        if kc == nt:
            cert = np.ones(q.shape[0], dtype=bool)
        else:
            bound = rd[:, -1] * (1 - _REL_SLACK) - _ABS_SLACK
            cert = d[:, -1] <= bound
        if self.params.exact_fallback and not cert.all():
            for r in np.flatnonzero(~cert):
                radius = float(d[r, -1]) * (1 + _REL_SLACK) + _ABS_SLACK
                hits = self._tree.query_radius(zq[r : r + 1], r=radius)[0].astype(np.int64)
                if hits.size > nt // 4:
                    # The reduced space barely prunes for this query: a brute-force pass over
                    # the tree rows is cheaper than gathering a huge candidate set.
                    dr, pr = brute_force_topk(q[r : r + 1], self._store.XT[:, :nt], self._store.half_sq[:nt], kt)
                else:
                    dr, pr = topk_from_candidates(q[r : r + 1], self._store.XT, hits[None, :], kt)
                d[r], pos[r] = dr[0], pr[0]
            cert[:] = True
        dd, ii = self._with_delta(q, k, d, self._store.ids[pos])
        return dd, ii, cert

    def nbytes(self) -> int:
        return super().nbytes() + self._mean.nbytes + self._components.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **super()._arrays(),
            "pca_mean": self._mean,
            "pca_components": self._components,
            "pca_explained": self._explained,
        }

    @classmethod
    def _expected_arrays(cls) -> tuple[str, ...]:
        return ("embeddings", "ids", "pca_mean", "pca_components", "pca_explained")

    def _restore_extra(self, arrays, folder: Path) -> None:
        p = min(self.params.n_components, self.dim)
        self._mean = check_array(arrays, "pca_mean", (self.dim,), np.float32, folder)
        self._components = check_array(arrays, "pca_components", (p, self.dim), np.float32, folder)
        self._explained = check_array(arrays, "pca_explained", (p,), np.float32, folder)
