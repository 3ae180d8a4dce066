"""A checkpoint run through ONNX Runtime: exported once from torch, checked against it, served without it.

Why: ``import torch`` alone holds ~540 MB of resident memory with the CUDA build of torch (and
torchvision ~170 MB more), while onnxruntime + OpenCV + numpy hold ~75 MB and an ORT session of
``dlib_resnet`` ~90 MB more; ORT also runs that network faster on a CPU (117 against 61 images/s
at batch 32). A CPU Serve replica of a model whose input kind needs no torch
(``InputKind.supports_numpy``) therefore runs it here and never imports torch.

- :func:`ensure_onnx` (the driver, which has torch): export the checkpoint's Embedder with the
  legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17, dynamic batch)
  into ``<cache>/onnx/<model_id>.onnx`` plus a sidecar ``<model_id>.json``; run torch and ORT on
  seeded random inputs and refuse the file (ArtifactMismatchError) when they differ by more than
  :data:`MAX_ABS_DIFF`. An existing file whose sidecar matches is reused.
- :class:`OnnxModel` (the replica, numpy only): ``N x 3 x H x W`` float32 -> ``N x d`` float32.
- :func:`export_files` / :func:`install_files`: an export as bytes for a replica on another node,
  whose cache the driver's export is not in, and those bytes written into that node's cache
  (:mod:`facerec.serve.shipped`).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.io import atomic_path, atomic_write_bytes, atomic_write_json, read_json_object, sha256_file
from facerec.models.reference import ModelRef, resolve_model

ONNX_OPSET = 17
# Bumped whenever what a checkpoint's model computes changes without its weights changing (the
# model_id hashes the weights only): v2 = dlib_resnet gives dlib's raw descriptors, no L2 head.
EXPORT_VERSION = 2
MAX_ABS_DIFF = 1e-4
"""Largest |ORT - torch| accepted on the parity inputs (the dlib_resnet export measures ~2.5e-7)."""
PARITY_SEED = 0
PARITY_BATCHES = (1, 3)  # a lone image and a batch: the dynamic batch axis is exercised both ways
INPUT_NAME, OUTPUT_NAME = "x", "e"


def onnx_available() -> bool:
    """True when onnxruntime can be imported (it is not imported here)."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_cache_dir() -> Path:
    """``$FACEREC_CACHE/onnx`` (default ``~/.cache/facerec/onnx``)."""
    from facerec.io import cache_root

    return cache_root() / "onnx"


