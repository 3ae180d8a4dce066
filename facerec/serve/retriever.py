"""The ``Retriever`` deployment: top-k search in the gallery (:mod:`facerec.gallery`), and its
writes (add, delete, display names, merge, move).

Each replica serves an immutable :class:`~facerec.gallery.GallerySnapshot`. A new gallery version
(a write by any replica, a compaction, or a rebuild) is applied without downtime: a background
thread stats ``gallery.json`` every ``reload_poll_s`` seconds and, when it changed, loads the new
version *incrementally* (segments the replica already holds are reused; an add costs its delta
segment, a delete its tombstones) and swaps one reference; searches in flight finish on the
snapshot they started with. A write swaps in its own result at once. After a write, a
compaction runs in a background thread when :class:`~facerec.gallery.CompactionPolicy` says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from facerec.errors import ArtifactMismatchError, ConfigError, ConflictError, DataNotFoundError, NotFoundError
from facerec.gallery import (
    CompactionPolicy,
    GallerySnapshot,
    add_to_gallery,
    compact,
    delete_from_gallery,
    manifest_fingerprint,
    merge_identities,
    move_image,
    recover,
    set_display_name,
    write_lock,
)
from facerec.data.erasure import ErasureList, scrub_crops_cache
from facerec.gallery.edit import apply_erasures, check_add_embeddings, photo_folder

logger = logging.getLogger("ray.serve")


class RetrieverCore:
    """The Retriever without Ray (tests and benchmarks use it in-process)."""

    def __init__(self, gallery_dir: str, models: dict[str, str], index_kind: str | None = None,
                 index_params: dict[str, Any] | None = None, compaction: CompactionPolicy | None = None,
                 recover_on_start: bool = True, open_set: dict[str, dict[str, Any]] | None = None,
                 erasure_list: str | None = None):
        self.gallery_dir = Path(gallery_dir)
        if not (self.gallery_dir / "gallery.json").is_file():
            from facerec.serve.shipped import node_description

            # Not shipped like the model files: replicas write to it and see each other's writes in it.
            raise DataNotFoundError(
                f"gallery {self.gallery_dir}: {self.gallery_dir / 'gallery.json'} not found on {node_description()}. "
                f"Every Retriever replica reads and writes the gallery at this path on its own node: put it on storage "
                f"that every node mounts at the same path (cluster/rayservice.yaml mounts a ReadWriteMany volume at "
                f"/mnt/facerec), or keep the replicas on the node that holds it")
        # The erasure list a delete records to, and whose crops cache it scrubs (facerec.data.erasure;
        # `facerec serve` passes $FACEREC_CACHE/erased.json). None: a delete reaches the gallery only.
        self.erasures = ErasureList(erasure_list) if erasure_list else None
        self.expected_model_ids = dict(models)
        self.index_kind = index_kind
        self.index_params = dict(index_params or {})
        self.compaction = compaction or CompactionPolicy()
        self._lock = threading.Lock()  # serialises loads and writes of this replica
        self._compacting = threading.Lock()
        if recover_on_start and os.access(self.gallery_dir, os.W_OK):
            # A replica killed between a delete's commit and the end of its scrub: finish it now.
            # (A gallery mounted read-only is served as it is; it cannot have been written either.)
            with write_lock(self.gallery_dir):
                recover(self.gallery_dir)
        self.snapshot = self._load(None)
        # model -> {"target_fpir", "impostors"}: what each model's "same person" is decided with
        self.thresholds = GalleryThresholds(open_set or {}, lambda: self.snapshot)

    def _load(self, previous: GallerySnapshot | None) -> GallerySnapshot:
        # A delete redacts rows in place right after its commit: a load that raced one is redone
        # so it holds the version whose tombstones cover them.
        for _ in range(5):
            snap = GallerySnapshot.load(self.gallery_dir, list(self.expected_model_ids), self.expected_model_ids,
                                        self.index_kind, self.index_params, previous=previous)
            if manifest_fingerprint(self.gallery_dir) == snap.fingerprint:
                return snap
            previous = snap  # its segments are reused: only what changed meanwhile is read again
        return snap

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Apply the current version if ``gallery.json`` changed (``force``: reload everything)."""
        with self._lock:
            old = self.snapshot
            if force or manifest_fingerprint(self.gallery_dir) != old.fingerprint:
                new = self._load(None if force else old)
                if new.version >= old.version or force:
                    self.snapshot = new
                    self.thresholds.stale()
                    if new.version != old.version:
                        logger.info("gallery %s: version %d -> %d (%d rows)", self.gallery_dir, old.version, new.version, new.rows)
            # not info(): counting identities is O(rows), and this runs on every poll that finds a change
            return {"version": self.snapshot.version, "rows": self.snapshot.rows}

    def info(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "version": s.version,
            "rows": s.rows,
            "identities": int(len(s.identity_counts()[0])),
            "labelled": s.manifest.get("labelled", True) is not False,
            "models": {n: {"model_id": m.model_id, "embedding_dim": m.embedding_dim, "index_kind": m.index_kind,
                           "open_set": self.thresholds.get(n)}
                       for n, m in s.models.items()},
        }

    def search(self, model: str, embeddings: np.ndarray, k: int) -> dict[str, Any]:
        s = self.snapshot  # one snapshot for the whole request
        return {"version": s.version, "results": s.search(model, embeddings, k), "open_set": self.thresholds.get(model)}

    def crop_bytes(self, image_id: str) -> bytes | None:
        path = self.snapshot.crop_file(image_id)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # deleted by another replica since this snapshot
            return None

    def identities(self, limit: int, after: int | None = None) -> dict[str, Any]:
        return self.snapshot.identities_page(limit, after)

    def _after_write(self) -> None:
        self.snapshot = self._load(self.snapshot)
        self.thresholds.stale()
        if self.compaction.due(self.snapshot.manifest) and self._compacting.acquire(blocking=False):
            threading.Thread(target=self._compact, name="gallery-compact", daemon=True).start()

    def _compact(self) -> None:
        try:
            compact(self.gallery_dir, self.compaction)
            self.reload()
        except Exception:  # the gallery stays valid (uncompacted); the next write retries
            logger.exception("gallery compaction failed")
        finally:
            self._compacting.release()

    def add(self, embeddings: dict[str, np.ndarray], identities: list[int], crops_png: list[bytes],
            boxes: list[list[int]] | None = None, display_name: str | None = None) -> dict[str, Any]:
        """Add the images that are not already in the gallery: a stored crop whose bytes equal
        those of a live row of the same identity (or of an earlier image of this request) is a
        duplicate and not added again. Returns {"version", "image_ids", "row_ids" (one per
        image: the new row or the one it duplicates), "duplicate_of" (None or that image_id),
        "rows", "other_identities" (the new images that are a live row of another identity:
        {"image": index, "image_id", "identity"}; added all the same)}."""
        from facerec.gallery.format import IDENTITY_MAX

        for i in identities:  # before any write, like add_to_gallery (duplicates are looked up first)
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) <= IDENTITY_MAX:
                raise ConfigError("identity", i, f"an integer in [0, {IDENTITY_MAX}]")
        with self._lock:
            self.snapshot = self._load(self.snapshot)  # another replica's adds count as "already there"
            snap = self.snapshot
            # a request this gallery cannot take is refused before duplicates are looked for
            check_add_embeddings(snap.manifest, embeddings, len(crops_png), self.expected_model_ids)
            duplicate_of: list[str | None] = []
            seen: dict[tuple[int, str], str | None] = {}
            for identity, crop in zip(identities, crops_png):
                digest = hashlib.sha256(crop).hexdigest()
                if (int(identity), digest) not in seen:
                    for image_id in snap.image_ids_of(int(identity)):
                        path = snap.crop_file(image_id)
                        if path is not None and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                            seen[(int(identity), digest)] = image_id
                            break
                    else:
                        seen[(int(identity), digest)] = None
                        duplicate_of.append(None)
                        continue
                duplicate_of.append(seen[(int(identity), digest)] or "")
            new = [j for j, d in enumerate(duplicate_of) if d is None]
            other = _same_photo_elsewhere(snap, embeddings, identities, crops_png, new)
            out: dict[str, Any] = {"version": snap.version}
            if new:
                out = add_to_gallery(self.gallery_dir, {m: np.asarray(e)[new] for m, e in embeddings.items()},
                                     [identities[j] for j in new], [crops_png[j] for j in new],
                                     [boxes[j] for j in new] if boxes else None, self.expected_model_ids,
                                     display_name=display_name)
                self._after_write()
            added = dict(zip(new, out.get("image_ids", [])))
            # a repeat of an image added by this very request: the row that image got
            first = {}
            for j in new:
                first.setdefault((int(identities[j]), hashlib.sha256(crops_png[j]).hexdigest()), added[j])
            image_ids, dups = [], []
            for j, d in enumerate(duplicate_of):
                if d is None:
                    image_ids.append(added[j]), dups.append(None)
                else:
                    target = d or first[(int(identities[j]), hashlib.sha256(crops_png[j]).hexdigest())]
                    image_ids.append(target), dups.append(target)
            row_ids = [self.snapshot.row_id_of(i) for i in image_ids]
            return {"version": self.snapshot.version, "image_ids": image_ids, "row_ids": row_ids,
                    "duplicate_of": dups, "rows": self.snapshot.rows, "other_identities": other}

    def delete(self, image_ids: list[str] | None = None, identity: int | None = None) -> dict[str, Any]:
        """Delete from the gallery, and erase what the server derived from the same photos: the
        erasure is recorded before the gallery commit (so a crash leaves it to the next start),
        then the crops cache and other galleries of the same photo folder are scrubbed. Adds
        "photo_folder" (the user's folder, left as it is) and "message" to the gallery's answer."""
        with self._lock:
            photos = photo_folder(self.gallery_dir, self.snapshot.manifest)
            erasures = self.erasures if photos else None

            labelled = self.snapshot.manifest.get("labelled", True) is not False

            def record(found: dict[str, Any]) -> None:
                # The photos' names always: a gallery identity is the folder's only while nothing
                # merged or moved faces (a relabel, folded into the rows by compaction) and the folder
                # is labelled (an unlabelled folder's people are clusters, unknown to preprocessing).
                # The identity as well on a labelled folder, so its photos added later stay out too.
                names = [n for n in found["source_ids"] if n]
                ids = [int(identity)] if identity is not None and labelled else []
                if erasures is None or not (ids or names):
                    return
                try:
                    erasures.record(photos, ids, names)
                except OSError as exc:
                    raise OSError(f"cannot record the erasure in {erasures.path} ({exc}); nothing was deleted") from exc

            out = delete_from_gallery(self.gallery_dir, image_ids=image_ids, identity=identity, before_commit=record)
            self._after_write()
            out["rows"] = self.snapshot.rows
            derived = self._erase_derived(photos) if erasures is not None else {"scrubbed": [], "busy": []}
            out.update(photo_folder=photos, message=delete_message(out, photos, identity, derived, erasures))
            return out

    def _erase_derived(self, photos: str) -> dict[str, list[str]]:
        """Scrub the crops cache of ``photos`` and the other galleries beside this one built
        from them (``facerec serve`` keeps one per model set and index kind in its workdir)."""
        out = scrub_crops_cache(self.erasures, photos)
        erased = self.erasures.of(photos)
        for other in sorted(self.gallery_dir.parent.iterdir()):
            if other == self.gallery_dir or not (other / "gallery.json").is_file():
                continue
            try:
                if photo_folder(other) == photos and apply_erasures(other, erased) is not None:
                    out["scrubbed"].append(str(other))
            except (DataNotFoundError, ArtifactMismatchError, OSError) as exc:  # not a gallery this server can write
                logger.warning("erasure not applied to %s: %s", other, exc)
        return out

    def set_name(self, identity: int, name: str | None) -> dict[str, Any]:
        with self._lock:
            out = set_display_name(self.gallery_dir, identity, name)
            self._after_write()
            return out

    def merge(self, into: int, other: int) -> dict[str, Any]:
        """Every image of identity ``other`` becomes one of ``into`` (:func:`merge_identities`)."""
        with self._lock:
            out = merge_identities(self.gallery_dir, into, other)
            self._after_write()
            return out

    def move(self, image_id: str, identity: int) -> dict[str, Any]:
        """One image becomes one of ``identity`` (:func:`move_image`)."""
        with self._lock:
            out = move_image(self.gallery_dir, image_id, identity)
            self._after_write()
            return out


