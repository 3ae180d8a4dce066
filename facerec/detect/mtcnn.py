"""``mtcnn``: the Multi-task Cascaded Convolutional Networks of Zhang et al., "Joint Face Detection
and Alignment using Multi-task Cascaded Convolutional Networks", IEEE Signal Processing Letters 23(10),
2016, with the weights that ship in ``facenet-pytorch`` (2.5.3), run on ONNX Runtime.

Three networks in a cascade: PNet scans an image pyramid (12 px window, stride 2) for candidate
boxes, RNet re-scores 24x24 crops of the survivors and ONet 48x48 crops, each stage refining the
boxes with its regression output (ONet also gives 5 landmarks). The detection code here is a numpy
+ OpenCV transcription of ``facenet_pytorch/models/utils/detect_face.py`` and keeps its conventions
(x1, y1, x2, y2 boxes inside, ``rerec`` to squares before each crop, its ``pad`` clipping, the
final boxes not squared) so its boxes are what facenet-pytorch returns. The pyramid and the crops are
resampled as facenet-pytorch's torch ``interpolate(mode="area")`` does (an adaptive average pool,
computed here from one summed-area table per photo), not with ``cv2.INTER_AREA``: the networks are
sensitive enough to the resampling that the two disagree on real photos (boxes at IoU ~0.8, scores
by ~0.3); ``tests/detect/test_mtcnn.py`` states the measured agreement.

- :func:`ensure_mtcnn_onnx` (needs torch + facenet-pytorch, once): export PNet/RNet/ONet to
  ``<onnx cache>/mtcnn/`` with a sidecar ``mtcnn.json``, checked against torch.
- :class:`MTCNN` (numpy, OpenCV and onnxruntime only: a Serve replica never imports torch): the
  registered ``mtcnn`` detector. RNet and ONet each run over the candidates of all the photos of a
  :meth:`MTCNN.detect_many` call together (in chunks of :data:`CHUNK` crops).
"""

from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from facerec.detect.base import DETECTORS, DLIB, BoxMap, FaceDetector, Faces
from facerec.errors import ArtifactMismatchError, DataNotFoundError
from facerec.io import atomic_path, atomic_write_json, read_json_object, sha256_file
from facerec.models.onnx_runtime import MAX_ABS_DIFF, ONNX_OPSET, onnx_cache_dir, ort_threads_default

FACENET_PYTORCH = "2.5.3"
"""The facenet-pytorch release whose weights are exported (2.6.0 pins torch<2.3)."""
# Bumped when the export (graph, names, axes) changes while the weights do not.
EXPORT_VERSION = 1
SIDECAR = "mtcnn.json"
NETS = ("pnet", "rnet", "onet")
OUTPUTS = {"pnet": ("reg", "prob"), "rnet": ("reg", "prob"), "onet": ("reg", "landmarks", "prob")}
PARITY_SEED = 0

PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
ONET_FLOOR = 0.5
"""ONet keeps boxes scoring at least this; the face gate's ``min_confidence`` (higher by default)
then decides, and counts what it turns away as ``low_confidence``."""
SCAN_MIN_FACE_FRACTION = 0.8
"""The pyramid looks for faces down to this fraction of the gate's ``min_face``: a face just under
the gate is still found, and rejected as ``too_small`` rather than silently missed."""
NMS_SCALE, NMS_PNET, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
CELL, STRIDE = 12, 2  # PNet's window and the stride of its output map
CHUNK = {"rnet": 256, "onet": 64}
"""Most crops per RNet/ONet session call. The crops of all photos of a call are batched, but on one
thread ORT's time per crop does not fall with the batch and rises past these sizes (its activations
leave the caches: ONet at 1024 crops costs ~2.5x per crop what it does at 64), and memory grows
with it; facenet-pytorch splits at 512 for the same reason."""


# ---------------------------------------------------------------------------------------------
# export (torch side)
# ---------------------------------------------------------------------------------------------

def mtcnn_onnx_dir() -> Path:
    """``<onnx cache>/mtcnn`` (``$FACEREC_CACHE/onnx/mtcnn``)."""
    return onnx_cache_dir() / "mtcnn"


def _installed_facenet_version() -> str | None:
    try:
        return metadata.version("facenet-pytorch")
    except metadata.PackageNotFoundError:
        return None