def why_not_onnx(kind, gpu: bool) -> str | None:
    """Why a model of input kind ``kind`` (a ``facerec.data.inputs.InputKind``) cannot run on ONNX
    Runtime here, or None when it can. ``gpu``: a GPU was requested (the torch path uses it; this
    one is CPU only)."""
    if not kind.supports_numpy:
        return f"its input kind {kind.name} needs torch to make its inputs (InputKind.supports_numpy is False)"
    if gpu:
        return "a GPU was requested and the ONNX path runs on the CPU only; set num_gpus to 0 to use it"
    if not onnx_available():
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def cpu_export(checkpoint_dir: "str | os.PathLike | ModelRef") -> Path | None:
    """The ONNX export of a checkpoint (a folder or :class:`facerec.models.reference.ModelRef`)
    that can run on ONNX Runtime on this machine's CPU (:func:`why_not_onnx` says nothing against
    it), made once by :func:`ensure_onnx`; None otherwise, and the checkpoint runs on torch."""
    ref = resolve_model(checkpoint_dir)
    if why_not_onnx(ref.input_kind, gpu=False) is not None:
        return None
    return ensure_onnx(ref)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar json of an exported model; ArtifactMismatchError/DataNotFoundError naming the
    file when it is absent, unreadable, or does not describe ``onnx_path`` byte for byte."""
    onnx_path = Path(onnx_path)
    side = sidecar_path(onnx_path)
    if not onnx_path.is_file() or not side.is_file():
        raise DataNotFoundError(
            f"{onnx_path if not onnx_path.is_file() else side} not found; export the checkpoint with "
            f"facerec.models.onnx_runtime.ensure_onnx(CHECKPOINT) (facerec serve does it before starting replicas)"
        )
    meta = read_json_object(side, keys=("model_id", "opset", "max_abs_diff_vs_torch", "inputs", "sha256"),
                            fix=f"delete it and {onnx_path}, and export again with ensure_onnx")
    digest = sha256_file(onnx_path)
    if digest != meta["sha256"]:
        raise ArtifactMismatchError(
            f"{onnx_path} has SHA-256 {digest[:12]}... but {side} records {str(meta['sha256'])[:12]}...: the file was "
            f"damaged or replaced; delete both and export again with ensure_onnx"
        )
    return meta


def _reusable(onnx_path: Path, model_id: str) -> bool:
    try:
        meta = read_sidecar(onnx_path)
    except (ArtifactMismatchError, DataNotFoundError, OSError):
        return False  # absent or damaged: exported again
    return (meta["model_id"] == model_id and meta["opset"] == ONNX_OPSET
            and meta.get("export_version") == EXPORT_VERSION and float(meta["max_abs_diff_vs_torch"]) <= MAX_ABS_DIFF)


def parity_inputs(image_size: int) -> list[np.ndarray]:
    """Seeded random inputs in the range of raw RGB chips (0-255), one per :data:`PARITY_BATCHES`."""
    rng = np.random.default_rng(PARITY_SEED)
    return [rng.integers(0, 256, (n, 3, image_size, image_size)).astype(np.float32) for n in PARITY_BATCHES]


def ensure_onnx(checkpoint_dir: "str | os.PathLike | ModelRef", cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/onnx/<model_id>.onnx`` of the checkpoint, exported and verified on first use.

    Reuses an existing file when its sidecar names the same ``model_id`` and opset, records a
    difference within :data:`MAX_ABS_DIFF`, and the file still hashes to the recorded SHA-256;
    anything else (absent, damaged, older export) is exported again. Raises ArtifactMismatchError
    when ORT and torch disagree by more than :data:`MAX_ABS_DIFF` on the parity inputs (nothing is
    then left in the cache). Needs torch (the driver's side); the replica only reads the file.
    """
    if not onnx_available():
        raise ConfigError("runtime", "onnx", "'torch' or 'auto', or install onnxruntime (pip install onnxruntime)")
    ref = resolve_model(checkpoint_dir)  # a ModelRef: its metadata, not read again
    meta = ref.metadata
    model_id = str(meta["model_id"])
    folder = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    onnx_path = folder / f"{model_id}.onnx"
    if _reusable(onnx_path, model_id):
        return onnx_path

    import torch

    from facerec.models.checkpoint import load_embedder

    # load_embedder verifies model.pt against model_id: the file is named after the weights it holds.
    model, meta = load_embedder(ref, map_location="cpu")
    model = model.float().eval()
    size = int(meta.get("image_size") or 150)
    dim = int(meta["embedding_dim"])
    inputs = parity_inputs(size)
    # The port keeps activations channels_last internally; the traced input must be a plain
    # contiguous NCHW tensor, the layout ORT is fed.
    example = torch.from_numpy(inputs[-1]).contiguous()
    with atomic_path(onnx_path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns at every shape test of the port (dlib's zero-padded residual add):
            # those shapes are channels/rows/columns, fixed by the input size; the batch axis stays
            # dynamic, and the parity check below runs two batch sizes through the exported file.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # dynamo=False on purpose: the legacy exporter handles the port in ~2 s and its output is
            # verified below; torch's notice that it is no longer the default says nothing more.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
                              opset_version=ONNX_OPSET, dynamo=False)
            want = [model(torch.from_numpy(x)).numpy() for x in inputs]
        ort_model = OnnxModel(tmp, threads=None)
        got = [ort_model(x) for x in inputs]
        if any(g.shape != w.shape for g, w in zip(got, want)):
            raise ArtifactMismatchError(
                f"the ONNX export of {checkpoint_dir} answers shapes {[g.shape for g in got]} where torch answers "
                f"{[w.shape for w in want]}; serve this checkpoint with runtime='torch'")
        diff = max(float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, want))
        if not diff <= MAX_ABS_DIFF:  # NaN refused too
            raise ArtifactMismatchError(
                f"the ONNX export of {checkpoint_dir} (model_id {model_id}) differs from torch by up to {diff:.3g} on "
                f"seeded random inputs (allowed: {MAX_ABS_DIFF:g}); serve this checkpoint with runtime='torch'")
        digest = sha256_file(tmp)
    # The sidecar goes last: a sidecar never describes a file that is not fully in place.
    import onnxruntime

    atomic_write_json(sidecar_path(onnx_path), {
        "model_id": model_id,
        "opset": ONNX_OPSET,
        "export_version": EXPORT_VERSION,
        "max_abs_diff_vs_torch": diff,
        "parity": {"seed": PARITY_SEED, "batches": list(PARITY_BATCHES), "values": "uniform integers 0-255"},
        "inputs": [{"name": INPUT_NAME, "shape": ["n", 3, size, size], "dtype": "float32",
                    "input_kind": meta.get("input_kind")}],
        "outputs": [{"name": OUTPUT_NAME, "shape": ["n", dim], "dtype": "float32"}],
        "sha256": digest,
        "checkpoint": str(Path(checkpoint_dir).resolve()),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    })
    return onnx_path


