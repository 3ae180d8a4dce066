"""Approximate search with a Hierarchical Navigable Small World graph (Malkov & Yashunin 2018,
"Efficient and robust approximate nearest neighbor search using HNSW graphs", IEEE TPAMI),
via hnswlib.

``M`` is the number of graph links per node (2M on the bottom layer), ``ef_construction`` the
candidate-list size while inserting, ``ef`` the candidate-list size while searching (hnswlib
uses max(ef, k)): higher values trade speed for recall.

``add`` inserts into the existing graph (``resize_index`` grows capacity by half when full):
no rebuild. hnswlib labels are internal row numbers 0..n-1; the int64 row ids live in a
separate array, so any int64 id (negative included) works. Saved as hnswlib's own binary
file ``hnsw.bin`` (checksummed in the manifest, never unpickled) plus ``ids.npy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.index.base import INDEXES, REBUILD_HINT, Index, check_array

GRAPH_FILE = "hnsw.bin"


def _pos_int(name: str, value, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(name, value, hint)


@dataclass(frozen=True)
class HNSWParams:
    M: int = 16
    ef_construction: int = 200
    ef: int = 128
    seed: int = 100
    num_threads: int = -1  # hnswlib threads for build/add/search; -1 = all cores

    def __post_init__(self) -> None:
        _pos_int("M", self.M, "an integer >= 1 (links per node, typically 8-48)")
        if self.M > 256:
            raise ConfigError("M", self.M, "an integer <= 256 (links per node, typically 8-48)")
        _pos_int("ef_construction", self.ef_construction, "an integer >= 1 (typically 100-500)")
        _pos_int("ef", self.ef, "an integer >= 1 (search candidate list, >= k; typically 64-512)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError("seed", self.seed, "an integer >= 0")
        if isinstance(self.num_threads, bool) or not isinstance(self.num_threads, (int, np.integer)) or not (
            self.num_threads == -1 or self.num_threads >= 1
        ):
            raise ConfigError("num_threads", self.num_threads, "-1 (all cores) or an integer >= 1")


@INDEXES.register("hnsw")
class HNSWIndex(Index):
    kind = "hnsw"
    Params = HNSWParams

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        g = hnswlib.Index(space="l2", dim=self.dim)
        g.init_index(
            max_elements=capacity, ef_construction=self.params.ef_construction, M=self.params.M, random_seed=self.params.seed
        )
        return g

    def _build(self, x: np.ndarray, ids: np.ndarray) -> None:
        self._threads = self.params.num_threads
        self._graph = self._new_graph(x.shape[0])
        self._ids = ids.copy()
        self._graph.add_items(x, np.arange(x.shape[0]), num_threads=self._threads)
        self._graph.set_ef(self.params.ef)

    @property
    def count(self) -> int:
        return int(self._ids.shape[0])

    def ids(self) -> np.ndarray:
        return self._ids

    def add(self, embeddings, ids) -> None:
        """Insert into the existing graph (no rebuild); capacity grows by half when full."""
        x, new_ids = self._check_new(embeddings, ids)
        n, m = self.count, x.shape[0]
        cap = self._graph.get_max_elements()
        if n + m > cap:
            self._graph.resize_index(max(n + m, cap + cap // 2))
        self._graph.add_items(x, np.arange(n, n + m), num_threads=self._threads)
        self._ids = np.concatenate([self._ids, new_ids])

    def set_num_threads(self, n: int) -> None:
        self._threads = int(n)

    def _search(self, q: np.ndarray, k: int):
        # hnswlib searches with max(ef, k) itself, so k > ef needs no (thread-unsafe) set_ef.
        labels, d2 = self._graph.knn_query(q, k=k, num_threads=self._threads)
        # hnswlib's "l2" space returns squared distances.
        return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), self._ids[labels.astype(np.int64)]

    def nbytes(self) -> int:
        # hnswlib's file is a dump of its in-memory blocks (vectors + links + labels).
        return int(self._graph.index_file_size()) + self._ids.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self._ids}

    def _write_extra(self, folder: Path) -> list[str]:
        self._graph.save_index(str(folder / GRAPH_FILE))
        return [GRAPH_FILE]

    @classmethod
    def _expected_arrays(cls) -> tuple[str, ...]:
        return ("ids",)

    @classmethod
    def _restore(cls, params, dim: int, arrays, state, folder: Path) -> "HNSWIndex":
        ids = check_array(arrays, "ids", (None,), np.int64, folder)
        path = folder / GRAPH_FILE
        if not path.is_file():
            raise ArtifactMismatchError(f"{folder / 'index.json'}: kind='hnsw' needs {GRAPH_FILE}, not listed in 'files'; {REBUILD_HINT}")
        index = cls(params, dim)
        index._threads = params.num_threads
        g = hnswlib.Index(space="l2", dim=dim)
        try:
            g.load_index(str(path), max_elements=ids.shape[0])
        except RuntimeError as e:
            raise ArtifactMismatchError(f"{path}: hnswlib could not read it ({e}); {REBUILD_HINT}") from None
        if g.get_current_count() != ids.shape[0]:
            raise ArtifactMismatchError(
                f"{path}: holds {g.get_current_count()} vectors but ids.npy has {ids.shape[0]}; {REBUILD_HINT}"
            )
        g.set_ef(params.ef)
        index._graph, index._ids = g, ids
        return index
