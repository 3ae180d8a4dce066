"""Stored model inputs -> embeddings: the one loop every stage runs.

Training validation (:mod:`facerec.train.loop`), the Ray Data embedding actors
(:mod:`facerec.gallery.embed`), the gallery builder and the Serve Embedder
(:mod:`facerec.serve.embedder`) all turn stored inputs (the PNG crops or chips the input kind of
:mod:`facerec.data.inputs` made) into embeddings through these functions, so a gallery row, a
validation image and a query of the same pixels get the same numbers.

A *model* is either a torch Embedder (``facerec.models.build_embedder`` / ``load_embedder``: it
carries ``metadata`` with ``input_kind`` and ``image_size``) or an
:class:`~facerec.models.onnx_runtime.OnnxModel` (numpy in, numpy out; the kind and size then come
from the caller). The ONNX path never imports torch: a Serve replica running it stays without
torch's ~0.5 GB of resident memory.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from facerec.models.onnx_runtime import OnnxModel

DEFAULT_BATCH_SIZE = 64


def is_onnx(model: Any) -> bool:
    """True for a model run by ONNX Runtime (numpy inputs, no torch)."""
    return isinstance(model, OnnxModel)


def model_kind(model: Any, kind: Any = None):
    """The :class:`~facerec.data.inputs.InputKind` of ``model``: ``kind`` when given (a name or an
    InputKind), else the one its metadata declares."""
    from facerec.data.inputs import InputKind, input_kind, kind_of

    if isinstance(kind, InputKind):
        return kind
    if kind is not None:
        return input_kind(str(kind))
    return kind_of(getattr(model, "metadata", {}) or {})


def model_image_size(model: Any, image_size: int | None = None) -> int:
    """``image_size`` when given, else the size the model's metadata records (what it was trained at)."""
    if image_size is not None:
        return int(image_size)
    meta = getattr(model, "metadata", None) or {}
    if meta.get("image_size"):
        return int(meta["image_size"])
    return int(model_kind(model).default_size)


def embedding_dim(model: Any) -> int:
    dim = getattr(model, "embedding_dim", None)
    if dim is None:
        dim = (getattr(model, "metadata", None) or {}).get("embedding_dim", 0)
    return int(dim or 0)


def input_maker(model: Any, image_size: int | None = None, kind: Any = None) -> Callable[[np.ndarray], Any]:
    """The deterministic input transform of the model's kind at its size: stored input (H x W x 3
    uint8) -> ``3 x S x S`` float32, a numpy array for an ONNX model, a tensor for torch."""
    k = model_kind(model, kind)
    size = model_image_size(model, image_size)
    if is_onnx(model):
        return lambda image: k.array(image, size)
    return lambda image: k.tensor(image, size)


def read_inputs(paths: Iterable[str | os.PathLike], image_size: int, kind: Any = "haar_crop") -> np.ndarray:
    """``(n, 3, S, S)`` float32 network inputs of stored input files (the kind's deterministic
    tensor), as numpy: what a decode stage hands to a model stage through the object store."""
    import torch

    from facerec.data.images import read_image

    k = model_kind(None, kind)
    return torch.stack([k.tensor(read_image(str(p)), int(image_size)) for p in paths]).numpy()


def forward(model: Any, batch: Any, device: Any = None) -> np.ndarray:
    """One forward pass of a batch -> ``(n, d)`` float32 numpy.

    ``batch``: ``N x 3 x H x W`` (numpy array or tensor) or a list of per-image inputs (what
    :func:`input_maker` makes). Torch: the model runs in eval mode (its train/eval mode is put back
    afterwards, so training can call this between steps) without autograd, on ``device`` (default:
    where the model's parameters are). ONNX: the numpy batch goes to ONNX Runtime.
    """
    if isinstance(batch, (list, tuple)) and len(batch) == 0:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    if is_onnx(model):
        x = np.stack(batch) if isinstance(batch, (list, tuple)) else batch
        return model(x)
    import torch

    if isinstance(batch, (list, tuple)):
        x = torch.stack([torch.as_tensor(b) for b in batch])
    elif isinstance(batch, np.ndarray):
        x = torch.as_tensor(np.ascontiguousarray(batch), dtype=torch.float32)
    else:
        x = batch
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            out = model(x.to(device))
    finally:
        if was_training:
            model.train(True)
    return out.float().cpu().numpy().astype(np.float32, copy=False)


def _batches(n: int, batch_size: int, progress: str | None) -> Iterable[int]:
    starts = range(0, n, batch_size)
    if progress is None:
        return starts
    return _counted(starts, n, batch_size, progress)


def _counted(starts: range, n: int, batch_size: int, desc: str) -> Iterator[int]:
    """``starts``, counting the images of each batch once the caller is done with it (one progress line)."""
    from facerec.progress import Progress

    with Progress(n, desc, "img") as bar:
        for s in starts:
            yield s
            bar.update(min(batch_size, n - s))


def _embed(model: Any, items: Sequence, load: Callable, image_size: int | None, kind: Any, batch_size: int,
           device: Any, progress: str | None) -> np.ndarray:
    make = input_maker(model, image_size, kind)
    chunks = [forward(model, [make(load(item)) for item in items[s:s + batch_size]], device)
              for s in _batches(len(items), batch_size, progress)]
    if not chunks:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    return np.concatenate(chunks)


def embed_images(model: Any, images: Sequence[np.ndarray], image_size: int | None = None, *, kind: Any = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None, progress: str | None = None) -> np.ndarray:
    """Stored inputs (H x W x 3 uint8, as the model's input kind made them) -> ``(n, d)``
    float32 embeddings, row i = ``images[i]``, ``batch_size`` at a time.

    ``image_size``/``kind`` default to the model's metadata (give them for an ONNX model);
    ``progress``: a label for a tqdm bar, None for none."""
    return _embed(model, images, lambda image: image, image_size, kind, batch_size, device, progress)


def embed_files(model: Any, paths: Sequence[str | os.PathLike], image_size: int | None = None, *, kind: Any = None,
                batch_size: int = DEFAULT_BATCH_SIZE, device: Any = None, progress: str | None = None) -> np.ndarray:
    """:func:`embed_images` of stored input files (PNG/JPEG), read one batch at a time so only a
    batch of decoded images is ever in memory."""
    from facerec.data.images import read_image

    return _embed(model, list(paths), lambda path: read_image(str(path)), image_size, kind, batch_size, device,
                  progress)