def export_files(onnx_path: str | os.PathLike) -> dict[str, bytes]:
    """``{file name: bytes}`` of an export made by :func:`ensure_onnx` (the ``.onnx`` file and its
    sidecar), checked against its sidecar first; :func:`install_files` writes them elsewhere."""
    onnx_path = Path(onnx_path)
    read_sidecar(onnx_path)  # never ship a damaged file
    side = sidecar_path(onnx_path)
    return {onnx_path.name: onnx_path.read_bytes(), side.name: side.read_bytes()}


def install_files(folder: str | os.PathLike, files: dict[str, bytes], last: str) -> list[Path]:
    """Write ``files`` (``{file name: bytes}``) into ``folder`` where the file there differs,
    ``last`` (the sidecar that vouches for the others) after all of them; returns the paths
    written (none when the folder already holds these bytes).

    Each file is written atomically, so replicas installing the same files at once on one node
    only ever see whole files; a sidecar of other contents is removed first, so it never
    describes a half-replaced set."""
    folder = Path(folder)
    bad = [n for n in files if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad or last not in files:
        raise ConfigError("files", sorted(map(str, files)), f"plain file names including the sidecar {last!r}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    side = folder / last
    if side.is_file() and side.read_bytes() != files[last]:
        side.unlink(missing_ok=True)
    for name in [n for n in files if n != last] + [last]:
        target = folder / name
        if target.is_file() and target.stat().st_size == len(files[name]) and target.read_bytes() == files[name]:
            continue
        atomic_write_bytes(target, files[name])
        written.append(target)
    return written


def ort_threads_default() -> int:
    """Intra-op threads when none are configured: ``OMP_NUM_THREADS`` (Ray sets it to an actor's
    ``num_cpus``, and torch follows it) so ORT uses the CPUs the replica reserved, not every core
    of the node; 0 (ORT's own default) outside Ray."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


class OnnxModel:
    """An exported embedder on ONNX Runtime's CPU provider: ``N x 3 x H x W`` float32 -> ``N x d``.

    ``threads``: intra-op threads (None: :func:`ort_threads_default`); inter-op is 1, the graph is
    a chain of convolutions with nothing to run side by side.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataNotFoundError(f"{self.path} not found; export the checkpoint with facerec.models.onnx_runtime.ensure_onnx")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError("threads", threads, "None (OMP_NUM_THREADS or ORT's default) or an integer >= 1")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads is not None else ort_threads_default()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... for a damaged file
            raise ArtifactMismatchError(
                f"{self.path} could not be loaded by onnxruntime ({type(exc).__name__}: {exc}); delete it and its "
                f"sidecar {sidecar_path(self.path).name} and export again with ensure_onnx"
            ) from exc
        self.input_name = self.session.get_inputs()[0].name
        out_shape = self.session.get_outputs()[0].shape
        self.embedding_dim = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ConfigError("batch", f"array of shape {batch.shape}", "an N x 3 x H x W float32 array")
        if batch.shape[0] == 0:
            return np.zeros((0, self.embedding_dim or 0), dtype=np.float32)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)
