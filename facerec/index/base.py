"""The one retrieval-index interface: ``build``, ``add``, ``search(k)``, ``save``, ``load``.

Every kind (see :data:`INDEXES`) stores the gallery's int64 row ids (the caller maps them to
image ids / identities through its gallery Parquet table) and answers ``search`` with L2
distances, ascending.

On-disk layout (``save``), one folder per index::

    DIR/
      index.json      manifest: {format_version, revision, kind, params, state, model_id,
                      embedding_dim, count, files: {name: sha256}, metadata, created_utc}
      *.npy           arrays, ``np.save(..., allow_pickle=False)``
      hnsw.bin        (hnsw only) hnswlib's own binary graph file, checksummed like the rest

No pickle anywhere: tree indexes are rebuilt from the arrays on load. A save writes a complete
new folder beside ``DIR`` and swaps it in with one rename (:func:`facerec.io.publish_folder`:
``renameat2(RENAME_EXCHANGE)`` on Linux), so readers see either the old version or the new one, never a mix; the previous
version stays readable until that rename.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.io import atomic_write_json, publish_folder, read_json_object, sha256_file
from facerec.registry import Registry

FORMAT_VERSION = 1
MANIFEST = "index.json"
REBUILD_HINT = "rebuild the index with `python pipelines/build_index.py` (or `facerec build-index`)"

INDEXES: Registry[type["Index"]] = Registry("index kind")


# --------------------------------------------------------------------------- validation


def as_matrix(x: Any, name: str, dim: int | None = None, allow_vector: bool = False) -> np.ndarray:
    """Validate user vectors: 2-D (or 1-D when ``allow_vector``), numeric, finite, ``dim``
    columns. Returns a C-contiguous float32 copy-or-view."""
    arr = np.asarray(x)
    if arr.ndim == 1 and allow_vector:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ConfigError(name, f"array of shape {arr.shape}", "a 2-D array (n, embedding_dim)")
    if arr.dtype.kind not in "fiu":
        raise ConfigError(name, f"array of dtype {arr.dtype}", "a float array (float32 embeddings)")
    if dim is not None and arr.shape[1] != dim:
        raise ConfigError(
            name,
            f"array of shape {arr.shape}",
            f"{dim} columns, the index's embedding_dim (embeddings from another model? "
            f"re-embed with the index's model or {REBUILD_HINT})",
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ConfigError(
            name,
            f"NaN/inf in {bad.size} row(s), first row {int(bad[0])}",
            "finite values (check the embedding step for a failed image or a diverged model)",
        )
    return arr


def as_ids(ids: Any, n: int, name: str = "ids") -> np.ndarray:
    """Validate row ids: 1-D integers, one per embedding row, unique."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigError(name, f"array of shape {arr.shape}", f"a 1-D array of {n} ids, one per embedding row")
    if arr.dtype.kind not in "iu":
        raise ConfigError(name, f"array of dtype {arr.dtype}", "int64 row ids")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ConfigError(name, f"max id {arr.max()}", "ids that fit in int64")
    arr = arr.astype(np.int64, copy=False)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(name, f"duplicate id {int(uniq[counts > 1][0])}", "unique row ids")
    return arr


