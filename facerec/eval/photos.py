"""Photos straight to embeddings on a Ray Data actor pool: decode -> face detector and gate -> the
model's input (crop, or 5 landmarks + aligned chip) -> forward, fused in one callable class per actor.

This is the path of ``bench_pipeline.py`` and of :func:`embed_photos`: nothing is written between
the steps, and each actor runs every step of its batch, so the two CPUs of a small machine are
both busy with whatever step is slow (detection) instead of one stage waiting on another.
The steps are the ones every stage uses (:mod:`facerec.detect`,
:meth:`facerec.data.inputs.InputKind.faces_many`, :meth:`~facerec.data.inputs.InputKind.tensor`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd

from facerec.errors import ConfigError, ImageDecodeError


class PhotoSteps:
    """The per-photo steps with one model and one detector: usable in-process (the benchmark's
    single-process loop) and as the body of :class:`EmbedPhotosBatch`. The model runs on ONNX
    Runtime when its input kind allows it (as served), else on torch, through
    :mod:`facerec.models.inference`; detection is preprocess's detector and gate (``detector``:
    :class:`facerec.detect.DetectorConfig` settings, default the default detector), batched over
    the photos of a call."""

    def __init__(self, checkpoint: str, torch_threads: int | None = None, opencv_threads: int | None = None,
                 several_faces: str = "largest", runtime: str = "auto", detector: dict | None = None):
        import cv2

        from facerec.detect import DetectorConfig
        from facerec.models.inference import input_maker
        from facerec.models.onnx_runtime import OnnxModel, cpu_export
        from facerec.models.reference import resolve_model

        if runtime not in ("auto", "torch", "onnx"):
            raise ConfigError("runtime", runtime, "'auto', 'torch' or 'onnx'")
        if opencv_threads:
            cv2.setNumThreads(int(opencv_threads))
        checkpoint = resolve_model(checkpoint)
        self.meta = dict(checkpoint.metadata)
        self.kind = checkpoint.input_kind
        onnx = None if runtime == "torch" else cpu_export(checkpoint)
        if runtime == "onnx" and onnx is None:
            raise ConfigError("runtime", runtime, f"'auto' or 'torch': {checkpoint} cannot run on ONNX Runtime here")
        if onnx is not None:  # as served: ONNX Runtime where the input kind allows it
            self.model = OnnxModel(str(onnx), threads=int(torch_threads) if torch_threads else None)
        else:
            import torch

            from facerec.models import load_embedder

            if torch_threads:
                torch.set_num_threads(int(torch_threads))
            self.model, self.meta = load_embedder(checkpoint, map_location="cpu")
        image_size = int(self.meta.get("image_size", 218))
        # A fixed-size kind (dlib's chip) is made at the model's size; a crop at the study's 218.
        self.size = image_size if self.kind.fixed_size else 218
        self._make_input = input_maker(self.model, image_size, self.kind)
        self.detector = (DetectorConfig.from_settings(detector) if detector else DetectorConfig()).build()
        self.several_faces = several_faces

    def detect(self, paths: list[str]) -> list[tuple[np.ndarray | None, np.ndarray | None, str]]:
        """Per photo: (its pixels, its face box in the detector's convention, "ok"), or (None, None,
        why not)."""
        from facerec.data.images import read_image

        out: list = [None] * len(paths)
        images = {}
        for i, path in enumerate(paths):
            try:
                images[i] = read_image(path)
            except ImageDecodeError as exc:
                out[i] = (None, None, exc.reason)
        for i, found in zip(images, self.detector.find_many(list(images.values()))):
            if found.reason is not None:
                out[i] = (None, None, found.reason)
            elif len(found) > 1 and self.several_faces == "drop":
                out[i] = (None, None, "several_faces")
            else:  # accepted faces come largest first
                out[i] = (images[i], found.boxes[0], "ok")
        return out

    def embed(self, paths: list[str]) -> tuple[np.ndarray, list[str]]:
        """(n, d) embeddings (NaN rows for photos without a usable face) and each photo's status."""
        from facerec.models.inference import forward

        found = self.detect(paths)
        keep = [i for i, (rgb, _, _) in enumerate(found) if rgb is not None]
        boxes = self.detector.boxes_in(self.kind.box_convention, np.array([found[i][1] for i in keep]).reshape(-1, 4))
        inputs = self.kind.faces_many([found[i][0] for i in keep], list(boxes), self.size)
        out = np.full((len(paths), int(self.meta["embedding_dim"])), np.nan, dtype=np.float32)
        if keep:
            out[keep] = forward(self.model, [self._make_input(f) for f in inputs])
        return out, [s for _, _, s in found]