class GalleryThresholds:
    """Each served model's open-set "same person" threshold for the gallery version being served
    (:func:`facerec.gallery.openset.snapshot_threshold`). The first is measured when the replica
    starts; after a write, a reload or a compaction it is measured again in one background thread
    while searches go on with the previous one, whose ``gallery_version`` says which version it
    was measured on."""

    def __init__(self, policies: dict[str, dict[str, Any]], current_snapshot):
        self.policies = dict(policies)
        self._snapshot = current_snapshot
        self._decisions: dict[str, dict[str, Any]] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._measure(self._snapshot())

    def get(self, model: str) -> dict[str, Any] | None:
        return self._decisions.get(model)

    def _measure(self, snap: GallerySnapshot) -> None:
        from facerec.gallery.openset import snapshot_threshold

        for model, policy in self.policies.items():
            if model not in snap.models:
                continue
            try:
                out = snapshot_threshold(snap, model, float(policy["target_fpir"]), policy.get("impostors"))
            except Exception:  # a threshold that cannot be measured must not take the replica down
                logger.exception("open-set threshold of %s on gallery version %d failed", model, snap.version)
                continue
            self._decisions = {**self._decisions, model: out}  # swapped whole: readers never see a half dict

    def stale(self) -> None:
        """The served version changed: measure again in the background (one worker; changes
        that arrive meanwhile are folded into its next round)."""
        if not self.policies:
            return
        with self._lock:
            self._wake.set()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="open-set-threshold", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            with self._lock:  # a stale() after this check starts a new worker
                if not self._wake.is_set():
                    self._worker = None
                    return
                self._wake.clear()
            snap = self._snapshot()
            if all((d or {}).get("gallery_version") == snap.version for d in map(self._decisions.get, self.policies)):
                continue
            self._measure(snap)

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until no measurement is pending (tests, benchmarks)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not (worker is not None and worker.is_alive())


