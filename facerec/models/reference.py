"""One model reference: a name or folder resolved once, at the edge, and passed down as an object.

A model is named by the user as a registered pretrained model (``dlib_resnet``), a checkpoint
folder (``RUN/<trial>/best``), or either behind a served name (``--checkpoint NAME=DIR``, whose
NAME is the caller's business). :func:`resolve_model` is the one place such a name becomes a
:class:`ModelRef`: the checkpoint folder (for a pretrained model, the cached folder, built on
first use), its ``model.json`` read once, and what follows from it -- ``model_id``, input kind and
size, calibration. The commands, ``facerec.run``'s planning and the Serve application builder
resolve; the library functions they call take the reference and ask it, instead of reading
``model.json`` again. Those functions still take a name or a folder, converted once at their
entry (:func:`resolve_model` passes a reference through unchanged).

Torch-free: resolving a cached pretrained model or a folder reads one JSON file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.models.metadata import read_checkpoint_metadata_bytes

if TYPE_CHECKING:  # pragma: no cover
    from facerec.data.inputs import InputKind

__all__ = ["ModelRef", "model_input_kind", "resolve_model", "shipped_model"]


@dataclass(frozen=True, eq=False)
class ModelRef:
    """A resolved model. ``str(ref)`` and ``os.fspath(ref)`` are its checkpoint folder, so it
    goes wherever a folder went (``Path(ref) / "model.pt"``, messages that name the folder)."""

    name: str
    """The name as the user gave it: ``dlib_resnet``, or the folder as given."""
    location: str
    """The checkpoint folder (``model.json`` + ``model.pt``, ``measured.json``): for a folder, as
    given; for a pretrained model, its cached folder."""
    metadata: dict[str, Any] = field(repr=False)
    """``model.json``, read once; shared by every reader of this reference: copy before changing it."""
    metadata_bytes: bytes = field(repr=False)
    """``model.json``'s bytes as read (what the Serve driver ships to replicas on other nodes)."""
    pretrained: str | None = None
    """The pretrained model whose weights it holds (resolved from that name, or a folder whose
    model.json names it, such as the cached folder), else None."""

    def __fspath__(self) -> str:
        return self.location

    def __str__(self) -> str:
        return self.location

    @property
    def folder(self) -> Path:
        return Path(self.location)

    @property
    def model_id(self) -> str:
        return str(self.metadata["model_id"])

    @property
    def backbone(self) -> str:
        return str(self.metadata["backbone"])

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    @property
    def input_kind(self) -> InputKind:
        """The input kind the model takes (``model.json``'s ``input_kind``; models older than input
        kinds took ``haar_crop``): :func:`facerec.data.inputs.kind_of` of its metadata."""
        from facerec.data.inputs import kind_of

        return kind_of(self.metadata)

    @property
    def image_size(self) -> int:
        return int(self.metadata.get("image_size") or self.input_kind.default_size)

    def calibration(self, detector: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The model's verification calibration (:func:`facerec.models.calibration.read_calibration`:
        ``measured.json`` beside it, else the one shipped for a pretrained model), checked against
        ``detector`` (a detector's settings) when given; None when uncalibrated. Read at each call:
        ``facerec calibrate`` may write it while a model is served."""
        from facerec.models.calibration import read_calibration

        return read_calibration(self.location, self.metadata, detector)

    @property
    def detector(self) -> dict[str, Any] | None:
        """The face detector settings its calibration was measured with (its thresholds hold for
        faces that detector found and aligned; :func:`facerec.detect.crops_detector` of the
        calibration's data), None when uncalibrated. Read at each call, like :meth:`calibration`."""
        cal = self.calibration()
        if not cal:
            return None
        from facerec.detect import crops_detector

        return dict(crops_detector(cal.get("data") or {}))


def resolve_model(model: str | os.PathLike | ModelRef) -> ModelRef:
    """The :class:`ModelRef` of ``model``: a reference (returned as it is), a registered pretrained
    model's name (its cached checkpoint folder, built on first use from the file a package ships)
    or a checkpoint folder. ``model.json`` is read once here. A folder that is missing or not a
    checkpoint raises :func:`facerec.models.metadata.read_checkpoint_metadata`'s errors."""
    if isinstance(model, ModelRef):
        return model
    from facerec.models.pretrained import PRETRAINED, cached_folder, pretrained_checkpoint

    if isinstance(model, str) and model in PRETRAINED:
        folder = cached_folder(model)
        try:
            meta, raw = read_checkpoint_metadata_bytes(folder)
        except Exception:  # absent or damaged cache entry: (re)built, never fatal
            folder = pretrained_checkpoint(model)
            meta, raw = read_checkpoint_metadata_bytes(folder)
        return ModelRef(name=model, location=str(folder), metadata=meta, metadata_bytes=raw, pretrained=model)
    meta, raw = read_checkpoint_metadata_bytes(model)
    return ModelRef(name=os.fspath(model), location=os.fspath(model), metadata=meta, metadata_bytes=raw,
                    pretrained=meta.get("pretrained") if isinstance(meta.get("pretrained"), str) else None)


def shipped_model(location: str | os.PathLike, metadata_bytes: bytes, name: str | None = None) -> ModelRef:
    """The reference of a checkpoint folder whose ``model.json`` bytes arrived with it (a Serve
    replica gets them in its init args, :mod:`facerec.serve.shipped`, and has checked that
    ``location`` holds them byte for byte): parsed, not read from the folder again."""
    import json

    meta = json.loads(metadata_bytes)
    return ModelRef(name=name or os.fspath(location), location=os.fspath(location), metadata=meta,
                    metadata_bytes=bytes(metadata_bytes),
                    pretrained=meta.get("pretrained") if isinstance(meta.get("pretrained"), str) else None)


def model_input_kind(model: str | os.PathLike | ModelRef) -> str:
    """The input kind (its name) a model takes: a reference or a checkpoint folder says it in its
    metadata (:attr:`ModelRef.input_kind`); a registered pretrained model's name in its registry
    entry, without building or reading anything, so an entry point checks crops against it before
    anything heavy runs. The models served from one gallery, and the crops made for them, ask here;
    a backbone not yet trained declares its own in its spec (``BACKBONES``, as a sweep asks), and a
    pretrained entry's is its backbone's (both from :mod:`facerec.dlibport.facts` for dlib_resnet)."""
    if isinstance(model, ModelRef):
        return model.input_kind.name
    from facerec.models.pretrained import PRETRAINED

    if isinstance(model, str) and model in PRETRAINED:
        return PRETRAINED.get(model).input_kind
    return resolve_model(model).input_kind.name
