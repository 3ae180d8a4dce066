"""Everything a local run needs before the app starts: crops, default models, the gallery.

``prepare_gallery`` is what ``pipelines/serve.py`` and ``benchmarks/bench_serve.py`` call. With no
data it uses the embedded synthetic set (``facerec.data.synth.ensure_synthetic``); with no
checkpoint it serves the pretrained face model ``dlib_resnet`` (:mod:`facerec.models.pretrained`).
The photos are preprocessed into the served models' input kind once, in the cache training shares
(:mod:`facerec.data.crops_cache`); models and galleries are cached under ``workdir`` by content
(the crops folder, the models' ids, the index kind) and reused.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from facerec.dlibport import facts as dlib_facts
from facerec.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

DEFAULT_MODELS = (dlib_facts.NAME,)
UNTRAINED_BACKBONES = ("resnet50", "mobilenet_v2")


def default_workdir() -> Path:
    """Where ``facerec serve`` keeps the galleries and demo models it builds when no ``--workdir``
    is given: ``serve/`` under the cache root (``$FACEREC_CACHE``, default ``~/.cache/facerec``),
    read at each call so a variable set after import counts."""
    from facerec.io import cache_root

    return cache_root() / "serve"


def ensure_crops(workdir: Path | None, crops: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                 preprocess_engine: str = "ray", input_kind: str = "haar_crop", detector: dict | None = None,
                 layout: str | None = None) -> Path:
    """A preprocess output: ``crops`` as given, else ``data`` (default: the synthetic set)
    preprocessed into ``input_kind`` inputs by :func:`facerec.data.crops_cache.preprocessed` (the
    shared cache: photos a training run already preprocessed are not cropped again; ``workdir`` no
    longer decides where). ``detector``: PreprocessConfig's detector fields (default: the default
    detector). ``layout``: how ``data`` is read (:mod:`facerec.data.layouts`; None: detected)."""
    from facerec.data.crops_cache import preprocessed
    from facerec.data.preprocess import PreprocessConfig

    if crops:
        return Path(crops)
    if data:
        source = Path(data)
    else:
        from facerec.data.synth import ensure_synthetic

        source = Path(ensure_synthetic())
    return preprocessed(source, PreprocessConfig(engine=preprocess_engine, input_kind=input_kind, layout=layout,
                                                 **(detector or {})))


def served_input_kind(checkpoints: "dict[str, str | ModelRef]") -> str:
    """The one input kind of the served models: a gallery stores one kind of input, and every
    model searches it with queries made the same way. Each model's kind is its reference's
    (:func:`facerec.models.reference.model_input_kind`)."""
    from facerec.models.reference import model_input_kind

    kinds = {name: model_input_kind(path) for name, path in checkpoints.items()}
    if len(set(kinds.values())) > 1:
        raise ConfigError("--checkpoint", kinds, "models of one input kind in one gallery (serve the others from "
                          "another gallery: `facerec serve --gallery OTHER ...`)")
    return next(iter(kinds.values()))


def untrained_checkpoints(workdir: Path, crops: Path, image_size: int = 128,
                          backbones: tuple[str, ...] = UNTRAINED_BACKBONES) -> dict[str, str]:
    """Untrained models with recalibrated batch norms, one per backbone, cached: demos of the
    pipeline only (they do not recognise faces; serving them needs allow_untrained)."""
    from facerec.serve.defaults import make_default_checkpoint

    out = {}
    for backbone in backbones:
        folder = Path(workdir) / "checkpoints" / f"{backbone}-{crops.name}-s{image_size}"
        if not (folder / "model.json").is_file():
            t0 = time.perf_counter()
            meta = make_default_checkpoint(backbone, folder, crops, image_size=image_size)
            print(f"default model {backbone}: untrained, batch norms recalibrated on the crops, "
                  f"model_id {meta['model_id']} ({time.perf_counter() - t0:.1f}s)")
        out[backbone] = str(folder)
    return out


def prepare_gallery(
    workdir: str | os.PathLike | None = None,
    gallery: str | os.PathLike | None = None,
    crops: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    checkpoints: "dict[str, str | ModelRef] | None" = None,
    index_kind: str = "kdtree",
    image_size: int = 128,
    rebuild: bool = False,
    preprocess_engine: str = "ray",
    untrained: bool = False,
    detector: dict | None = None,
    layout: str | None = None,
    cluster_thresholds=None,
) -> "tuple[Path, dict[str, ModelRef]]":
    """The gallery folder to serve and its models {name: :class:`facerec.models.reference.ModelRef`},
    each resolved once here (a reference given is not read again; ``str(ref)`` is its folder).

    An existing ``gallery`` is served as is (with the checkpoints it records, or the given ones
    if they are the ones it was built with); otherwise one is built from ``crops`` / ``data`` /
    the synthetic set with ``checkpoints`` (default: the pretrained ``dlib_resnet``;
    ``untrained=True``: untrained resnet50 + mobilenet_v2 at ``image_size``, a pipeline demo);
    ``detector``: PreprocessConfig's detector fields the photos are preprocessed with; ``layout``:
    how ``data`` is read (:mod:`facerec.data.layouts`; None: detected; a folder per person's names
    become the gallery's display names; an unlabelled folder's faces are clustered into people,
    :func:`facerec.cluster.gallery.gallery_people`, whose ids are the gallery's identities, kept in
    ``workdir/people-<key>.parquet`` beside the gallery so a rebuild gives the same faces the same ids;
    ``cluster_thresholds``: a :class:`facerec.cluster.thresholds.Thresholds` instead of the one
    from the model's calibration).
    ``workdir``: where built galleries and demo models go (default :func:`default_workdir`).
    """
    from facerec.gallery import GalleryBuildConfig, build_gallery, read_manifest
    from facerec.models.reference import resolve_model

    workdir = Path(workdir) if workdir is not None else default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = {n: resolve_model(p) for n, p in (checkpoints or {}).items()}
    target = Path(gallery) if gallery else None
    if target is not None and (target / "gallery.json").is_file() and not rebuild:
        manifest = read_manifest(target)  # a format-1 gallery: an error saying how to upgrade it
        if not checkpoints:
            checkpoints = {n: resolve_model(e["checkpoint"]) for n, e in manifest["models"].items()}
        stale = sorted(n for n, p in checkpoints.items()
                       if n not in manifest["models"] or manifest["models"][n]["model_id"] != p.model_id)
        if not stale:
            honour_erasures(target)
            return target, checkpoints
        if not (crops or data):
            raise ConfigError("checkpoints", stale, f"models indexed in {target}, or rebuild it with crops/data")
    if not checkpoints and not untrained:
        checkpoints = {n: resolve_model(n) for n in DEFAULT_MODELS}
    kind = served_input_kind(checkpoints) if checkpoints else "haar_crop"
    crops_dir = ensure_crops(workdir, crops, data, preprocess_engine, input_kind=kind, detector=detector, layout=layout)
    if not checkpoints:
        checkpoints = {n: resolve_model(p) for n, p in untrained_checkpoints(workdir, crops_dir, image_size).items()}
    if target is None:
        ids = "-".join(f"{n}:{p.model_id}" for n, p in sorted(checkpoints.items()))
        from facerec.gallery import GALLERY_FORMAT

        key = hashlib.sha256(f"{crops_dir.resolve()}|{ids}|{index_kind}|{GALLERY_FORMAT}".encode()).hexdigest()[:10]
        target = workdir / f"gallery-{key}"
    else:
        key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:10]
    if rebuild or not (target / "gallery.json").is_file():
        identify = None
        if unlabelled_crops(crops_dir):
            from functools import partial

            from facerec.cluster.gallery import gallery_people

            identify = partial(gallery_people, checkpoints=dict(checkpoints), people_path=workdir / f"people-{key}.parquet",
                               thresholds=cluster_thresholds)
        build_gallery(GalleryBuildConfig(crops_dir=str(crops_dir), out_dir=str(target), checkpoints=dict(checkpoints),
                                         kinds=[index_kind], engine="local", overwrite=True), identify=identify)
    else:
        honour_erasures(target)
    return target, checkpoints


def unlabelled_crops(crops_dir: Path) -> bool:
    """Whether ``crops_dir`` was made from an unlabelled photo folder (its faces name nobody)."""
    from facerec.data.schema import CROPS_TABLE
    from facerec.io import read_parquet_metadata

    table = Path(crops_dir) / CROPS_TABLE
    return table.is_file() and read_parquet_metadata(table).get("labelled") is False


def honour_erasures(gallery: Path) -> dict | None:
    """Delete the rows of ``gallery`` that the erasure list (:mod:`facerec.data.erasure`) covers:
    a gallery built before a delete on another gallery of the same photos, or left behind by a
    server stopped between recording an erasure and committing it, is served without them."""
    from facerec.data.erasure import ErasureList
    from facerec.gallery import apply_erasures, photo_folder

    photos = photo_folder(gallery)
    erasures = ErasureList.default()
    erased = erasures.of(photos) if photos else None
    if not erased:
        return None
    if not os.access(gallery, os.W_OK):
        print(f"warning: {gallery} is read-only: rows erased from {photos} ({erasures.path}) may still be in it", flush=True)
        return None
    out = apply_erasures(gallery, erased)
    if out is not None:
        print(f"gallery: {out['deleted']} rows erased from {photos} earlier ({erasures.path}) deleted from {gallery}",
              flush=True)
    return out