def read_mtcnn_sidecar(folder: str | Path) -> dict[str, Any]:
    """The sidecar of an MTCNN export; DataNotFoundError when a file is absent, ArtifactMismatchError
    when the sidecar is unreadable or a network file does not hash to what it records."""
    folder = Path(folder)
    side = folder / SIDECAR
    missing = [p for p in [side, *(folder / f"{n}.onnx" for n in NETS)] if not p.is_file()]
    if missing:
        raise DataNotFoundError(f"{missing[0]} not found; export MTCNN with "
                                f"facerec.detect.mtcnn.ensure_mtcnn_onnx() (needs torch and facenet-pytorch=={FACENET_PYTORCH})")
    meta = read_json_object(side, keys=("opset", "export_version", "max_abs_diff_vs_torch", "sha256", "facenet_pytorch"),
                            fix=f"delete {folder} and export again with ensure_mtcnn_onnx()")
    for n in NETS:
        path = folder / f"{n}.onnx"
        digest = sha256_file(path)
        if digest != meta["sha256"].get(n):
            raise ArtifactMismatchError(
                f"{path} has SHA-256 {digest[:12]}... but {side} records {str(meta['sha256'].get(n))[:12]}...: the file "
                f"was damaged or replaced; delete {folder} and export again with ensure_mtcnn_onnx")
    return meta


def _reusable(folder: Path) -> bool:
    try:
        meta = read_mtcnn_sidecar(folder)
    except (ArtifactMismatchError, DataNotFoundError, OSError):
        return False  # absent or damaged: exported again
    installed = _installed_facenet_version()
    # A replica without facenet-pytorch reads the export as it is; with it, another release is re-exported.
    return (meta["opset"] == ONNX_OPSET and meta["export_version"] == EXPORT_VERSION
            and float(meta["max_abs_diff_vs_torch"]) <= MAX_ABS_DIFF
            and (installed is None or installed == meta["facenet_pytorch"]))


