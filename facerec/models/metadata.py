"""The ``model.json`` half of a checkpoint folder, readable without torch.

A serving replica that runs the model through ONNX Runtime (:mod:`facerec.models.onnx_runtime`)
needs the checkpoint's metadata but never its ``model.pt``; importing torch only to read a JSON
file would cost it ~540 MB of resident memory. :mod:`facerec.models.checkpoint` re-exports
everything here, so ``from facerec.models.checkpoint import read_checkpoint_metadata`` keeps
working.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facerec.errors import DataNotFoundError
from facerec.io import read_json_object_bytes

MODEL_FILE = "model.pt"
META_FILE = "model.json"


def read_checkpoint_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint folder (no weights read)."""
    return read_checkpoint_metadata_bytes(directory)[0]


def read_checkpoint_metadata_bytes(directory: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """:func:`read_checkpoint_metadata` and the file's bytes, read once (what
    :func:`facerec.models.reference.resolve_model` keeps: the bytes travel to Serve replicas)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise DataNotFoundError(
            f"checkpoint folder {directory} not found; pass a folder written by save_checkpoint, "
            f"such as RUN/<trial_name>/best of a training run"
        )
    return read_json_object_bytes(
        meta_path, keys=("backbone", "embedding_dim", "freeze", "model_id"),
        fix="re-export the checkpoint with save_checkpoint",
        not_found=f"{meta_path} not found; {directory} is not a checkpoint folder (it needs {MODEL_FILE} and "
                  f"{META_FILE}, as written by save_checkpoint into RUN/<trial_name>/best)")