def _same_photo_elsewhere(snap: GallerySnapshot, embeddings: dict[str, np.ndarray], identities: list[int],
                          crops_png: list[bytes], new: list[int], neighbours: int = 5) -> list[dict[str, Any]]:
    """The images ``new`` (indexes) whose stored crop bytes are already a live row of another
    identity: the same pixels embed to the same point, so only the nearest rows of the first model
    are compared (not every crop of the gallery)."""
    if not new or snap.rows == 0:
        return []
    model = sorted(embeddings)[0]
    hits = snap.search(model, np.asarray(embeddings[model])[new], min(neighbours, snap.rows))
    found = []
    for j, row in zip(new, hits):
        digest = hashlib.sha256(crops_png[j]).hexdigest()
        for h in row:
            if h["identity"] == int(identities[j]):
                continue
            path = snap.crop_file(h["image_id"])
            if path is not None and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                found.append({"image": j, "image_id": h["image_id"], "identity": h["identity"]})
                break
    return found


def _answer(fn, *args, **kwargs) -> dict[str, Any]:
    """{"ok": True, ...} or {"ok": False, "status", "message"}: a refusal reaches the Ingress as
    data, not as an opaque RayTaskError."""
    try:
        return {"ok": True, **fn(*args, **kwargs)}
    except NotFoundError as exc:
        return {"ok": False, "status": 404, "message": str(exc)}
    except ConflictError as exc:
        return {"ok": False, "status": 409, "message": str(exc)}
    except (ConfigError, ArtifactMismatchError) as exc:
        return {"ok": False, "status": 409 if isinstance(exc, ArtifactMismatchError) or exc.field == "embeddings" else 422,
                "message": str(exc)}
    except OSError as exc:  # e.g. the erasure list cannot be written: the write was refused, try again later
        return {"ok": False, "status": 503, "message": str(exc)}


