"""Embedding face crops at scale: a Ray Data ``map_batches`` pipeline over an actor pool, the
gallery builder's ``ray`` engine (:data:`facerec.gallery.build.EMBED_ENGINES`) and what evaluation,
calibration and clustering embed their crops with.

Each actor loads the model once (from a checkpoint folder, or from a state dict shipped
through the object store for an in-memory model), makes the input kind's deterministic inputs
and runs the forward pass batch by batch through :mod:`facerec.models.inference` (the loop
training and serving run too) -- the "offline batch inference" pattern of Ray Data (Moritz et al. 2018, "Ray: A Distributed Framework for
Emerging AI Applications", OSDI; Ray Data docs, "End-to-end: Offline Batch Inference").

* CPU: one fused decode + embed stage; each actor owns ``threads`` CPUs and sets
  ``torch.set_num_threads(threads)`` so actors never oversubscribe the cores.
* GPU: actors take ``num_gpus=1``; decoding runs in a separate CPU task stage so the GPU is
  not idle while JPEGs are decoded.

Every row carries its position in the input table; the driver writes each returned
embedding to that position, so the output is in input order whatever order the pool
finishes in (Ray Data does not preserve order across actors by default).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from facerec.errors import ConfigError, DataNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from facerec.models.reference import ModelRef

MAX_BLOCKS = 2000  # more blocks only add scheduling overhead; larger inputs get multi-batch blocks


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(kw_only=True)
class EmbeddingOptions:
    """How a stage embeds its crops: ``batch_size`` crops per forward pass, ``num_actors`` (None:
    from the cluster), ``use_gpu`` (None: GPUs when the cluster has them). One validated set of
    fields shared by every config that embeds (the gallery builds, the tables, calibration, and
    :class:`EmbedConfig` itself), behind one option group of the commands
    (``--batch-size/--num-actors/--gpu``, :func:`facerec.cli.common.add_embedding_arguments`).
    Keyword-only, so a config's own required fields keep their places."""

    batch_size: int = 64
    num_actors: int | None = None
    use_gpu: bool | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "an integer >= 1, e.g. 64")
        if self.num_actors is not None and (not _is_int(self.num_actors) or self.num_actors < 1):
            raise ConfigError("num_actors", self.num_actors, "None (from the cluster) or an integer >= 1")
        if self.use_gpu is not None and not isinstance(self.use_gpu, bool):
            raise ConfigError("use_gpu", self.use_gpu, "None (automatic), True or False")

    def embed_config(self, **more: Any) -> "EmbedConfig":
        """These options as the :class:`EmbedConfig` of one :func:`embed_crops_with_stats` call."""
        return EmbedConfig(batch_size=self.batch_size, num_actors=self.num_actors, use_gpu=self.use_gpu, **more)


@dataclass(kw_only=True)
class EmbedConfig(EmbeddingOptions):
    """How :func:`embed_crops` runs; validated before any actor starts.

    ``num_actors``: actor pool size (None: one per GPU, or CPUs // ``threads_per_actor``).
    ``threads_per_actor``: torch threads (and Ray CPUs) per CPU actor (None: up to 4, so a
    2-core machine runs one 2-thread actor and a 64-core node 16 four-thread actors: intra-op
    parallelism of small CNN batches stops scaling past a few threads).
    ``use_gpu``: None uses GPUs when the cluster has them.
    ``separate_decode``: decode JPEGs in a CPU task stage before the model stage (None: only
    on GPU).
    """

    threads_per_actor: int | None = None
    separate_decode: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threads_per_actor is not None and (not _is_int(self.threads_per_actor) or self.threads_per_actor < 1):
            raise ConfigError("threads_per_actor", self.threads_per_actor, "None or an integer >= 1")
        if self.separate_decode is not None and not isinstance(self.separate_decode, bool):
            raise ConfigError("separate_decode", self.separate_decode, "None (automatic), True or False")


