"""KD-tree search (Bentley 1975; scikit-learn ``KDTree``) on the full embeddings: the original
study's retrieval method, kept as the baseline.

A KD-tree prunes by axis-aligned bounding boxes, which stops paying off beyond roughly 10-20
dimensions (Weber et al. 1998, "A quantitative analysis ... similarity-search methods in
high-dimensional spaces"); at 128-d it visits most leaves and is usually slower than brute
force. :mod:`facerec.index.kdtree_pca` is the variant that makes the tree earn its place.

Adding vectors (both tree kinds): the tree is static, so new rows go to a *delta buffer*
searched exactly and merged with the tree's results at search time; when the buffer exceeds
``rebuild_fraction`` of the tree's size the tree is rebuilt over all rows (amortised cost:
each row is re-inserted O(1/rebuild_fraction) times at most over the index's life).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.neighbors import KDTree

from facerec.errors import ConfigError
from facerec.index._linalg import GalleryStore, merge_topk
from facerec.index.base import INDEXES, ArtifactMismatchError, Index, check_array


def check_tree_params(leaf_size, rebuild_fraction) -> None:
    if isinstance(leaf_size, bool) or not isinstance(leaf_size, (int, np.integer)) or leaf_size < 1:
        raise ConfigError("leaf_size", leaf_size, "an integer >= 1 (scikit-learn default 40)")
    if isinstance(rebuild_fraction, bool) or not isinstance(rebuild_fraction, (int, float)) or not rebuild_fraction >= 0:
        raise ConfigError(
            "rebuild_fraction", rebuild_fraction, "a number >= 0: rebuild the tree when the delta buffer exceeds this share of it"
        )


@dataclass(frozen=True)
class KDTreeParams:
    leaf_size: int = 40
    rebuild_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_tree_params(self.leaf_size, self.rebuild_fraction)


class _DeltaTreeIndex(Index):
    """Shared machinery: a static tree over rows [0, n_tree) plus an exact delta buffer."""

    def _build(self, x: np.ndarray, ids: np.ndarray) -> None:
        self._store = GalleryStore(x, ids)
        self._fit(x)
        self._rebuild()

    def _fit(self, x: np.ndarray) -> None:
        """Learn anything the tree needs beyond the rows (the PCA basis); once, at build."""

    def _tree_points(self, n: int) -> np.ndarray:
        """The points the tree indexes for gallery rows [0, n)."""
        return self._store.rows(0, n)

    def _rebuild(self, n: int | None = None) -> None:
        n = self._store.n if n is None else n
        self._tree = KDTree(self._tree_points(n), leaf_size=self.params.leaf_size)
        self._n_tree = n

    @property
    def count(self) -> int:
        return self._store.n

    @property
    def delta_count(self) -> int:
        """Rows added since the last (re)build, searched exactly."""
        return self._store.n - self._n_tree

    def ids(self) -> np.ndarray:
        return self._store.ids

    def add(self, embeddings, ids) -> None:
        """Append to the delta buffer; rebuild the tree (same PCA basis) once the buffer
        exceeds ``rebuild_fraction`` x tree size."""
        x, new_ids = self._check_new(embeddings, ids)
        self._store.append(x, new_ids)
        if self.delta_count > self.params.rebuild_fraction * self._n_tree:
            self._rebuild()

    def _with_delta(self, q: np.ndarray, k: int, tree_d: np.ndarray, tree_ids: np.ndarray):
        if self.delta_count == 0:
            return tree_d, tree_ids
        delta = self._store.topk(q, min(k, self.delta_count), start=self._n_tree)
        return merge_topk([(tree_d, tree_ids), delta], k)

    def nbytes(self) -> int:
        return self._store.nbytes() + sum(a.nbytes for a in self._tree.get_arrays())

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"embeddings": self._store.rows(), "ids": self._store.ids}

    def _state(self) -> dict:
        return {"n_tree": int(self._n_tree)}

    @classmethod
    def _expected_arrays(cls) -> tuple[str, ...]:
        return ("embeddings", "ids")

    @classmethod
    def _restore(cls, params, dim: int, arrays, state, folder: Path):
        x = check_array(arrays, "embeddings", (None, dim), np.float32, folder)
        ids = check_array(arrays, "ids", (x.shape[0],), np.int64, folder)
        n_tree = state.get("n_tree")
        if not isinstance(n_tree, int) or not 1 <= n_tree <= x.shape[0]:
            raise ArtifactMismatchError(
                f"{folder / 'index.json'}: state.n_tree={n_tree!r} but expected an integer in 1..{x.shape[0]}; "
                "rebuild the index with `python pipelines/build_index.py`"
            )
        index = cls(params, dim)
        index._store = GalleryStore(x, ids)
        index._restore_extra(arrays, folder)
        # Rebuild over the rows that were in the tree when saved, so the delta buffer (and
        # therefore every search result) is exactly what it was before the save.
        index._rebuild(n_tree)
        return index

    def _restore_extra(self, arrays, folder: Path) -> None:
        pass


@INDEXES.register("kdtree")
class KDTreeIndex(_DeltaTreeIndex):
    """scikit-learn ``KDTree`` on the full-dimensional embeddings (exact search)."""

    kind = "kdtree"
    Params = KDTreeParams

    def _search(self, q: np.ndarray, k: int):
        kt = min(k, self._n_tree)
        d, pos = self._tree.query(q, k=kt, return_distance=True, sort_results=True)
        return self._with_delta(q, k, d.astype(np.float32), self._store.ids[pos])