def check_k(k: Any, count: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ConfigError("k", k, "an integer number of neighbours")
    if not 1 <= k <= count:
        raise ConfigError("k", int(k), f"1 <= k <= {count}, the number of vectors in the index")
    return int(k)


def make_params(cls: type, params: dict[str, Any]) -> Any:
    """``cls.Params(**params)`` with unknown names reported as a ConfigError."""
    known = [f.name for f in dataclasses.fields(cls.Params)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError("params", unknown, f"parameters of index kind {cls.kind!r}: {known}")
    return cls.Params(**params)


def params_to_json(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


# --------------------------------------------------------------------------- the interface


class Index(abc.ABC):
    """A k-nearest-neighbour index over L2-distances of float32 embeddings.

    Subclasses set ``kind`` and ``Params`` (a validated dataclass) and implement ``_build``,
    ``add``, ``_search``, ``nbytes``, ``_arrays``/``_state`` (what to save) and ``_restore``.
    """

    kind: ClassVar[str]
    Params: ClassVar[type]

    def __init__(self, params: Any, dim: int):
        self.params = params
        self.dim = int(dim)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: Any, ids: Any = None, **params: Any) -> "Index":
        """Index ``embeddings`` (n, d) under ``ids`` (n,) int64 (default 0..n-1)."""
        p = make_params(cls, params)
        x = as_matrix(embeddings, "embeddings")
        if x.shape[0] == 0:
            raise ConfigError("embeddings", "0 rows", "at least one gallery vector")
        ids = np.arange(x.shape[0], dtype=np.int64) if ids is None else as_ids(ids, x.shape[0])
        index = cls(p, x.shape[1])
        index._build(x, ids)
        return index

    @abc.abstractmethod
    def _build(self, x: np.ndarray, ids: np.ndarray) -> None: ...

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Number of vectors searched."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """All row ids in insertion order."""

    def _check_new(self, embeddings: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        x = as_matrix(embeddings, "embeddings", dim=self.dim)
        new_ids = as_ids(ids, x.shape[0])
        clash = np.isin(new_ids, self.ids())
        if clash.any():
            raise ConfigError(
                "ids", f"id {int(new_ids[clash][0])} already in the index", "ids not yet in the index (row ids are unique)"
            )
        return x, new_ids

    @abc.abstractmethod
    def add(self, embeddings: Any, ids: Any) -> None:
        """Add vectors without retraining; see each kind for how (append / delta buffer / graph insert)."""

    # -- search --------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery vectors of each query.

        ``queries``: (n, d) or one (d,) vector. Returns ``(distances, ids)``, each (n, k):
        L2 distances float32 ascending, and the matching int64 row ids.
        """
        k = check_k(k, self.count)
        q = as_matrix(queries, "queries", dim=self.dim, allow_vector=True)
        d, i = self._search(q, k)
        return d.astype(np.float32, copy=False), i.astype(np.int64, copy=False)

    @abc.abstractmethod
    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def set_num_threads(self, n: int) -> None:
        """Threads for search where the kind manages its own pool (hnsw). NumPy/BLAS kinds
        follow ``threadpoolctl.threadpool_limits`` instead; this is a no-op for them."""

    @abc.abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the index structures (arrays, tree, graph)."""

    # -- persistence ---------------------------------------------------------------------
    @abc.abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Arrays to save, name -> array (saved as ``name.npy``)."""

    def _state(self) -> dict[str, Any]:
        """Small JSON state beside ``params`` (e.g. how many rows are in the tree)."""
        return {}

    def _write_extra(self, folder: Path) -> list[str]:
        """Write non-.npy files (hnsw graph); return their names."""
        return []

    @classmethod
    @abc.abstractmethod
    def _restore(cls, params: Any, dim: int, arrays: dict[str, np.ndarray], state: dict, folder: Path) -> "Index": ...

    @classmethod
    def _expected_arrays(cls) -> tuple[str, ...]:
        return ()

    def save(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the index to ``directory`` atomically (see module docstring).

        ``metadata`` should carry ``model_id`` (the checkpoint whose embeddings these are); it is
        stored verbatim and ``model_id`` also at the top of the manifest, for ``load_index``.
        """
        target = Path(directory)
        metadata = dict(metadata or {})
        revision = 1
        if target.exists():
            if not target.is_dir():
                raise ConfigError("directory", str(target), "a folder path (a file of that name exists)")
            old_manifest = target / MANIFEST
            if old_manifest.is_file():
                try:
                    revision = int(json.loads(old_manifest.read_text()).get("revision", 0)) + 1
                except (ValueError, OSError, AttributeError):
                    revision = 1
            elif any(target.iterdir()):
                raise ConfigError(
                    "directory",
                    str(target),
                    f"an empty folder or an existing index folder (with {MANIFEST}); "
                    "refusing to replace a folder with other content",
                )
        with publish_folder(target) as tmp:
            files: dict[str, str] = {}
            for name, arr in self._arrays().items():
                fn = f"{name}.npy"
                with open(tmp / fn, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                files[fn] = sha256_file(tmp / fn)
            for fn in self._write_extra(tmp):
                files[fn] = sha256_file(tmp / fn)
            manifest = {
                "format_version": FORMAT_VERSION,
                "revision": revision,
                "kind": self.kind,
                "params": params_to_json(self.params),
                "state": self._state(),
                "model_id": metadata.get("model_id"),
                "embedding_dim": self.dim,
                "count": self.count,
                "files": files,
                "metadata": metadata,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            atomic_write_json(tmp / MANIFEST, manifest)
        return target

    @classmethod
    def load(
        cls, directory: str | os.PathLike, expected_model_id: str | None = None, expected_dim: int | None = None
    ) -> "Index":
        """Load a saved index (any kind when called on ``Index``); see :func:`load_index`."""
        index = load_index(directory, expected_model_id=expected_model_id, expected_dim=expected_dim)
        if cls is not Index and not isinstance(index, cls):
            raise ArtifactMismatchError(
                f"{Path(directory) / MANIFEST}: kind={index.kind!r} but {cls.__name__}.load expects "
                f"kind={cls.kind!r}; use load_index() for any kind, or {REBUILD_HINT} with --index {cls.kind}"
            )
        return index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count}, dim={self.dim}, params={self.params})"


# --------------------------------------------------------------------------- build / load


def check_kinds(kinds: list[str], index_params: dict[str, Any] | None = None) -> None:
    """A configuration's index kinds: at least one, each registered and named once, parameters
    only for kinds it builds (:class:`~facerec.errors.ConfigError` naming the field otherwise)."""
    if not kinds:
        raise ConfigError("kinds", kinds, f"at least one index kind of {INDEXES.names()}")
    for k in kinds:
        INDEXES.get(k)  # ConfigError naming the kinds
    if len(set(kinds)) != len(kinds):
        raise ConfigError("kinds", kinds, "each kind once")
    for k in index_params or {}:
        if k not in kinds:
            raise ConfigError("index_params", sorted(index_params), f"parameters only for the kinds built {kinds}")


def build_index(kind: str, embeddings: Any, ids: Any = None, **params: Any) -> Index:
    """Build an index of ``kind`` (one of ``INDEXES.names()``) over ``embeddings`` with ``ids``."""
    return INDEXES.get(kind).build(embeddings, ids, **params)


_REQUIRED_KEYS = ("format_version", "kind", "params", "embedding_dim", "count", "files")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``index.json`` of a saved index, with clear errors when absent or damaged."""
    folder = Path(directory)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DataNotFoundError(f"index folder {folder} not found; {REBUILD_HINT} --out {folder}")
    manifest = read_json_object(
        path, keys=_REQUIRED_KEYS, fix=f"the manifest is damaged; {REBUILD_HINT}",
        not_found=f"{path} not found: {folder} is not a saved index (or its save was interrupted); {REBUILD_HINT}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactMismatchError(
            f"{path}: format_version={manifest['format_version']!r} but this facerec reads "
            f"format_version={FORMAT_VERSION}; {REBUILD_HINT}"
        )
    return manifest


def load_index(
    directory: str | os.PathLike, expected_model_id: str | None = None, expected_dim: int | None = None
) -> Index:
    """Load an index saved by :meth:`Index.save`, verifying it before use.

    Checks, in order: the manifest exists and parses; ``model_id`` equals ``expected_model_id``
    and ``embedding_dim`` equals ``expected_dim`` (when given) -> ``ArtifactMismatchError``;
    every listed file exists (``DataNotFoundError``) and matches its sha256
    (``ArtifactMismatchError``: damaged); array shapes agree with ``count``/``embedding_dim``.
    """
    folder = Path(directory)
    manifest = read_manifest(folder)
    mpath = folder / MANIFEST
    kind = manifest["kind"]
    if kind not in INDEXES:
        raise ArtifactMismatchError(
            f"{mpath}: kind={kind!r} is not a known index kind (expected one of {INDEXES.names()}); {REBUILD_HINT}"
        )
    cls = INDEXES.get(kind)
    if expected_model_id is not None and manifest.get("model_id") != expected_model_id:
        raise ArtifactMismatchError(
            f"{mpath}: model_id={manifest.get('model_id')!r} but expected model_id={expected_model_id!r}: "
            f"the index holds embeddings of another model; {REBUILD_HINT} --checkpoint <the model's checkpoint>"
        )
    dim = manifest["embedding_dim"]
    if expected_dim is not None and dim != expected_dim:
        raise ArtifactMismatchError(
            f"{mpath}: embedding_dim={dim!r} but expected embedding_dim={expected_dim}: "
            f"the index was built from another embedding size; {REBUILD_HINT} with the current model"
        )
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactMismatchError(f"{mpath}: field 'files' is {type(files).__name__}, expected an object; {REBUILD_HINT}")
    for fn, digest in files.items():
        fpath = folder / fn
        if not fpath.is_file():
            raise DataNotFoundError(f"{fpath} not found but listed in {mpath}: the index is incomplete; {REBUILD_HINT}")
        found = sha256_file(fpath)
        if found != digest:
            raise ArtifactMismatchError(
                f"{fpath}: sha256 {found[:16]}... but {MANIFEST} records {str(digest)[:16]}...: "
                f"the file is damaged or was replaced; {REBUILD_HINT}"
            )
    arrays: dict[str, np.ndarray] = {}
    for fn in files:
        if fn.endswith(".npy"):
            try:
                arrays[fn[: -len(".npy")]] = np.load(folder / fn, allow_pickle=False)
            except ValueError as e:
                raise ArtifactMismatchError(f"{folder / fn}: not a plain .npy array ({e}); {REBUILD_HINT}") from None
    for name in cls._expected_arrays():
        if name not in arrays:
            raise ArtifactMismatchError(f"{mpath}: kind={kind!r} needs {name}.npy, not listed in 'files'; {REBUILD_HINT}")
    try:
        params = cls.Params(**manifest["params"])
    except (TypeError, ValueError) as e:
        raise ArtifactMismatchError(f"{mpath}: params {manifest['params']!r} invalid for kind={kind!r} ({e}); {REBUILD_HINT}") from None
    index = cls._restore(params, int(dim), arrays, dict(manifest.get("state") or {}), folder)
    if index.count != manifest["count"]:
        raise ArtifactMismatchError(
            f"{mpath}: count={manifest['count']!r} but the data files hold {index.count} vectors; {REBUILD_HINT}"
        )
    return index


def check_array(arrays: dict[str, np.ndarray], name: str, shape: tuple, dtype, folder: Path) -> np.ndarray:
    """Shape/dtype check of a loaded array (``None`` in ``shape`` matches any length)."""
    arr = arrays[name]
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok or arr.dtype != np.dtype(dtype):
        want = tuple("n" if s is None else s for s in shape)
        raise ArtifactMismatchError(
            f"{folder / (name + '.npy')}: shape {arr.shape} dtype {arr.dtype} but expected shape {want} "
            f"dtype {np.dtype(dtype)} (from {MANIFEST}); {REBUILD_HINT}"
        )
    return arr
