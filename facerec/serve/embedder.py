"""The ``Embedder`` deployment: photo bytes -> detected faces -> one embedding per face.

Per request: decode (``decode_image``, pixel-limited), Haar detection of every face
(Viola & Jones, CVPR 2001; ``HaarDetector.detect_all``), then the model's input kind
(:mod:`facerec.data.inputs`: the study's crop with the gallery's margin and size, or dlib's
5-point aligned chip) -- the same code that made the gallery's inputs. The CNN forward pass of
all faces of all requests waiting when the model becomes free runs as one batch
(``@serve.batch``): on a GPU, or a CPU running the forward on several threads, one forward of
16 crops costs far less than 16 forwards of 1.
An :class:`~facerec.serve.batching.IdleGate` holds new requests while a batch computes, so the
next batch takes all of them (Serve 2.60 alone would form one-request batches meanwhile).

Errors are per item: a corrupt upload in a batch becomes that request's 4xx answer while the
other requests of the batch get their embeddings.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from facerec.errors import ArtifactMismatchError, ConfigError, ImageDecodeError
from facerec.serve.batching import IdleGate
from facerec.serve.config import RUNTIMES

# HTTP status of each failure reason; the Ingress turns them into the response.
STATUS_OF_REASON = {
    "empty": 400,
    "unreadable": 400,
    "missing": 400,
    "too_large": 413,
    "no_face": 422,
    "bad_request": 400,
}


def process_memory_mb() -> dict[str, float | None]:
    """This process's resident memory now and at its peak (VmRSS / VmHWM, MB; Linux only)."""
    try:
        lines = open("/proc/self/status").read().splitlines()
    except OSError:
        return {"rss_mb": None, "peak_rss_mb": None}
    vals = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in lines if ln.startswith(("VmRSS", "VmHWM"))}
    return {"rss_mb": round(vals.get("VmRSS", 0.0), 1) or None, "peak_rss_mb": round(vals.get("VmHWM", 0.0), 1) or None}