def _parity_inputs() -> dict[str, list[np.ndarray]]:
    """Seeded random inputs in the networks' input range ((x - 127.5) / 128 of 0-255 pixels): a lone
    input and a batch each, and two image sizes for PNet, whose height and width are dynamic too."""
    rng = np.random.default_rng(PARITY_SEED)

    def u(*shape):
        return ((rng.integers(0, 256, shape).astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)

    return {"pnet": [u(1, 3, 12, 12), u(2, 3, 37, 53)], "rnet": [u(1, 3, 24, 24), u(3, 3, 24, 24)],
            "onet": [u(1, 3, 48, 48), u(3, 3, 48, 48)]}


def ensure_mtcnn_onnx(cache_dir: str | Path | None = None) -> Path:
    """The folder holding ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` and ``mtcnn.json``
    (default :func:`mtcnn_onnx_dir`), exported from facenet-pytorch's weights on first use.

    An existing export is reused when its sidecar records this opset and export version, a
    difference to torch within ``MAX_ABS_DIFF``, the installed facenet-pytorch release (when one is
    installed) and the SHA-256 of each file; anything else is exported again. Exporting needs torch
    and facenet-pytorch; ArtifactMismatchError when ONNX Runtime and torch disagree by more than
    ``MAX_ABS_DIFF`` on seeded random inputs (no sidecar is then written).
    """
    folder = Path(cache_dir) if cache_dir is not None else mtcnn_onnx_dir()
    if _reusable(folder):
        return folder
    try:
        import facenet_pytorch  # noqa: F401
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError as exc:
        raise DataNotFoundError(
            f"no MTCNN export in {folder} and facenet-pytorch, whose weights it is made from, cannot be imported ({exc}); "
            f"pip install facenet-pytorch=={FACENET_PYTORCH} (2.6.0 pins torch<2.3), or copy an export made elsewhere "
            f"into {folder}") from exc
    import onnxruntime as ort
    import torch

    nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    inputs = _parity_inputs()
    digests, diffs = {}, {}
    # Stale sidecar first: it must never describe a half-replaced folder.
    (folder / SIDECAR).unlink(missing_ok=True)
    for name, net in nets.items():
        net = net.float().eval()
        outs = OUTPUTS[name]
        axes = {"x": {0: "n", 2: "h", 3: "w"}} if name == "pnet" else {"x": {0: "n"}}
        for o in outs:
            axes[o] = {0: "n", 2: "h", 3: "w"} if name == "pnet" else {0: "n"}
        path = folder / f"{name}.onnx"
        with atomic_path(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # dynamo=False on purpose (see facerec.models.onnx_runtime): the output is verified below.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (torch.from_numpy(inputs[name][-1]),), str(tmp), input_names=["x"],
                                  output_names=list(outs), dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
                want = [[t.numpy() for t in net(torch.from_numpy(x))] for x in inputs[name]]
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = [sess.run(list(outs), {"x": x}) for x in inputs[name]]
            shapes_ok = all(g.shape == w.shape for gs, ws in zip(got, want) for g, w in zip(gs, ws))
            if not shapes_ok:
                raise ArtifactMismatchError(
                    f"the ONNX export of facenet-pytorch's {name} answers shapes "
                    f"{[[g.shape for g in gs] for gs in got]} where torch answers {[[w.shape for w in ws] for ws in want]}")
            diff = max(float(np.max(np.abs(g.astype(np.float64) - w))) for gs, ws in zip(got, want) for g, w in zip(gs, ws))
            if not diff <= MAX_ABS_DIFF:  # NaN refused too
                raise ArtifactMismatchError(
                    f"the ONNX export of facenet-pytorch's {name} differs from torch by up to {diff:.3g} on seeded random "
                    f"inputs (allowed: {MAX_ABS_DIFF:g}); check the onnxruntime and torch versions, or use the haar detector")
            digests[name], diffs[name] = sha256_file(tmp), diff
    atomic_write_json(folder / SIDECAR, {
        "opset": ONNX_OPSET,
        "export_version": EXPORT_VERSION,
        "facenet_pytorch": _installed_facenet_version(),
        "max_abs_diff_vs_torch": max(diffs.values()),
        "max_abs_diff_per_net": diffs,
        "parity": {"seed": PARITY_SEED, "values": "(uniform integers 0-255 - 127.5) / 128",
                   "shapes": {k: [list(x.shape) for x in v] for k, v in inputs.items()}},
        "outputs": {k: list(v) for k, v in OUTPUTS.items()},
        "sha256": digests,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    })
    return folder


def install_mtcnn_onnx(files: dict[str, bytes], cache_dir: str | Path | None = None) -> list[Path]:
    """Write an export made elsewhere (``MTCNN.files()`` of the driver: the three networks and
    the sidecar) into ``cache_dir`` (default :func:`mtcnn_onnx_dir`) unless an export there is
    reusable; the paths written. Torch-free: a replica on a node whose cache has no export gets
    the driver's instead of making one, which would import torch and need facenet-pytorch."""
    folder = Path(cache_dir) if cache_dir is not None else mtcnn_onnx_dir()
    if _reusable(folder):
        return []
    from facerec.models.onnx_runtime import install_files

    written = install_files(folder, files, SIDECAR)
    read_mtcnn_sidecar(folder)  # the hashes the driver recorded, checked on this node's copy
    return written


# ---------------------------------------------------------------------------------------------
# detection (numpy side)
# ---------------------------------------------------------------------------------------------

def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression, highest score first; indices kept. ``union``: torchvision's
    ``nms`` (areas without +1, a box goes when IoU > threshold), what facenet-pytorch uses after
    PNet and RNet; ``min``: its ``nms_numpy(..., 'Min')`` after ONet (areas with +1, overlap over
    the smaller area)."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, k].astype(np.float64) for k in range(4))
    plus = 1.0 if method == "min" else 0.0
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            over = inter / np.minimum(area[i], area[rest])
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                over = inter / (area[i] + area[rest] - inter)
        order = rest[~(over > threshold)]
    return np.asarray(keep, dtype=np.int64)


def _rerec(b: np.ndarray) -> np.ndarray:
    """Squares on the longer side, same centre (facenet-pytorch's ``rerec``: sides without +1)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += w * 0.5 - side * 0.5
    b[:, 1] += h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Box regression of RNet/ONet (sides with +1)."""
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, :4] = b[:, :4] + reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return b


def _bins(n_in: np.ndarray | int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) of each output cell of torch's adaptive average
    pooling, which ``interpolate(mode="area")`` is: ``floor(i * n_in / n_out)`` to
    ``ceil((i + 1) * n_in / n_out)``; ``n_in`` may be an array (one row per region)."""
    n_in = np.asarray(n_in, dtype=np.int64)[..., None]
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _area_resize(sat: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """The whole image whose summed-area table is ``sat`` ((h+1) x (w+1) x 3) resized to
    ``oh`` x ``ow`` as torch's ``interpolate(mode="area")`` does, which facenet-pytorch's pyramid
    uses (see the module docstring for why not ``cv2.INTER_AREA``)."""
    ys, ye = _bins(sat.shape[0] - 1, oh)
    xs, xe = _bins(sat.shape[1] - 1, ow)
    rows = sat[ye] - sat[ys]
    out = rows[:, xe] - rows[:, xs]
    return out / ((ye - ys)[:, None] * (xe - xs)[None, :])[..., None]


def _crops(sats: list[np.ndarray], boxes: np.ndarray, owner: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` x ``size`` crops (N x 3 x size x size, normalised) of the boxes clipped to their
    image as facenet-pytorch's ``pad`` does (1-based, truncated, no zero padding: a box over the
    edge is squeezed), area-resampled as in :func:`_area_resize` from each image's summed-area
    table in one gather per image; and which boxes had a non-empty crop."""
    ib = np.trunc(boxes[:, :4]).astype(np.int64)
    ok = np.zeros(len(boxes), dtype=bool)
    parts, where = [], []
    for i in np.unique(owner):
        sat = sats[i]
        h, w = sat.shape[0] - 1, sat.shape[1] - 1
        k = np.flatnonzero(owner == i)
        x0, y0 = np.maximum(ib[k, 0], 1) - 1, np.maximum(ib[k, 1], 1) - 1
        x1, y1 = np.minimum(ib[k, 2], w), np.minimum(ib[k, 3], h)
        good = (y1 > y0) & (x1 > x0)
        k, x0, y0, x1, y1 = k[good], x0[good], y0[good], x1[good], y1[good]
        if not len(k):
            continue
        ys, ye = _bins(y1 - y0, size)
        xs, xe = _bins(x1 - x0, size)
        ys, ye, xs, xe = ys + y0[:, None], ye + y0[:, None], xs + x0[:, None], xe + x0[:, None]
        flat = sat.reshape(-1, 3)
        stride = w + 1

        def corner(r, c):
            return np.take(flat, r[:, :, None] * stride + c[:, None, :], axis=0)

        total = corner(ye, xe) - corner(ys, xe) - corner(ye, xs) + corner(ys, xs)
        area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :])[..., None]
        parts.append(total / area)
        where.append(k)
        ok[k] = True
    if not parts:
        return np.zeros((0, 3, size, size), dtype=np.float32), ok
    order = np.argsort(np.concatenate(where), kind="stable")
    return _normalise(np.concatenate(parts)[order]), ok