@dataclass
class ModelSource:
    """What an actor needs to rebuild the model: a checkpoint folder, or (for an in-memory
    model) an object-store reference to its state dict plus its build metadata."""

    checkpoint_dir: str | None
    state_ref: Any
    metadata: dict
    image_size: int

    @classmethod
    def of(cls, model: "ModelRef", image_size: int | None = None) -> "ModelSource":
        """The source of a resolved model: its folder, its metadata as the reference read it."""
        return cls(str(model.folder.resolve()), None, dict(model.metadata),
                   int(image_size or model.metadata.get("image_size") or 218))

    @property
    def input_kind(self) -> str:
        from facerec.data.inputs import kind_of

        return kind_of(self.metadata).name

    @property
    def model_id(self) -> str | None:
        return self.metadata.get("model_id")


def resolve_model_source(model: Any, image_size: int | None = None) -> ModelSource:
    """A checkpoint folder (str/Path) or an Embedder -> :class:`ModelSource`.

    The image size is the checkpoint's ``image_size`` (what it was trained at) unless
    ``image_size`` is given; an in-memory model without one uses its metadata or 218, the
    study's crop size.
    """
    from torch import nn

    if isinstance(model, (str, os.PathLike)):  # a ModelRef too (os.PathLike: its folder)
        from facerec.models.reference import resolve_model

        # missing/damaged checkpoint fails before any actor starts
        return ModelSource.of(resolve_model(model), image_size)
    if isinstance(model, nn.Module) and hasattr(model, "metadata"):
        import ray

        from facerec.ray_utils import init_ray

        init_ray()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = dict(model.metadata)
        size = int(image_size or meta.get("image_size") or 218)
        return ModelSource(None, ray.put(state), meta, size)
    raise ConfigError(
        "model", type(model).__name__,
        "a checkpoint folder (RUN/<trial>/best) or an Embedder from facerec.models.build_embedder",
    )


def _load_model(source: ModelSource, device: str):
    if source.checkpoint_dir is not None:
        from facerec.models import load_embedder

        model, _ = load_embedder(source.checkpoint_dir, map_location=device)
        return model
    import ray

    from facerec.models import build_embedder

    m = source.metadata
    model = build_embedder(m["backbone"], int(m["embedding_dim"]), m.get("freeze", "none"), pretrained=False)
    state = source.state_ref if isinstance(source.state_ref, dict) else ray.get(source.state_ref)
    model.load_state_dict(state, strict=True)
    model.metadata["init"] = m.get("init", model.metadata["init"])
    return model.to(device).eval()


def decode_batch(batch: dict[str, np.ndarray], image_size: int, input_kind: str = "haar_crop") -> dict[str, np.ndarray]:
    """Task-stage function (GPU pipelines): stored input files -> input tensors."""
    import torch

    from facerec.models.inference import read_inputs

    torch.set_num_threads(1)  # one task per core is the parallelism here
    return {"row": np.asarray(batch["row"], dtype=np.int64), "pixels": read_inputs(batch["path"], image_size, input_kind)}


class EmbedBatch:
    """Actor of the pool: the model is loaded once in ``__init__``, then every call embeds one
    batch (decoding the files first when the batch carries paths)."""

    def __init__(self, source: ModelSource, threads: int, use_gpu: bool):
        import torch

        self.device = "cuda" if use_gpu else "cpu"
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.model = _load_model(source, self.device)
        self.image_size = source.image_size
        self.input_kind = source.input_kind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from facerec.models.inference import forward, read_inputs

        t0 = time.perf_counter()
        pixels = batch["pixels"] if "pixels" in batch else read_inputs(batch["path"], self.image_size, self.input_kind)
        emb = forward(self.model, pixels, self.device)
        n = len(batch["row"])
        # Each row's share of the batch's compute time: the driver can sum it over any subset
        # of rows (e.g. the gallery) without counting actor start-up or model loading.
        share = np.full(n, (time.perf_counter() - t0) / max(n, 1), dtype=np.float64)
        return {"row": np.asarray(batch["row"], dtype=np.int64), "embedding": emb.astype(np.float32, copy=False),
                "seconds": share}


