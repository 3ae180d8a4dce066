"""Checkpoint folder: ``model.pt`` (the Embedder's state dict, nothing pickled but tensors) and
``model.json`` (how to rebuild it, plus what it was trained on).

``model_id`` is the first 12 hex digits of the SHA-256 of ``model.pt``; indexes and embedding
tables record it so a reader can refuse artifacts built by another model.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.io import atomic_write_bytes, atomic_write_json, sha256_file
from facerec.models.embedder import Embedder, build_embedder
# Re-exported: the torch-free reader lives in metadata.py so serving without torch can use it.
from facerec.models.metadata import META_FILE, MODEL_FILE, read_checkpoint_metadata  # noqa: F401
from facerec.models.reference import ModelRef, resolve_model

REQUIRED_METADATA = ("image_size", "data_version", "loss", "epoch")
"""Keys the caller must supply; backbone, embedding_dim, freeze, init come from the model."""


def _unwrap(model: nn.Module) -> Embedder:
    # DistributedDataParallel (Ray Train's prepare_model) keeps the model in ``.module``,
    # torch.compile in ``._orig_mod``; a checkpoint must hold the bare Embedder's keys.
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(model, attr, None), nn.Module) and not isinstance(model, Embedder):
            model = getattr(model, attr)
    if not isinstance(model, Embedder):
        raise ConfigError("model", type(model).__name__, "an Embedder from facerec.models.build_embedder")
    return model


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write ``directory/model.pt`` and ``directory/model.json`` atomically; return the metadata
    written (the model's own metadata, then the caller's, then ``model_id``).

    ``metadata`` must contain image_size, data_version, loss and epoch; it may not contradict
    the model's backbone/embedding_dim/freeze.
    """
    embedder = _unwrap(model)
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ConfigError("metadata", sorted(metadata), f"a dict that also has the keys {missing}")
    for key in ("backbone", "embedding_dim", "freeze"):
        if key in metadata and metadata[key] != embedder.metadata[key]:
            raise ConfigError(f"metadata.{key}", metadata[key], f"{embedder.metadata[key]!r}, as the model was built")
    state = {k: v.detach().cpu().clone() for k, v in embedder.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    meta = {**embedder.metadata, **metadata, "model_id": hashlib.sha256(data).hexdigest()[:12]}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # model.pt first: a model.json never points at weights that were not fully written.
    atomic_write_bytes(directory / MODEL_FILE, data)
    atomic_write_json(directory / META_FILE, meta)
    return meta


def load_embedder(directory: "str | os.PathLike | ModelRef", map_location: str | torch.device = "cpu") -> tuple[Embedder, dict[str, Any]]:
    """Rebuild the Embedder described by ``model.json``, load ``model.pt`` and verify it.

    ``directory``: a :class:`facerec.models.reference.ModelRef` (its metadata is not read again),
    or a checkpoint folder or pretrained model's name, resolved here. Returns ``(model.eval(),
    metadata)``. Raises DataNotFoundError if the folder or a file is missing, ArtifactMismatchError
    if ``model.pt`` does not hash to ``model_id``, cannot be read, or does not fit the architecture.
    """
    ref = resolve_model(directory)
    directory, meta = ref.folder, ref.metadata
    weights_path = directory / MODEL_FILE
    if not weights_path.is_file():
        raise DataNotFoundError(
            f"{weights_path} not found; the checkpoint folder {directory} is incomplete, re-export it with save_checkpoint"
        )
    digest = sha256_file(weights_path)[:12]
    if digest != meta["model_id"]:
        raise ArtifactMismatchError(
            f"{weights_path} has content hash {digest} but {directory / META_FILE} says model_id "
            f"{meta['model_id']}: the file was modified or belongs to another checkpoint"
        )
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors alike mean a damaged file
        raise ArtifactMismatchError(f"{weights_path} could not be loaded ({exc.__class__.__name__}: {exc})") from exc
    try:
        model = build_embedder(meta["backbone"], int(meta["embedding_dim"]), meta["freeze"], pretrained=False)
    except ConfigError as exc:
        raise ArtifactMismatchError(f"{directory / META_FILE} describes a model this version cannot build: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ArtifactMismatchError(
            f"{weights_path} does not fit a {meta['backbone']} embedder of dimension {meta['embedding_dim']}: {exc}"
        ) from exc
    model.metadata["init"] = meta.get("init", model.metadata["init"])
    model.to(map_location)
    return model.eval(), dict(meta)


def save_initial_checkpoint(backbone: str, out_dir: str | os.PathLike, image_size: int, embedding_dim: int = 128,
                            seed: int = 0, data_version: str | None = None) -> dict:
    """The initial weights of ``backbone`` (ImageNet from the hub cache, else seeded random)
    saved as a checkpoint folder, so every actor loads the very same weights and the
    embeddings get a model_id. Returns the checkpoint metadata (``init`` says which)."""
    torch.manual_seed(seed)
    model = build_embedder(backbone, embedding_dim, freeze="none")
    return save_checkpoint(out_dir, model.eval(), {
        "image_size": int(image_size), "data_version": data_version, "loss": "none", "epoch": 0,
        "note": "initial weights (before fine-tuning)",
    })
