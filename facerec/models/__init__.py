"""Embedding models: torchvision backbones and dlib's face ResNet with a freezing policy, the
embedding head, checkpoints, and ready-made pretrained checkpoints."""

from facerec.models import dlib_resnet as _dlib_resnet  # noqa: F401  (registers the backbone)
from facerec.models.backbones import BACKBONES, FREEZE_POLICIES, BackboneSpec, hub_weight_paths
from facerec.models.checkpoint import load_embedder, read_checkpoint_metadata, save_checkpoint
from facerec.models.embedder import Embedder, build_embedder

__all__ = [
    "BACKBONES",
    "FREEZE_POLICIES",
    "BackboneSpec",
    "Embedder",
    "build_embedder",
    "hub_weight_paths",
    "load_embedder",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