def _crop_paths(df: pd.DataFrame, crops_root: str | os.PathLike) -> list[str]:
    if "crop_path" not in df.columns:
        raise ConfigError("df", list(df.columns)[:6], "a crops table with a 'crop_path' column (crops.parquet rows)")
    root = Path(crops_root)
    if not root.is_dir():
        raise DataNotFoundError(f"crops folder {root} not found; pass the preprocess output folder (with crops/)")
    paths = [str(root / p) for p in df["crop_path"].astype(str)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataNotFoundError(
            f"{len(missing)} of {len(paths)} crop files are missing under {root} (first: {missing[0]}); "
            f"the crops table does not match this folder -- re-run preprocess or pass the right --crops"
        )
    return paths


def check_crops_for_model(crops_root: str | os.PathLike, source: ModelSource) -> None:
    """Refuse crops of another input kind than the model's (read from the folder's table metadata)."""
    from facerec.data.inputs import check_inputs_match
    from facerec.io import read_parquet_metadata

    for table in ("crops.parquet", "lfw_crops.parquet"):
        path = Path(crops_root) / table
        if path.is_file():
            where = source.checkpoint_dir or f"({source.metadata.get('backbone')}, in memory)"
            check_inputs_match({**source.metadata, "image_size": source.image_size}, read_parquet_metadata(path),
                               str(path), where)
            return


def _plan(cfg: EmbedConfig, n_batches: int) -> tuple[bool, bool, int, int]:
    """(use_gpu, separate decode stage, actors, threads per actor) from the cluster's resources."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = max(1, int(res.get("CPU", 1)))
    use_gpu = (gpus > 0) if cfg.use_gpu is None else cfg.use_gpu
    if use_gpu and gpus == 0:
        raise ConfigError("use_gpu", True, "False or None: the Ray cluster has no GPU")
    separate = use_gpu if cfg.separate_decode is None else cfg.separate_decode
    if use_gpu:
        actors = cfg.num_actors or gpus
        return True, separate, max(1, min(actors, n_batches)), 1
    if separate:
        cpus = max(1, cpus - 1)  # a CPU-only pipeline with a decode stage must leave it a core
    if cfg.num_actors and cfg.threads_per_actor:
        actors, threads = cfg.num_actors, cfg.threads_per_actor
    elif cfg.num_actors:
        actors, threads = cfg.num_actors, max(1, cpus // cfg.num_actors)
    else:
        threads = cfg.threads_per_actor or min(4, cpus)
        actors = max(1, cpus // threads)
    if actors * threads > cpus:
        raise ConfigError("num_actors x threads_per_actor", f"{actors} x {threads}",
                          f"at most the cluster's {cpus} CPUs (the pool would never start)")
    return False, separate, max(1, min(actors, n_batches)), threads


def embed_crops_with_stats(df: pd.DataFrame, crops_root: str | os.PathLike, model: Any,
                           config: EmbedConfig | None = None, image_size: int | None = None
                           ) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`embed_crops` plus a stats dict: seconds (wall, actor start-up and model loading
    included), images_per_second (over that wall time), compute_seconds (sum over batches of
    decode + forward time -- forward only with a separate decode stage -- i.e. one actor's
    time for all rows), row_seconds ((n,) each row's
    share of its batch's compute time), actors, threads, device, model_id, image_size."""
    import ray

    from facerec.progress import Progress
    from facerec.ray_utils import init_ray, ray_data

    cfg = config or EmbedConfig()
    paths = _crop_paths(df, crops_root)
    n = len(paths)
    if n == 0:
        raise ConfigError("df", "0 rows", "at least one crop to embed")
    source = resolve_model_source(model, image_size)  # a bad checkpoint fails before Ray starts
    check_crops_for_model(crops_root, source)
    init_ray()
    dim = int(source.metadata["embedding_dim"])
    n_batches = math.ceil(n / cfg.batch_size)
    use_gpu, separate, actors, threads = _plan(cfg, n_batches)

    # Blocks of whole batches so the pool can spread them; capped in number for huge inputs.
    batches_per_block = max(1, math.ceil(n_batches / MAX_BLOCKS))
    rows_per_block = cfg.batch_size * batches_per_block
    table = pd.DataFrame({"row": np.arange(n, dtype=np.int64), "path": paths})
    blocks = [table.iloc[i:i + rows_per_block].reset_index(drop=True) for i in range(0, n, rows_per_block)]

    data = ray_data()
    t0 = time.perf_counter()
    ds = data.from_pandas(blocks)
    if separate:
        # On CPU the actors hold actors*threads CPUs; decode tasks get what is left (at least one).
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        free = None if use_gpu else max(1, cpus - actors * threads)
        ds = ds.map_batches(decode_batch, fn_kwargs={"image_size": source.image_size, "input_kind": source.input_kind},
                            batch_size=cfg.batch_size,
                            batch_format="numpy", num_cpus=1, compute=data.TaskPoolStrategy(size=free))
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"source": source, "threads": threads, "use_gpu": use_gpu},
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=data.ActorPoolStrategy(size=actors),
        num_cpus=0 if use_gpu else threads,
        num_gpus=1 if use_gpu else 0,
    )
    out = np.full((n, dim), np.nan, dtype=np.float32)
    row_seconds = np.zeros(n, dtype=np.float64)
    seen = np.zeros(n, dtype=bool)
    with Progress(n, "embed", "img", enabled=cfg.progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(batch["row"], dtype=np.int64)
            emb = np.asarray(batch["embedding"], dtype=np.float32).reshape(len(rows), -1)
            out[rows] = emb
            row_seconds[rows] = batch["seconds"]
            seen[rows] = True
            bar.update(len(rows))
    seconds = time.perf_counter() - t0
    if not seen.all():
        raise RuntimeError(f"embedding pipeline returned {int(seen.sum())} of {n} rows (first missing row "
                           f"{int(np.flatnonzero(~seen)[0])}); re-run -- a worker may have died")
    compute = float(row_seconds.sum())
    stats = {"images": n, "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else float("inf"),
             "compute_seconds": compute, "row_seconds": row_seconds, "actors": actors, "threads": threads, "device": "gpu" if use_gpu else "cpu",
             "model_id": source.model_id, "image_size": source.image_size, "embedding_dim": dim}
    print(f"embed: {n} crops -> ({n}, {dim}) in {seconds:.1f} s ({stats['images_per_second']:.1f} images/s; "
          f"{n / max(compute, 1e-9) * actors:.1f} images/s in the actors) on "
          f"{actors} {'GPU' if use_gpu else f'CPU x {threads}-thread'} actor(s), model {source.model_id or '(in memory)'}",
          flush=True)
    return out, stats


def embed_crops(df: pd.DataFrame, crops_root: str | os.PathLike, model: Any, batch_size: int = 64,
                num_actors: int | None = None, use_gpu: bool | None = None, image_size: int | None = None,
                progress: bool = True) -> np.ndarray:
    """Embed the crops of ``df`` (rows of ``crops.parquet``; files at ``crops_root/crop_path``)
    with ``model`` -- a checkpoint folder or an Embedder -- on a Ray Data actor pool.

    Returns ``(len(df), d)`` float32 L2-normalised embeddings, row i = ``df.iloc[i]``.
    Connects to Ray if needed (the cluster of ``RAY_ADDRESS`` when set, else a local one).
    """
    cfg = EmbedConfig(batch_size=batch_size, num_actors=num_actors, use_gpu=use_gpu, progress=progress)
    return embed_crops_with_stats(df, crops_root, model, cfg, image_size=image_size)[0]