class EmbedPhotosBatch:
    """Callable class for ``map_batches``: one :class:`PhotoSteps` per actor."""

    def __init__(self, checkpoint: str, torch_threads: int, several_faces: str, detector: dict | None = None):
        # One actor per core is the parallelism: each step runs single-threaded inside it.
        self.steps = PhotoSteps(checkpoint, torch_threads=torch_threads, opencv_threads=1, several_faces=several_faces,
                                detector=detector)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb, status = self.steps.embed([str(p) for p in batch["path"]])
        return {"row": np.asarray(batch["row"], dtype=np.int64), "embedding": emb, "status": np.asarray(status)}


def embed_photos(paths: list[str | os.PathLike], checkpoint: str, batch_size: int = 16, num_actors: int | None = None,
                 several_faces: str = "largest", progress: bool = True, detector: dict | None = None
                 ) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Embed the largest face of every photo with ``checkpoint`` (a folder or a pretrained name).

    Returns ``(embeddings (n, d) with NaN rows where no face was usable, a frame of path and
    status per photo, stats)``, in input order."""
    from facerec.models.reference import resolve_model
    from facerec.progress import Progress
    from facerec.ray_utils import cluster_cpus, init_ray, ray_data

    if several_faces not in ("largest", "drop"):
        raise ConfigError("several_faces", several_faces, "'largest' or 'drop'")
    paths = [str(p) for p in paths]
    if not paths:
        raise ConfigError("paths", "[]", "at least one photo")
    checkpoint = resolve_model(checkpoint)
    dim = checkpoint.embedding_dim  # a bad checkpoint fails before Ray
    from facerec.models.onnx_runtime import cpu_export

    cpu_export(checkpoint)  # exported once here, not by every actor at once
    from facerec.detect import DetectorConfig

    det = DetectorConfig.from_settings(detector) if detector else DetectorConfig()
    det.build().prepare()
    detector = det.settings()
    init_ray()
    data = ray_data()
    actors = num_actors or cluster_cpus()
    t0 = time.perf_counter()
    blocks = -(-len(paths) // batch_size)
    ds = data.from_items([{"row": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=blocks)
    ds = ds.map_batches(EmbedPhotosBatch, fn_constructor_kwargs={"checkpoint": checkpoint, "torch_threads": 1,
                                                                 "several_faces": several_faces, "detector": detector},
                        batch_size=batch_size, batch_format="numpy", num_cpus=1,
                        compute=data.ActorPoolStrategy(size=min(actors, blocks)))
    out = np.full((len(paths), dim), np.nan, dtype=np.float32)
    status = np.empty(len(paths), dtype=object)
    with Progress(len(paths), "embed photos", "img", enabled=progress) as bar:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(b["row"], dtype=np.int64)
            out[rows] = b["embedding"]
            status[rows] = b["status"]
            bar.update(len(rows))
    seconds = time.perf_counter() - t0
    frame = pd.DataFrame({"path": paths, "status": status})
    return out, frame, {"seconds": seconds, "photos": len(paths), "actors": min(actors, blocks),
                        "photos_per_second": len(paths) / seconds}