def _normalise(nhwc: np.ndarray) -> np.ndarray:
    return ((nhwc.transpose(0, 3, 1, 2) - 127.5) * 0.0078125).astype(np.float32)


@DETECTORS.register("mtcnn")
class MTCNN(FaceDetector):
    """MTCNN (Zhang et al., IEEE SPL 2016) on ONNX Runtime; see the module docstring.

    Boxes are facenet-pytorch's final ONet boxes (not squared) as x, y, w, h; scores ONet's face
    probability (boxes down to :data:`ONET_FLOOR`, the gate decides); ``info["landmarks"]`` the 5
    points of each box (eyes, nose, mouth corners; n x 5 x 2 lists) in the photo's pixels.
    """

    name = "mtcnn"
    version = 2  # 2: boxes mapped into dlib's convention for the landmark step
    # Chosen on celeba-sample (benchmarks/bench_gate.py, bench_accuracy.py, bench_pipeline.py): 0.9 and
    # 20 px keep 97 % of the photos with no non-face among them; a pyramid step of 1.6 instead of
    # MTCNN's 1.41 (factor 0.709) costs 0.1 % of the photos and saves a fifth of the detection time.
    defaults = {"min_confidence": 0.9, "min_face": 20, "scale_step": 1.6}
    # MTCNN boxes -> dlib's frontal detector boxes, which dlib's shape predictor was trained on:
    # benchmarks/fit_box_maps.py, the median ratios over the 4,660 faces of celeba-sample that both
    # MTCNN (these defaults) and dlib's HOG detector (one upsample) found. MTCNN's box is narrower
    # and taller, reaching up the forehead: dlib's is 12 % wider, 16 % shorter and 5.7 % of the
    # height lower. Landmarks from the mapped box agree with dlib's own pipeline to 1.4 % of the
    # inter-ocular distance on average (3.1 % from the raw box), held out on half of the faces.
    box_maps = {DLIB: BoxMap(dx=-0.0100, dy=0.0565, sw=1.1239, sh=0.8413)}

    def __init__(self, config, threads: int | None = None):
        super().__init__(config)
        self.threads = threads
        self._sessions: dict | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sessions"] = None
        return state

    def prepare(self) -> None:
        ensure_mtcnn_onnx()

    def files(self) -> dict[str, bytes]:
        folder = ensure_mtcnn_onnx()
        return {name: (folder / name).read_bytes() for name in [*(f"{n}.onnx" for n in NETS), SIDECAR]}

    def install(self, files: dict[str, bytes]) -> list:
        return install_mtcnn_onnx(files)

    def _nets(self) -> dict:
        if self._sessions is None:
            import onnxruntime as ort

            folder = ensure_mtcnn_onnx()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads if self.threads is not None else ort_threads_default()
            opts.inter_op_num_threads = 1
            sessions = {}
            for n in NETS:
                try:
                    sessions[n] = ort.InferenceSession(str(folder / f"{n}.onnx"), sess_options=opts,
                                                       providers=["CPUExecutionProvider"])
                except Exception as exc:  # onnxruntime's own Fail/InvalidProtobuf for a damaged file
                    raise ArtifactMismatchError(
                        f"{folder / f'{n}.onnx'} could not be loaded by onnxruntime ({type(exc).__name__}: {exc}); "
                        f"delete {folder} and export again with ensure_mtcnn_onnx") from exc
            self._sessions = sessions
        return self._sessions

    def _run(self, net: str, x: np.ndarray) -> list[np.ndarray]:
        session, names = self._nets()[net], list(OUTPUTS[net])
        chunk = CHUNK.get(net, len(x)) or 1
        if len(x) <= chunk:
            return session.run(names, {"x": x})
        parts = [session.run(names, {"x": x[i:i + chunk]}) for i in range(0, len(x), chunk)]
        return [np.concatenate(p) for p in zip(*parts)]

    def _scales(self, h: int, w: int, downscale: float) -> list[float]:
        """facenet-pytorch's pyramid: from 12 / (smallest face in scan pixels), times
        1 / ``scale_step`` while the shorter side is still >= 12. A scan reduced to
        ``detect_max_side`` is never enlarged more than the photo itself would be, so a large photo
        costs what a ``detect_max_side`` one does."""
        face = SCAN_MIN_FACE_FRACTION * self.config.min_face
        m = 12.0 / (face * downscale)
        if downscale < 1.0:
            m = min(m, max(1.0, 12.0 / face))
        factor = 1.0 / self.config.scale_step
        scales, minl = [], min(h, w) * m
        while minl >= 12:
            scales.append(m)
            m *= factor
            minl *= factor
        return scales

    def _pnet(self, sat: np.ndarray, scales: list[float]) -> np.ndarray:
        """PNet candidates of one scan, given by its summed-area table (rows x1, y1, x2, y2,
        score, after the bbreg and rerec of facenet-pytorch's first stage)."""
        h, w = sat.shape[0] - 1, sat.shape[1] - 1
        per_scale = []
        for s in scales:
            im = _area_resize(sat, int(h * s + 1), int(w * s + 1))
            reg, prob = self._run("pnet", _normalise(im[None]))
            rows, cols = np.nonzero(prob[0, 1] >= PNET_THRESHOLD)
            if not len(rows):
                continue
            # torch computes these in float32; floor of the same float32 values gives the same pixels
            s32 = np.float32(s)
            q1x = np.floor((STRIDE * cols + 1).astype(np.float32) / s32)
            q1y = np.floor((STRIDE * rows + 1).astype(np.float32) / s32)
            q2x = np.floor((STRIDE * cols + CELL).astype(np.float32) / s32)
            q2y = np.floor((STRIDE * rows + CELL).astype(np.float32) / s32)
            cand = np.column_stack([q1x, q1y, q2x, q2y, prob[0, 1, rows, cols], reg[0, :, rows, cols]])
            per_scale.append(cand[nms(cand[:, :4], cand[:, 4], NMS_SCALE)])
        if not per_scale:
            return np.zeros((0, 5), dtype=np.float32)
        b = np.concatenate(per_scale)
        b = b[nms(b[:, :4], b[:, 4], NMS_PNET)]
        rw, rh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]  # no +1 here, unlike the later stages
        out = np.column_stack([b[:, 0] + b[:, 5] * rw, b[:, 1] + b[:, 6] * rh,
                               b[:, 2] + b[:, 7] * rw, b[:, 3] + b[:, 8] * rh, b[:, 4]])
        return _rerec(out)

    def detect_many(self, images: Sequence[np.ndarray]) -> list[Faces]:
        if not len(images):
            return []
        scans, back = [], []
        for rgb in images:
            rgb = np.asarray(rgb)
            if rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
            h, w = rgb.shape[:2]
            k = min(1.0, self.config.detect_max_side / max(h, w, 1))
            if k < 1.0:
                sw, sh = max(1, round(w * k)), max(1, round(h * k))
                rgb = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
                back.append((w / sw, h / sh, k))
            else:
                back.append((1.0, 1.0, 1.0))
            # One summed-area table per scan serves every pyramid level and every crop.
            scans.append(cv2.integral(np.ascontiguousarray(rgb, dtype=np.uint8), sdepth=cv2.CV_64F))

        boxes, owner = [], []
        for i, sat in enumerate(scans):
            b = self._pnet(sat, self._scales(sat.shape[0] - 1, sat.shape[1] - 1, back[i][2]))
            boxes.append(b)
            owner.append(np.full(len(b), i, dtype=np.int64))
        boxes, owner = np.concatenate(boxes).astype(np.float64), np.concatenate(owner)

        # RNet over the candidates of every photo at once.
        if len(boxes):
            x, ok = _crops(scans, boxes, owner, 24)
            boxes, owner = boxes[ok], owner[ok]
            reg, prob = self._run("rnet", x) if len(x) else (np.zeros((0, 4)), np.zeros((0, 2)))
            keep = prob[:, 1] > RNET_THRESHOLD
            boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
            owner, reg = owner[keep], reg[keep]
            pick = self._per_image(boxes, owner, NMS_RNET, "union")
            boxes, owner, reg = boxes[pick], owner[pick], reg[pick]
            boxes = _rerec(_bbreg(boxes, reg))

        # ONet likewise.
        points = np.zeros((0, 5, 2))
        if len(boxes):
            x, ok = _crops(scans, boxes, owner, 48)
            boxes, owner = boxes[ok], owner[ok]
            reg, lm, prob = self._run("onet", x) if len(x) else (np.zeros((0, 4)), np.zeros((0, 10)), np.zeros((0, 2)))
            keep = prob[:, 1] >= ONET_FLOOR
            boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
            owner, reg, lm = owner[keep], reg[keep], lm[keep].astype(np.float64)
            bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
            bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
            points = np.stack([bw * lm[:, :5] + boxes[:, 0:1] - 1, bh * lm[:, 5:] + boxes[:, 1:2] - 1], axis=2)
            boxes = _bbreg(boxes, reg)
            pick = self._per_image(boxes, owner, NMS_ONET, "min")
            boxes, owner, points = boxes[pick], owner[pick], points[pick]

        out = []
        for i in range(len(scans)):
            sel = owner == i
            b, p = boxes[sel], points[sel]
            fx, fy, _ = back[i]
            xywh = np.column_stack([b[:, 0] * fx, b[:, 1] * fy, (b[:, 2] - b[:, 0]) * fx, (b[:, 3] - b[:, 1]) * fy])
            pts = p * np.array([fx, fy])
            out.append(Faces(xywh, b[:, 4] if len(b) else np.zeros(0), {"landmarks": pts.tolist()}))
        return out

    @staticmethod
    def _per_image(boxes: np.ndarray, owner: np.ndarray, threshold: float, method: str) -> np.ndarray:
        """NMS within each photo; indices kept, photo by photo, best first within each."""
        picks = [np.flatnonzero(owner == i)[nms(boxes[owner == i, :4], boxes[owner == i, 4], threshold, method)]
                 for i in np.unique(owner)]
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
