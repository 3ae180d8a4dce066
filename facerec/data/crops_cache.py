"""Photos -> a preprocessed folder, made once: the one "preprocess if needed" of every stage that
accepts a photo folder (training, evaluation's default data, serving's gallery).

The cache key is everything that decides the folder's content: the photos (:func:`source_fingerprint`:
the resolved folder, the listing files' bytes, and the image files' names, sizes and
modification times) and the crop settings (:meth:`PreprocessConfig.fingerprint`: input kind,
crop size, margin, several-faces rule, detector settings, pixel limit) plus
``min_images_per_identity``, which decides the kept table. The engine (Ray or local) and the
batch size are not in it: they change how fast the folder is made, not what it holds. So a
training run and a server given the same photos and the same input kind share one folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from facerec.data.preprocess import PreprocessConfig

CACHE_FOLDER = "crops"


def source_fingerprint(source: str | os.PathLike) -> str:
    """What identifies a photo folder's content, cheaply: its resolved path, the bytes of its
    listing files, and the names, sizes and modification times of its images."""
    from facerec.data.celeba import IMAGE_DIRS
    from facerec.data.preprocess import IMAGE_SUFFIXES

    root = Path(source).resolve()
    h = hashlib.sha256(str(root).encode())
    for listing in sorted(p for p in root.iterdir() if p.is_file() and p.suffix == ".txt"):
        h.update(f"\n{listing.name}\n".encode())
        h.update(listing.read_bytes())
    for name in IMAGE_DIRS:
        folder = root / name
        if folder.is_dir():
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)
                             if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
            h.update(f"\n{name}\n".encode())
            h.update(json.dumps(entries).encode())
    return h.hexdigest()[:16]


def crops_key(source: str | os.PathLike, config: PreprocessConfig) -> str:
    """The cache key of ``source`` preprocessed with ``config`` (see the module docstring). A
    folder read in another layout (``config.layout``, or the detected one) is another entry; a
    folder layout's key also covers the photos in its sub-folders."""
    from facerec.data.layouts import listing_fingerprint, resolve_layout

    key = {"source": source_fingerprint(source), "settings": config.fingerprint(),
           "min_images_per_identity": config.min_images_per_identity}
    layout = resolve_layout(source, config.layout)
    if layout != "celeba":  # CelebA's keys stay those made before layouts existed
        key["layout"] = listing_fingerprint(source, layout)
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_crops_dir(source: str | os.PathLike, config: PreprocessConfig) -> Path:
    """``$FACEREC_CACHE/crops/<folder name>-<key>``: where :func:`preprocessed` keeps the folder."""
    from facerec.io import cache_root

    return cache_root() / CACHE_FOLDER / f"{Path(source).resolve().name}-{crops_key(source, config)}"


def preprocessed(source: str | os.PathLike, config: PreprocessConfig | None = None,
                 out: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """A preprocessed folder (``crops.parquet`` + ``crops/``) of the photo folder ``source`` (read
    in ``config.layout``, :mod:`facerec.data.layouts`) made with ``config``: ``out`` when given, else :func:`cached_crops_dir`. Made by
    :func:`facerec.data.preprocess.preprocess` unless it is already complete; a lock makes
    concurrent callers (a training run and a server starting together) wait for one another
    instead of cropping twice.

    What the erasure list (:mod:`facerec.data.erasure`) holds for ``source`` is applied to the
    folder every time, under the lock: a folder made before an erasure, or while a delete could
    not take the lock, comes back without the erased photos."""
    from filelock import FileLock

    from facerec.data.erasure import ErasureList, scrub_crops_folder
    from facerec.data.preprocess import preprocess, who_was_kept
    from facerec.data.schema import CROPS_TABLE

    config = config or PreprocessConfig()
    target = Path(out) if out is not None else cached_crops_dir(source, config)
    erasures = ErasureList.default()
    if (target / CROPS_TABLE).is_file() and not erasures.of(source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not (target / CROPS_TABLE).is_file():
            print(f"preprocessing {source} -> {target} ({config.input_kind}, faces found by "
                  f"{config.detector_config().describe()})", flush=True)
            summary = preprocess(source, target, config, progress=progress)
            print(f"preprocess: kept {summary['kept']} of {summary['listed']} images, "
                  f"{who_was_kept(summary)}, {summary['seconds']} s", flush=True)
        # read again under the lock: a delete recorded meanwhile is applied before anyone reads the folder
        scrub_crops_folder(target, erasures.of(source))
    return target
