"""Embedding models: torchvision backbones and dlib's face ResNet with a freezing policy, the
embedding head, checkpoints, and ready-made pretrained checkpoints.

The names below are resolved on first use (PEP 562 module ``__getattr__``): ``import torch``
alone holds ~540 MB of resident memory and torchvision ~170 MB more, and a Serve replica that runs
a model through ONNX Runtime, or a driver that only reads ``model.json``, needs neither.
``read_checkpoint_metadata`` comes from the torch-free :mod:`facerec.models.metadata`, and the model
reference (``ModelRef``, ``resolve_model``: a name or folder resolved once and passed down) from the
torch-free :mod:`facerec.models.reference`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BACKBONES",
    "FREEZE_POLICIES",
    "BackboneSpec",
    "Embedder",
    "ModelRef",
    "build_embedder",
    "hub_weight_paths",
    "load_embedder",
    "read_checkpoint_metadata",
    "resolve_model",
    "save_checkpoint",
]

# name -> submodule that defines it
_LAZY = {
    "BACKBONES": "backbones",
    "FREEZE_POLICIES": "backbones",
    "BackboneSpec": "backbones",
    "hub_weight_paths": "backbones",
    "Embedder": "embedder",
    "build_embedder": "embedder",
    "load_embedder": "checkpoint",
    "save_checkpoint": "checkpoint",
    "read_checkpoint_metadata": "metadata",
    "ModelRef": "reference",
    "resolve_model": "reference",
}
# Submodules that build models through the BACKBONES registry (they import torch).
_TORCH_SUBMODULES = {"backbones", "embedder", "checkpoint"}

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.backbones import BACKBONES, FREEZE_POLICIES, BackboneSpec, hub_weight_paths
    from facerec.models.checkpoint import load_embedder, save_checkpoint
    from facerec.models.embedder import Embedder, build_embedder
    from facerec.models.metadata import read_checkpoint_metadata
    from facerec.models.reference import ModelRef, resolve_model


def __getattr__(name: str) -> Any:
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if submodule in _TORCH_SUBMODULES:
        # dlib_resnet registers itself in BACKBONES on import: whoever sees the registry (or
        # builds/loads a model through it) must see the default model in it.
        importlib.import_module(f"{__name__}.dlib_resnet")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
