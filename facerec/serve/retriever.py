"""The ``Retriever`` deployment: top-k search in the gallery's per-model indexes.

Each replica serves an immutable :class:`GallerySnapshot`. A new gallery version (an add by any
replica, or an index rebuilt by ``pipelines/build_index.py``) is picked up without downtime: a
background thread polls ``gallery.json`` every ``reload_poll_s`` seconds, loads the new version
beside the old one, and swaps one reference; searches in flight finish on the snapshot they
started with. ``reload()`` does the same on demand, and ``add()`` swaps in its own write at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.serve.gallery import GallerySnapshot, add_to_gallery, manifest_fingerprint

logger = logging.getLogger("ray.serve")


class RetrieverCore:
    """The Retriever without Ray (tests use it in-process)."""

    def __init__(self, gallery_dir: str, models: dict[str, str], index_kind: str | None = None,
                 index_params: dict[str, Any] | None = None):
        self.gallery_dir = Path(gallery_dir)
        self.expected_model_ids = dict(models)
        self.index_kind = index_kind
        self.index_params = dict(index_params or {})
        self._lock = threading.Lock()  # serialises loads and writes of this replica
        self.snapshot = self._load()

    def _load(self) -> GallerySnapshot:
        return GallerySnapshot.load(self.gallery_dir, list(self.expected_model_ids), self.expected_model_ids,
                                    self.index_kind, self.index_params)

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Load the gallery again if ``gallery.json`` changed (or ``force``); swap atomically."""
        with self._lock:
            old = self.snapshot
            if force or manifest_fingerprint(self.gallery_dir) != old.fingerprint:
                new = self._load()
                if new.version >= old.version or force:
                    self.snapshot = new
                    if new.version != old.version:
                        logger.info("gallery %s: version %d -> %d (%d rows)", self.gallery_dir, old.version, new.version, new.rows)
            return self.info()

    def info(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "version": s.version,
            "rows": s.rows,
            "identities": int(len(np.unique(s.identities[: s.rows]))),
            "models": {n: {"model_id": m.model_id, "embedding_dim": m.embedding_dim, "index_kind": m.index_kind}
                       for n, m in s.models.items()},
        }

    def search(self, model: str, embeddings: np.ndarray, k: int) -> dict[str, Any]:
        s = self.snapshot  # one snapshot for the whole request
        return {"version": s.version, "results": s.search(model, embeddings, k)}

    def crop_bytes(self, image_id: str) -> bytes | None:
        path = self.snapshot.crop_file(image_id)
        return path.read_bytes() if path is not None else None

    def add(self, embeddings: dict[str, np.ndarray], identities: list[int], crops_png: list[bytes],
            boxes: list[list[int]] | None = None) -> dict[str, Any]:
        with self._lock:
            out = add_to_gallery(self.gallery_dir, embeddings, identities, crops_png, boxes, self.expected_model_ids)
            self.snapshot = self._load()
            out["rows"] = self.snapshot.rows
            return out


@serve.deployment(name="Retriever", health_check_period_s=10)
class Retriever:
    """``models``: served model name -> model_id of its checkpoint (checked against the index)."""

    def __init__(self, gallery_dir: str, models: dict[str, str], index_kind: str | None = None,
                 index_params: dict[str, Any] | None = None, reload_poll_s: float = 2.0):
        self.core = RetrieverCore(gallery_dir, models, index_kind, index_params)
        self._stop = threading.Event()
        self._poll_s = float(reload_poll_s)
        self._watcher = threading.Thread(target=self._watch, name="gallery-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.core.reload()
            except Exception:  # a half-copied gallery must not kill the replica; the old snapshot keeps serving
                logger.exception("gallery reload failed; still serving version %d", self.core.snapshot.version)

    def __del__(self):
        self._stop.set()

    def check_health(self) -> None:
        if self.core.snapshot is None:
            raise RuntimeError("no gallery loaded")

    async def info(self) -> dict[str, Any]:
        return self.core.info()

    async def search(self, model: str, embeddings: np.ndarray, k: int) -> dict[str, Any]:
        return await asyncio.to_thread(self.core.search, model, embeddings, k)

    async def crop_bytes(self, image_id: str) -> bytes | None:
        return self.core.crop_bytes(image_id)

    async def reload(self, force: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self.core.reload, force)

    async def add(self, embeddings: dict[str, np.ndarray], identities: list[int], crops_png: list[bytes],
                  boxes: list[list[int]] | None = None) -> dict[str, Any]:
        """{"ok": True, "version", "row_ids", "image_ids", "rows"} or, when the gallery cannot
        take these embeddings, {"ok": False, "message"} (a conflict for the caller, not a crash:
        an exception would reach the Ingress as an opaque RayTaskError)."""
        try:
            out = await asyncio.to_thread(self.core.add, embeddings, identities, crops_png, boxes)
        except (ConfigError, ArtifactMismatchError) as exc:
            return {"ok": False, "message": str(exc)}
        return {"ok": True, **out}
