"""Everything a local run needs before the app starts: crops, default models, the gallery.

``prepare_gallery`` is what ``pipelines/serve.py`` and ``benchmarks/bench_serve.py`` call. With no
data it uses the embedded synthetic set (``facerec.data.synth.ensure_synthetic``); with no
checkpoint it makes untrained ResNet-50 and MobileNet-V2 models (see
:mod:`facerec.serve.defaults`). Results are cached under ``workdir`` by content (the source
folder, the models' ids, the index kind) and reused.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from facerec.errors import ConfigError

DEFAULT_BACKBONES = ("resnet50", "mobilenet_v2")
DEFAULT_WORKDIR = Path.home() / ".cache" / "facerec" / "serve"


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """``["NAME=DIR", "DIR", ...]`` -> {name: dir}; a bare DIR is named after its backbone."""
    from facerec.models import read_checkpoint_metadata

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, read_checkpoint_metadata(item)["backbone"]
        if not name or not path:
            raise ConfigError("--checkpoint", item, "NAME=CHECKPOINT_DIR (or just CHECKPOINT_DIR)")
        if name in out:
            raise ConfigError("--checkpoint", item, f"each model name once ({name!r} appears twice)")
        out[name] = path
    return out


def ensure_crops(workdir: Path, crops: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                 preprocess_engine: str = "ray") -> Path:
    """A preprocess output: ``crops`` as given, else ``data`` (default: the synthetic set) cropped once."""
    from facerec.data.preprocess import PreprocessConfig, preprocess

    if crops:
        return Path(crops)
    if data:
        source = Path(data)
    else:
        from facerec.data.synth import ensure_synthetic

        source = Path(ensure_synthetic())
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    out = Path(workdir) / f"crops-{source.name}-{key}"
    if not (out / "crops.parquet").is_file():
        summary = preprocess(source, out, PreprocessConfig(engine=preprocess_engine))
        print(f"preprocess: {summary.get('kept')} of {summary.get('listed')} images kept -> {out}")
    return out


def default_checkpoints(workdir: Path, crops: Path, image_size: int = 128,
                        backbones: tuple[str, ...] = DEFAULT_BACKBONES) -> dict[str, str]:
    """Untrained models with recalibrated batch norms, one per backbone, cached."""
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
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    gallery: str | os.PathLike | None = None,
    crops: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    checkpoints: dict[str, str] | None = None,
    index_kind: str = "kdtree",
    image_size: int = 128,
    rebuild: bool = False,
    preprocess_engine: str = "ray",
) -> tuple[Path, dict[str, str]]:
    """The gallery folder to serve and its checkpoints {name: folder}.

    An existing ``gallery`` is served as is (with the checkpoints it records, or the given ones
    if they are the ones it was built with); otherwise one is built from ``crops`` / ``data`` /
    the synthetic set with ``checkpoints`` (default: untrained resnet50 + mobilenet_v2).
    """
    from facerec.models import read_checkpoint_metadata
    from facerec.serve.gallery import build_gallery, read_manifest

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = dict(checkpoints or {})
    target = Path(gallery) if gallery else None
    if target is not None and (target / "gallery.json").is_file() and not rebuild:
        manifest = read_manifest(target)
        if not checkpoints:
            checkpoints = {n: e["checkpoint"] for n, e in manifest["models"].items()}
        stale = sorted(n for n, p in checkpoints.items()
                       if n not in manifest["models"] or manifest["models"][n]["model_id"] != read_checkpoint_metadata(p)["model_id"])
        if not stale:
            return target, checkpoints
        if not (crops or data):
            raise ConfigError("checkpoints", stale, f"models indexed in {target}, or rebuild it with crops/data")
    crops_dir = ensure_crops(workdir, crops, data, preprocess_engine)
    if not checkpoints:
        checkpoints = default_checkpoints(workdir, crops_dir, image_size)
    if target is None:
        ids = "-".join(f"{n}:{read_checkpoint_metadata(p)['model_id']}" for n, p in sorted(checkpoints.items()))
        key = hashlib.sha256(f"{crops_dir.resolve()}|{ids}|{index_kind}".encode()).hexdigest()[:10]
        target = workdir / f"gallery-{key}"
    if rebuild or not (target / "gallery.json").is_file():
        build_gallery(crops_dir, target, checkpoints, index_kind=index_kind, overwrite=True)
    return target, checkpoints