def delete_message(out: dict[str, Any], photos: str | None, identity: int | None, derived: dict[str, list[str]],
                   erasures: "ErasureList | None") -> str:
    """What a DELETE tells the user: what went, and that their photo folder still holds the photos."""
    what = f"identity {identity}" if identity is not None else "the image"
    text = f"Deleted {out['deleted']} gallery row(s) of {what}: crops, embeddings and index entries."
    names = sorted({n for n in out.get("source_ids", []) if n})
    if photos and erasures is not None and (identity is not None or names):
        text += (f" The copies the server derived from {photos} (its crops cache, other galleries of it) are erased too, "
                 f"and the erasure is recorded in {erasures.path}, so no rebuild or new preprocessing brings "
                 f"{'them' if identity is None else 'this person'} back.")
        if derived.get("busy"):
            text += f" Still being preprocessed, cleaned when that run ends: {', '.join(derived['busy'])}."
    uploads = sum(1 for n in out.get("source_ids", []) if not n)
    if photos and (identity is not None or names):
        held = (f"the photos of identity {identity} listed in it" if identity is not None
                else "the original photo" + ("s " if len(names) > 1 else " ") + ", ".join(names))
        text += (f" The photo folder {photos} is yours and was not changed: it still holds {held}; "
                 "delete them there if they must go.")
    elif names:
        text += f" The photos they were cropped from ({', '.join(names)}) are outside the server and were not changed."
    if uploads:
        text += " Uploaded photos are never stored, only their face crops, which are gone."
    return text


