"""The ``Embedder`` deployment (:class:`EmbedderDeployment`): photo bytes -> detected faces -> one embedding per face.

Per batch of requests: decode each (``decode_image_reduced``, pixel-limited; a large JPEG at a
reduced size, boxes answered in the photo's pixels), detect every face of all of
them in one call of the gallery's face detector and its gate (:mod:`facerec.detect`: MTCNN by
default, Zhang et al. 2016), then the model's input kind (:mod:`facerec.data.inputs`: the study's
crop with the gallery's margin and size, or dlib's 5-point aligned chip from the detector's box
mapped into dlib's convention) -- the same code that made the gallery's inputs. A photo with no
accepted face is a 422 ``no_face`` saying why (none found, too small, too unsure): a non-face is
never searched. The CNN forward pass of all faces of all requests waiting when the model becomes
free runs as one batch (``@serve.batch``): on a GPU, or a CPU running the forward on several
threads, one forward of 16 crops costs far less than 16 forwards of 1.
An :class:`~facerec.serve.batching.IdleGate` holds new requests while a batch computes, so the
next batch takes all of them (Serve 2.60 alone would form one-request batches meanwhile).

Errors are per item: a corrupt upload in a batch becomes that request's 4xx answer while the
other requests of the batch get their embeddings.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from facerec.errors import ArtifactMismatchError, ConfigError, ImageDecodeError
from facerec.serve.batching import IdleGate
from facerec.serve.config import RUNTIMES

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

# HTTP status of each failure reason; the Ingress turns them into the response.
# A large JPEG is decoded reduced (facerec.data.images.decode_image_reduced), never below this
# long side nor below the detector's detect_max_side: detection scans at most 640 px anyway, and at
# 1600 px a face the gate accepts there (20 px at 640) still spans 50 px, so the 150 px chip or the
# 218 px crop is cut from about the pixels a full decode would give it once resampled. A 1 MB,
# 6000 x 6500 JPEG then costs its Embedder ~1/16 of the pixels (benchmarks/bench_large_upload.py).
DECODE_MIN_SIDE = 1600

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
    torch otherwise. ``torch_threads`` sets the forward's threads in either runtime. ``weights``:
    the folder whose ``model.pt`` the torch runtime loads when it is not ``checkpoint`` (a replica
    whose node lacks the driver's checkpoint folder, :mod:`facerec.serve.shipped`).
    """

    def __init__(self, checkpoint: "str | ModelRef", crop_size: int = 218, margin: float = 0.2, max_pixels: int = 40_000_000,
                 max_faces: int = 10, detector: dict | None = None, device: str | None = None,
                 torch_threads: int | None = None, prepare_threads: int = 1, runtime: str = "auto",
                 onnx_path: str | None = None, weights: str | None = None):
        from facerec.models.reference import resolve_model

        # model.json first (read once, here), torch-free: it decides whether torch is needed at all.
        self.ref = resolve_model(checkpoint)
        self.checkpoint = str(self.ref)
        self.metadata = dict(self.ref.metadata)
        self.kind = self.ref.input_kind
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
            # weights in the reference's own folder: load through the reference (model.json not read again)
            same = weights is None or Path(weights) == self.ref.folder
            self.model, meta = load_embedder(self.ref if same else weights, map_location=self.device)
            if meta["model_id"] != self.metadata["model_id"]:
                raise ArtifactMismatchError(f"the weights in {weights} are model_id {meta['model_id']} but the checkpoint "
                                            f"{self.checkpoint} is {self.metadata['model_id']}")
            if weights is None:
                self.metadata = meta
        self.onnx_path = str(onnx_path) if self.runtime == "onnx" else None
        self.model_id = self.metadata["model_id"]
        from facerec.detect import DetectorConfig

        # Validated now, in the constructor; the gallery's detector (build_app checks they agree).
        self.detector_config = DetectorConfig.from_settings(detector) if detector else DetectorConfig()
        self.detector = self.detector_config.build()
        # Read once: a replica decides with the thresholds it started with (calibrate, then restart).
        self.calibration = self.ref.calibration(self.detector_config.settings())
        self.image_size = int(self.metadata.get("image_size", crop_size))
        # A fixed-size kind (dlib's chip) is made at the model's size; a crop at the gallery's.
        self.crop_size = self.image_size if self.kind.fixed_size else int(crop_size)
        from facerec.models.inference import input_maker

        self._make_input = input_maker(self.model, self.image_size, self.kind)
        self.margin = float(margin)
        self.max_pixels = int(max_pixels)
        # None decodes every photo at full size (the benchmark's "before")
        self.decode_min_side: int | None = max(DECODE_MIN_SIDE, int(self.detector_config.resolved().detect_max_side))
        self.max_faces = int(max_faces)
        # Decoding (PIL) and making the inputs (OpenCV, numpy) release the GIL, so the items of one
        # batch are prepared in parallel; detection runs once for the whole batch.
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
            "detector": self.detector_config.settings(),
            **process_memory_mb(),
            **model_card(self.metadata, self.checkpoint, self.calibration),
            "calibration": calibration_summary(self.calibration),
        }

    def decode(self, data: bytes) -> np.ndarray:
        """The RGB pixels of one upload, a large JPEG reduced (see :meth:`decode_sized`)."""
        return self.decode_sized(data)[0]

    def decode_sized(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """The RGB pixels of one upload and the photo's full (width, height): a large JPEG is
        decoded reduced to at least ``decode_min_side`` on its long side. FaceError when empty,
        unreadable or too large."""
        if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
            raise FaceError("empty", "the image is empty (0 bytes); upload a JPEG or PNG photo")
        try:
            from facerec.data.images import decode_image, decode_image_reduced

            if self.decode_min_side is None:
                rgb = decode_image(bytes(data), max_pixels=self.max_pixels, source="upload")
                return rgb, (int(rgb.shape[1]), int(rgb.shape[0]))
            return decode_image_reduced(bytes(data), self.decode_min_side, max_pixels=self.max_pixels, source="upload")
        except ImageDecodeError as exc:
            reason = exc.reason if exc.reason in STATUS_OF_REASON else "unreadable"
            raise FaceError(reason, str(exc)) from None

    def inputs(self, rgb: np.ndarray, found, faces: str = "largest", return_crops: bool = False,
               size: tuple[int, int] | None = None) -> dict[str, Any]:
        """The model inputs of the accepted faces of one decoded photo (``found``: its gated
        detection); FaceError ``no_face`` saying why when none was accepted. ``size``: the photo's
        full (width, height) when ``rgb`` was decoded reduced; boxes are answered in its pixels."""
        h, w = rgb.shape[:2]
        full_w, full_h = size or (w, h)
        if len(found) == 0:
            w, h = full_w, full_h
            why = {"no_face": "no face was found",
                   "too_small": f"the faces found are smaller than {self.detector_config.resolved().min_face} px",
                   "low_confidence": "nothing found looks enough like a face"}[found.reason]
            raise FaceError("no_face", f"no face in the {w}x{h} image: {why}; upload a photo with a clear, frontal face")
        keep = slice(0, 1) if faces == "largest" else slice(0, self.max_faces)
        boxes, scores = found.boxes[keep], found.scores[keep]
        crops = self.kind.faces(rgb, self.detector.boxes_in(self.kind.box_convention, boxes), self.crop_size, self.margin)
        sx, sy = full_w / w, full_h / h  # 1 unless decoded reduced
        return {
            "width": int(full_w),
            "height": int(full_h),
            "boxes": [[int(round(float(v) * f)) for v, f in zip(b, (sx, sy, sx, sy))] for b in boxes],
            "scores": [round(float(v), 4) for v in scores],
            # numpy arrays on the ONNX path (no torch in the process), torch tensors otherwise
            "tensors": [self.make_input(c) for c in crops],
            "crops": crops if return_crops else None,
        }

    def prepare(self, data: bytes, faces: str = "largest", return_crops: bool = False) -> dict[str, Any]:
        """Decode, detect, make the model's inputs and tensors of one image. Raises FaceError."""
        rgb, size = self.decode_sized(data)
        return self.inputs(rgb, self.detector.find(rgb), faces, return_crops, size)

    def make_input(self, crop: np.ndarray):
        """A stored model input (chip or crop) as the runtime's input: a numpy array or a tensor."""
        return self._make_input(crop)

    def forward(self, tensors: list) -> np.ndarray:
        """One forward pass of the inputs of all faces of a batch (facerec.models.inference.forward)."""
        from facerec.models.inference import forward

        if not tensors:
            return np.zeros((0, int(self.metadata["embedding_dim"])), dtype=np.float32)
        return forward(self.model, tensors, self.device)

    @staticmethod
    def _safely(fn, *args) -> tuple[Any, dict[str, Any] | None]:
        try:
            return fn(*args), None
        except FaceError as exc:
            return None, exc.as_dict()
        except Exception as exc:  # an unforeseen decoder failure is still this item's bad input
            return None, FaceError("unreadable", f"the image could not be processed ({type(exc).__name__}: {exc})").as_dict()

    def _map(self, fn, *iterables) -> list:
        if self._pool is not None and len(iterables[0]) > 1:
            return list(self._pool.map(fn, *iterables))
        return list(map(fn, *iterables))

    def embed_many(self, items: list[tuple[bytes, str, bool]]) -> list[dict[str, Any]]:
        """Embed a batch of (image bytes, faces mode, return_crops): per-item results, one detector
        call and one forward pass for all of them. A failure of one item never touches the others."""
        t0 = time.perf_counter()
        decoded = self._map(lambda item: self._safely(self.decode_sized, item[0]), items)
        ok = [i for i, (got, _) in enumerate(decoded) if got is not None]
        try:
            found = dict(zip(ok, self.detector.find_many([decoded[i][0][0] for i in ok])))
        except Exception:  # one photo the detector cannot take must not fail the others: one by one
            found = {}
            for i in ok:
                f, err = self._safely(self.detector.find, decoded[i][0][0])
                if err is None:
                    found[i] = f
                else:
                    decoded[i] = (None, err)
        outcomes = self._map(
            lambda i: decoded[i] if i not in found else self._safely(self.inputs, decoded[i][0][0], found[i], *items[i][1:],
                                                                     decoded[i][0][1]),
            range(len(items)))
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
                "faces": [{"box": b, "score": sc, "embedding": embeddings[pos + j]}
                          for j, (b, sc) in enumerate(zip(p["boxes"], p["scores"]))],
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


# The Python class is EmbedderDeployment, apart from the network (facerec.models.Embedder); the
# deployment keeps its Serve name, Embedder (Embedder_<model> per model, ModelConfig.deployment_options):
# Serve's status, handles, replica names and logs show it to users.
@serve.deployment(name="Embedder", health_check_period_s=10)
class EmbedderDeployment:
    """One replica holds one model (loaded once in ``__init__``); ``embed`` is batched.

    ``model``: a ModelConfig as a dict (plus ``onnx_path`` when the driver exported the model for
    ONNX Runtime, and ``shipped``: the files the replica reads, as bytes, see ``build_app`` and
    :mod:`facerec.serve.shipped`); ``crop``: keyword arguments of FaceEmbedderCore
    (crop size and margin of the gallery, pixel limit, the gallery's face detector settings).
    """

    def __init__(self, model: dict[str, Any], crop: dict[str, Any]):
        from facerec.serve.runtime import print_tracebacks_as_text
        from facerec.serve.shipped import land_detector, land_model

        print_tracebacks_as_text()

        self.name = model["name"]
        # The driver's paths may not exist on this node: what it shipped is used or written here.
        shipped = model.get("shipped") or {}
        land_detector(crop.get("detector"), shipped.get("detector"))
        where = land_model(model["checkpoint"], model.get("onnx_path"), shipped)
        self.core = FaceEmbedderCore(where.model or where.checkpoint, torch_threads=model.get("torch_threads"),
                                     prepare_threads=model.get("prepare_threads") or 1,
                                     runtime=model.get("runtime") or "auto", onnx_path=where.onnx_path,
                                     weights=where.weights, **crop)
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
