"""Ready-made checkpoints that need no training (registry :data:`PRETRAINED`).

Wherever a checkpoint folder is accepted (``--checkpoint``, ``build-index``, ``evaluate``,
``serve``), a registered name is accepted too: :func:`facerec.models.reference.resolve_model`
turns ``dlib_resnet`` into the reference of a checkpoint folder (:func:`pretrained_checkpoint`),
written once into the cache from the model file that a package ships (nothing is downloaded) and
reused; its ``model_id`` is the hash of its weights like any other. The facts of ``dlib_resnet``
(its file, input, card) come from :mod:`facerec.dlibport.facts`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from facerec.dlibport import facts as dlib_facts
from facerec.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    backbone: str
    source_sha256: Callable[[], str]  # hash of the file the weights come from (names the cache folder)
    card: dict[str, Any]              # weights, training data, licence: shown by /v1/models and the page
    # The input it takes (as its backbone's spec says), known without importing torch: entry points
    # check a crops folder against it before anything heavy runs.
    input_kind: str = "haar_crop"
    image_size: int = 218


PRETRAINED: Registry[PretrainedModel] = Registry("pretrained model")


def _dlib_sha() -> str:
    from facerec.dlibport.files import RESNET, locate

    locate(RESNET)  # a clear error when the package is missing or the file is damaged
    return RESNET.sha256


PRETRAINED.register(dlib_facts.NAME)(PretrainedModel(
    name=dlib_facts.NAME,
    backbone=dlib_facts.NAME,
    input_kind=dlib_facts.INPUT_KIND,
    image_size=dlib_facts.CHIP_SIZE,
    source_sha256=_dlib_sha,
    card=dlib_facts.CARD,
))


def cached_folder(name: str) -> Path:
    """The cache folder of the registered pretrained model ``name`` (named by its source file's hash)."""
    from facerec.io import cache_root

    return cache_root() / "models" / f"{name}-{PRETRAINED.get(name).source_sha256()[:12]}"


def pretrained_checkpoint(name: str) -> Path:
    """The checkpoint folder of the registered pretrained model ``name`` (built on first use).

    Reusing the cached folder reads only its model.json, without torch: a Serve replica that runs
    the model through ONNX Runtime resolves ``dlib_resnet`` this way."""
    from facerec.models.metadata import META_FILE, read_checkpoint_metadata

    entry = PRETRAINED.get(name)
    folder = cached_folder(name)
    if (folder / META_FILE).is_file():
        try:
            read_checkpoint_metadata(folder)
            return folder
        except Exception:  # a damaged cache entry is rebuilt, never fatal
            pass
    # Building it needs the model, hence torch: imported here, only when the cache misses.
    from facerec.models.backbones import BACKBONES
    from facerec.models.checkpoint import save_checkpoint
    from facerec.models.embedder import build_embedder

    spec = BACKBONES.get(entry.backbone)
    model = build_embedder(entry.backbone, spec.fixed_embedding_dim or 128, freeze="none")
    save_checkpoint(folder, model, {
        "image_size": spec.default_image_size, "data_version": f"pretrained:{name}", "loss": "none (pretrained)",
        "epoch": 0, "pretrained": name, "card": dict(entry.card),
    })
    return folder


def resolve_checkpoint(spec: str | os.PathLike) -> str:
    """A checkpoint folder for ``spec``: a registered pretrained name, or the folder itself (its
    model.json unread). The library resolves with :func:`facerec.models.reference.resolve_model`,
    which reads it once and passes the reference down; kept for callers that need the path only."""
    if isinstance(spec, str) and spec in PRETRAINED:
        return str(pretrained_checkpoint(spec))
    return str(spec)


def check_checkpoint(spec: str | os.PathLike, flag: str = "--checkpoint") -> "str | ModelRef":
    """``spec`` names a registered pretrained model or a checkpoint folder with model.json;
    DataNotFoundError / ArtifactMismatchError otherwise. Returns ``spec`` for a pretrained model
    (nothing is built or loaded: building it needs torch), else the folder's
    :class:`facerec.models.reference.ModelRef` (its model.json read, once)."""
    from facerec.errors import DataNotFoundError
    from facerec.models.reference import resolve_model

    if isinstance(spec, str) and spec in PRETRAINED:
        return spec
    if not Path(spec).is_dir():
        raise DataNotFoundError(f"{flag} {spec}: neither a checkpoint folder (RUN/<trial>/best) nor a pretrained "
                                f"model ({', '.join(PRETRAINED.names())})")
    return resolve_model(spec)


def parse_models(items: list[str], flag: str = "--checkpoint") -> "dict[str, str | ModelRef]":
    """``["NAME=DIR", "DIR", "dlib_resnet", ...]`` -> {name: model}, each checked to be a
    checkpoint folder or pretrained model name (:func:`check_checkpoint`); a bare DIR is named after
    its backbone, a bare pretrained model name (:data:`PRETRAINED`) after itself. The NAME=DIR
    convention of every command that takes several models (build-index, serve). A folder comes
    back as its :class:`facerec.models.reference.ModelRef` (model.json read once, here), a
    pretrained model as its name (resolved, hence built on first use, where it is used)."""
    from facerec.errors import ConfigError

    out: dict[str, str | ModelRef] = {}
    for item in items:
        name, sep, path = item.partition("=")
        ref = None
        if not sep and item in PRETRAINED:
            name, path = item, item
        elif not sep:
            from facerec.models.reference import resolve_model

            ref = resolve_model(item)  # read once: named after its backbone, and checked
            path, name = item, ref.backbone
        if not name or not path:
            raise ConfigError(flag, item, "NAME=CHECKPOINT_DIR (or just CHECKPOINT_DIR)")
        if name in out:
            raise ConfigError(flag, item, f"each model name once ({name!r} appears twice)")
        out[name] = ref if ref is not None else check_checkpoint(path, flag)
    return out


def parse_checkpoints(items: list[str], flag: str = "--checkpoint") -> dict[str, str]:
    """:func:`parse_models` as {name: the folder or pretrained name as given}."""
    return {name: model.name if not isinstance(model, str) else model for name, model in parse_models(items, flag).items()}


def is_untrained(meta: dict[str, Any]) -> bool:
    """True for a checkpoint whose weights never saw faces: a random or ImageNet backbone that was
    not fine-tuned (epoch 0) and is not a registered pretrained face model."""
    if meta.get("pretrained") in PRETRAINED:
        return False
    return int(meta.get("epoch") or 0) == 0


MEASURED_FILE = "measured.json"


def record_measurement(checkpoint_dir: str | os.PathLike, key: str, value: dict[str, Any]) -> None:
    """Store a figure measured on a checkpoint (e.g. ``lfw``) beside it, in ``measured.json``.

    Kept apart from ``model.json``: the model's identity (``model_id``) is its weights, and a
    later measurement must not rewrite the file that describes them."""
    import json

    from facerec.io import atomic_write_json

    path = Path(checkpoint_dir) / MEASURED_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data[key] = value
    atomic_write_json(path, data)


def record_lfw(checkpoint_dir: str | os.PathLike, lfw: dict[str, Any], lfw_root: str | os.PathLike) -> None:
    """Record an LFW result (``facerec.eval.lfw.lfw_verification``) beside the checkpoint, and beside
    the cached pretrained checkpoint with the same weights (same ``model_id``), so ``/v1/models``
    shows it whichever folder is served."""
    value = {"accuracy_pct": round(100 * float(lfw["mean"]), 2), "std_pct": round(100 * float(lfw["std"]), 2),
             "folds": int(lfw["folds"]), "pairs": int(lfw["pairs"]),
             "data": f"{Path(lfw_root).name}, {int(lfw['folds'])} folds of pairs.txt", "detector": lfw.get("detector")}
    record_for_same_weights(checkpoint_dir, "lfw", value)


def record_for_same_weights(checkpoint_dir: str | os.PathLike, key: str, value: dict[str, Any]) -> list[str]:
    """:func:`record_measurement` beside ``checkpoint_dir`` and beside each cached pretrained
    checkpoint with the same weights (same ``model_id``). Returns the folders written."""
    from facerec.models.metadata import read_checkpoint_metadata
    from facerec.models.reference import resolve_model

    record_measurement(checkpoint_dir, key, value)
    written = [str(checkpoint_dir)]
    model_id = resolve_model(checkpoint_dir).model_id  # a ModelRef: not read again
    for name in PRETRAINED.names():
        folder = cached_folder(name)
        try:
            if folder.resolve() != Path(checkpoint_dir).resolve() and read_checkpoint_metadata(folder)["model_id"] == model_id:
                record_measurement(folder, key, value)
                written.append(str(folder))
        except Exception:  # no cached copy (or a damaged one): nothing to annotate
            continue
    return written


def model_card(meta: dict[str, Any], checkpoint_dir: str | os.PathLike | None = None,
               calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a user should know before trusting a model's answers: its weights, what it was
    trained on, and its measured LFW accuracy: ``facerec evaluate --lfw``'s record, else that of
    ``calibration`` (:func:`facerec.models.calibration.read_calibration`) when it was measured on
    LFW; None when neither measured it."""
    import json

    card = dict(meta.get("card") or {})
    measured: dict[str, Any] = {}
    if checkpoint_dir is not None and (Path(checkpoint_dir) / MEASURED_FILE).is_file():
        try:
            measured = json.loads((Path(checkpoint_dir) / MEASURED_FILE).read_text())
        except (OSError, ValueError):
            measured = {}
    if "weights" not in card:
        card["weights"] = (f"{meta.get('backbone')} fine-tuned with {meta.get('loss')} for {meta.get('epoch')} epochs "
                           f"(from {meta.get('init')} weights)" if not is_untrained(meta)
                           else f"{meta.get('backbone')} with {meta.get('init')} weights, never trained on faces")
    if "training_data" not in card:
        train_cfg = meta.get("train_config") or {}
        card["training_data"] = (f"crops folder {train_cfg.get('data_dir', '?')} (data_version {meta.get('data_version')})"
                                 if not is_untrained(meta) else "none (not trained on faces)")
    lfw = measured.get("lfw") or {}
    card["lfw_accuracy_pct"] = lfw.get("accuracy_pct")
    card["lfw_measured_on"] = lfw.get("data")
    cal_data = (calibration or {}).get("data") or {}
    cal_acc = ((calibration or {}).get("accuracy") or {}).get("mean")
    if card["lfw_accuracy_pct"] is None and cal_data.get("source") == "lfw" and cal_acc is not None:
        # The calibration ran the LFW protocol on its pairs file (facerec.eval.calibrate): the same figure.
        card["lfw_accuracy_pct"] = round(100 * float(cal_acc), 2)
        folds = f", {cal_data['folds']} folds of pairs.txt" if cal_data.get("folds") else ""
        card["lfw_measured_on"] = f"{cal_data.get('name')}{folds} (calibration, {calibration.get('origin', 'local')})"
    card["untrained"] = is_untrained(meta)
    return card