@serve.deployment(name="Retriever", health_check_period_s=10)
class Retriever:
    """``models``: served model name -> model_id of its checkpoint (checked against the index)."""

    def __init__(self, gallery_dir: str, models: dict[str, str], index_kind: str | None = None,
                 index_params: dict[str, Any] | None = None, reload_poll_s: float = 0.25,
                 open_set: dict[str, dict[str, Any]] | None = None, erasure_list: str | None = None):
        from facerec.serve.runtime import print_tracebacks_as_text

        print_tracebacks_as_text()
        self.core = RetrieverCore(gallery_dir, models, index_kind, index_params, open_set=open_set,
                                  erasure_list=erasure_list)
        self._stop = threading.Event()
        self._poll_s = float(reload_poll_s)
        self._watcher = threading.Thread(target=self._watch, name="gallery-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.core.reload()
            except (DataNotFoundError, ArtifactMismatchError, OSError):
                # mid-change on disk (a folder a delete just removed): the next poll gets the new version
                logger.info("gallery reload deferred; still serving version %d", self.core.snapshot.version)
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

    async def identities(self, limit: int, after: int | None = None) -> dict[str, Any]:
        return self.core.identities(limit, after)

    async def reload(self, force: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self.core.reload, force)

    async def add(self, embeddings: dict[str, np.ndarray], identities: list[int], crops_png: list[bytes],
                  boxes: list[list[int]] | None = None, display_name: str | None = None) -> dict[str, Any]:
        """{"ok": True, "version", "row_ids", "image_ids", "rows"} or {"ok": False, "status", "message"}."""
        return await asyncio.to_thread(_answer, self.core.add, embeddings, identities, crops_png, boxes, display_name)

    async def delete(self, image_ids: list[str] | None = None, identity: int | None = None) -> dict[str, Any]:
        """{"ok": True, "version", "deleted", ...} or {"ok": False, "status": 404, "message"}."""
        return await asyncio.to_thread(_answer, self.core.delete, image_ids, identity)

    async def set_name(self, identity: int, name: str | None) -> dict[str, Any]:
        return await asyncio.to_thread(_answer, self.core.set_name, identity, name)

    async def merge(self, into: int, other: int) -> dict[str, Any]:
        return await asyncio.to_thread(_answer, self.core.merge, into, other)

    async def move(self, image_id: str, identity: int) -> dict[str, Any]:
        return await asyncio.to_thread(_answer, self.core.move, image_id, identity)