class FaceError(Exception):
    """A per-item failure: ``reason`` (a key of ``STATUS_OF_REASON``) and a user-facing message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message

    def as_dict(self) -> dict[str, Any]:
        return {"ok": False, "status": STATUS_OF_REASON.get(self.reason, 400), "code": self.reason, "message": self.message}


class FaceEmbedderCore:
    """Everything an Embedder replica does, without Ray: usable in-process by tests and the
    gallery builder. ``prepare`` is per image (and raises FaceError), ``forward`` is batched.

    ``runtime``: ``"torch"`` (the checkpoint's Embedder, on ``device``), ``"onnx"`` (the file
    ``onnx_path`` made by :func:`facerec.models.onnx_runtime.ensure_onnx`, on ONNX Runtime's CPU
    provider; torch is never imported, which keeps a replica of ``dlib_resnet`` ~600 MB smaller),
    or ``"auto"``: onnx when an ``onnx_path`` is given, the model's input kind can be made with
    numpy (``InputKind.supports_numpy``), onnxruntime is installed and no GPU is requested
    (``device`` None or cpu: the Serve app passes ``onnx_path`` only to replicas without GPUs);
    torch otherwise. ``torch_threads`` sets the forward's threads in either runtime.
    """

    def __init__(self, checkpoint: str, crop_size: int = 218, margin: float = 0.2, max_pixels: int = 40_000_000,
                 max_faces: int = 10, haar_scale_factor: float = 1.1, haar_min_neighbors: int = 5,
                 haar_min_size: int = 24, device: str | None = None, torch_threads: int | None = None,
                 prepare_threads: int = 1, runtime: str = "auto", onnx_path: str | None = None):
        from facerec.data.haar import HaarDetector
        from facerec.data.inputs import kind_of
        from facerec.models.metadata import read_checkpoint_metadata
        from facerec.models.pretrained import resolve_checkpoint

        self.checkpoint = resolve_checkpoint(checkpoint)
        # model.json first, torch-free: it decides whether torch is needed at all.
        self.metadata = read_checkpoint_metadata(self.checkpoint)
        self.kind = kind_of(self.metadata)
        self.runtime = self._choose_runtime(runtime, device, onnx_path)
        if self.runtime == "onnx":
            from facerec.models.onnx_runtime import OnnxModel, read_sidecar

            exported = read_sidecar(onnx_path)
            if exported["model_id"] != self.metadata["model_id"]:
                raise ArtifactMismatchError(
                    f"onnx_path {onnx_path} was exported from model_id {exported['model_id']} but the checkpoint "
                    f"{self.checkpoint} is {self.metadata['model_id']}; export this checkpoint with ensure_onnx")
            self.device = "cpu"
            self.model = OnnxModel(onnx_path, threads=int(torch_threads) if torch_threads else None)
        else:
            import torch

            from facerec.models import load_embedder

            if torch_threads:
                torch.set_num_threads(int(torch_threads))
            self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model, self.metadata = load_embedder(self.checkpoint, map_location=self.device)
        self.onnx_path = str(onnx_path) if self.runtime == "onnx" else None
        self.model_id = self.metadata["model_id"]
        from facerec.models.calibration import read_calibration

        # Read once: a replica decides with the thresholds it started with (calibrate, then restart).
        self.calibration = read_calibration(self.checkpoint, self.metadata)
        self.image_size = int(self.metadata.get("image_size", crop_size))
        # A fixed-size kind (dlib's chip) is made at the model's size; a crop at the gallery's.
        self.crop_size = self.image_size if self.kind.fixed_size else int(crop_size)
        from facerec.models.inference import input_maker

        self._make_input = input_maker(self.model, self.image_size, self.kind)
        self.margin = float(margin)
        self.max_pixels = int(max_pixels)
        self.max_faces = int(max_faces)
        self._haar_args = (haar_scale_factor, haar_min_neighbors, haar_min_size)
        HaarDetector(*self._haar_args)  # validate now, in the constructor
        self._local = threading.local()  # an OpenCV CascadeClassifier is not thread-safe: one per thread
        # Decoding (PIL) and the Haar scan (OpenCV) release the GIL, so the items of one batch
        # are prepared in parallel; an unbatched replica handles one image at a time.
        self._pool = ThreadPoolExecutor(prepare_threads, thread_name_prefix="prepare") if prepare_threads > 1 else None

    def _choose_runtime(self, runtime: str, device: str | None, onnx_path: str | None) -> str:
        from facerec.models.onnx_runtime import why_not_onnx

        if runtime not in RUNTIMES:
            raise ConfigError("runtime", runtime, f"one of {list(RUNTIMES)}")
        if runtime == "torch":
            return "torch"
        gpu = device is not None and not str(device).startswith("cpu")
        reason = why_not_onnx(self.kind, gpu)
        if reason is None and onnx_path is None:
            reason = "no onnx_path was given (export the checkpoint with facerec.models.onnx_runtime.ensure_onnx)"
        if reason is None:
            return "onnx"
        if runtime == "onnx":
            raise ConfigError("runtime", runtime, f"'auto' or 'torch' for {self.checkpoint}: {reason}")
        return "torch"

    def _detector(self):
        from facerec.data.haar import HaarDetector

        det = getattr(self._local, "detector", None)
        if det is None:
            det = self._local.detector = HaarDetector(*self._haar_args)
        return det

    def info(self) -> dict[str, Any]:
        from facerec.models.calibration import summary as calibration_summary
        from facerec.models.pretrained import model_card

        return {
            "model_id": self.model_id,
            "backbone": self.metadata.get("backbone"),
            "embedding_dim": int(self.metadata["embedding_dim"]),
            "image_size": self.image_size,
            "input_kind": self.kind.name,
            "device": str(self.device),
            "runtime": self.runtime,
            **process_memory_mb(),
            **model_card(self.metadata, self.checkpoint),
            "calibration": calibration_summary(self.calibration),
        }

    def prepare(self, data: bytes, faces: str = "largest", return_crops: bool = False) -> dict[str, Any]:
        """Decode, detect, make the model's inputs and tensors of one image. Raises FaceError."""
        if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
            raise FaceError("empty", "the image is empty (0 bytes); upload a JPEG or PNG photo")
        try:
            from facerec.data.images import decode_image

            rgb = decode_image(bytes(data), max_pixels=self.max_pixels, source="upload")
        except ImageDecodeError as exc:
            reason = exc.reason if exc.reason in STATUS_OF_REASON else "unreadable"
            raise FaceError(reason, str(exc)) from None
        boxes = np.asarray(self._detector().detect_all(rgb)).reshape(-1, 4)
        if len(boxes) == 0:
            h, w = rgb.shape[:2]
            raise FaceError("no_face", f"no face detected in the {w}x{h} image; upload a photo with a frontal face")
        boxes = boxes[:1] if faces == "largest" else boxes[: self.max_faces]
        crops = self.kind.faces(rgb, boxes, self.crop_size, self.margin)
        return {
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "boxes": [[int(v) for v in b] for b in boxes],
            # numpy arrays on the ONNX path (no torch in the process), torch tensors otherwise
            "tensors": [self.make_input(c) for c in crops],
            "crops": crops if return_crops else None,
        }

    def make_input(self, crop: np.ndarray):
        """A stored model input (chip or crop) as the runtime's input: a numpy array or a tensor."""
        return self._make_input(crop)

    def forward(self, tensors: list) -> np.ndarray:
        """One forward pass of the inputs of all faces of a batch (facerec.models.inference.forward)."""
        from facerec.models.inference import forward

        if not tensors:
            return np.zeros((0, int(self.metadata["embedding_dim"])), dtype=np.float32)
        return forward(self.model, tensors, self.device)

    def _safe_prepare(self, item: tuple[bytes, str, bool]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        data, faces, return_crops = item
        try:
            return self.prepare(data, faces, return_crops), None
        except FaceError as exc:
            return None, exc.as_dict()
        except Exception as exc:  # an unforeseen decoder failure is still this item's bad input
            return None, FaceError("unreadable", f"the image could not be processed ({type(exc).__name__}: {exc})").as_dict()

    def embed_many(self, items: list[tuple[bytes, str, bool]]) -> list[dict[str, Any]]:
        """Embed a batch of (image bytes, faces mode, return_crops): per-item results, one
        forward pass for all faces. A failure of one item never touches the others."""
        t0 = time.perf_counter()
        if self._pool is not None and len(items) > 1:
            import cv2

            # Parallel across the images of the batch; OpenCV's own threads inside each Haar scan
            # would oversubscribe the cores (one batch runs at a time, so the switch is safe).
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                outcomes = list(self._pool.map(self._safe_prepare, items))
            finally:
                cv2.setNumThreads(threads)
        else:
            outcomes = [self._safe_prepare(item) for item in items]
        prepared = [p for p, _ in outcomes]
        results = [{} if err is None else err for _, err in outcomes]
        t1 = time.perf_counter()
        tensors = [t for p in prepared if p is not None for t in p["tensors"]]
        embeddings = self.forward(tensors)
        t2 = time.perf_counter()
        pos = 0
        for i, p in enumerate(prepared):
            if p is None:
                continue
            n = len(p["tensors"])
            res = {
                "ok": True,
                "width": p["width"],
                "height": p["height"],
                "faces": [{"box": b, "embedding": embeddings[pos + j]} for j, b in enumerate(p["boxes"])],
                "model_id": self.model_id,
                "batch_size": len(items),
                "timing_ms": {"prepare": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3},
            }
            if p["crops"] is not None:
                from facerec.data.images import encode_png

                # Lossless: an added gallery image is stored as exactly the pixels embedded.
                res["crops_png"] = [encode_png(c) for c in p["crops"]]
            results[i] = res
            pos += n
        return results


@serve.deployment(name="Embedder", health_check_period_s=10)
class Embedder:
    """One replica holds one model (loaded once in ``__init__``); ``embed`` is batched.

    ``model``: a ModelConfig as a dict (plus ``onnx_path`` when the driver exported the model for
    ONNX Runtime, see ``build_app``); ``crop``: keyword arguments of FaceEmbedderCore
    (crop size and margin of the gallery, pixel limit, Haar parameters).
    """

    def __init__(self, model: dict[str, Any], crop: dict[str, Any]):
        self.name = model["name"]
        self.core = FaceEmbedderCore(model["checkpoint"], torch_threads=model.get("torch_threads"),
                                     prepare_threads=model.get("prepare_threads") or 1,
                                     runtime=model.get("runtime") or "auto", onnx_path=model.get("onnx_path"), **crop)
        self._gate = IdleGate()
        self.reconfigure({"max_batch_size": model["max_batch_size"], "batch_wait_timeout_s": model["batch_wait_timeout_s"]})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching knobs arrive as ``user_config`` so they change without a restart."""
        self._embed_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        self._embed_batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, **self.core.info(),
                "max_batch_size": self._embed_batch._get_max_batch_size(),
                "batch_wait_timeout_s": self._embed_batch._get_batch_wait_timeout_s()}

    async def embed(self, data: bytes, faces: str = "largest", return_crops: bool = False) -> dict[str, Any]:
        await self._gate.wait()
        return await self._embed_batch((data, faces, return_crops))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _embed_batch(self, items: list[tuple[bytes, str, bool]]) -> list[dict[str, Any]]:
        # In a worker thread: the replica's event loop keeps accepting requests, which wait
        # at the gate while this batch computes and then form the next batch together.
        async with self._gate.busy():
            return await asyncio.to_thread(self.core.embed_many, items)
