"""The per-worker training function run by Ray Train (:func:`train_loop_per_worker`).

Each worker: reads its rows from the ``train``/``val`` dataset shards, decodes its crops once
(:class:`~facerec.train.batches.ImageCache`), builds ``build_embedder`` + ``build_loss`` wrapped in
one module (so a single DDP wrapper synchronises the classifier weights of the softmax-family
losses too), trains with Adam, and every epoch reports loss, seconds, images/s and validation
precision@1 / mAP@R (leave-one-out retrieval among held-out validation identities,
``facerec.metrics.retrieval.leave_one_out_metrics``; embeddings by ``facerec.models.inference``).
Rank 0 writes the checkpoint (model.pt + model.json via ``facerec.models.save_checkpoint``, plus the
optimizer/loss/epoch state); a restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from facerec.metrics.retrieval import leave_one_out_metrics
from facerec.train.batches import BATCH_PLANS, ImageCache, mix_seed
from facerec.train.config import TrainConfig

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
# Root-mean-square distance of unit-norm validation embeddings to their centroid below which a
# model is collapsed: every face maps to (almost) one point. A working model spreads faces over
# the sphere (values near 1); the smoke sweep's collapsed SphereFace trial served distances of
# 2e-8 between all faces, and its tied distances made leave-one-out precision look good.
COLLAPSE_SPREAD = 0.05


def is_collapsed(spread: float, initial_spread: float | None) -> bool:
    """Collapsed: training squeezed a spread-out embedding to a point -- the validation spread is below
    :data:`COLLAPSE_SPREAD` and under half its value under the initial weights, which were spread out
    themselves. A randomly initialised network in eval mode (batch norms with their initial
    statistics) already starts near one point; from such a start a tiny spread says "not trained
    yet", not "collapsed", so it is recorded (``val_embedding_spread``) but not judged."""
    if not np.isfinite(spread) or spread >= COLLAPSE_SPREAD:
        return False
    if initial_spread is None or not np.isfinite(initial_spread):
        return True
    return initial_spread >= COLLAPSE_SPREAD and spread < 0.5 * initial_spread


def embedding_spread(embeddings: np.ndarray) -> float:
    """RMS distance of the L2-normalised ``embeddings`` to their centroid (0 = collapsed)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))


class TrainModule(nn.Module):
    """Embedder + loss as one module: ``forward(images, labels, triplets)`` -> scalar loss.

    With ``triplets`` the batch is anchors, positives, negatives stacked (3B rows) and the loss's
    ``forward_triplets`` is used; otherwise ``loss(embeddings, labels)`` (P x K batches)."""

    def __init__(self, embedder: nn.Module, loss: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.loss = loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor, triplets: bool = False) -> torch.Tensor:
        emb = self.embedder(images)
        if triplets:
            b = emb.shape[0] // 3
            return self.loss.forward_triplets(emb[:b], emb[b : 2 * b], emb[2 * b :])
        return self.loss(emb, labels)


def _shard_rows(name: str) -> pd.DataFrame:
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    parts = [b for b in shard.iter_batches(batch_size=8192, batch_format="pandas")]
    rows = pd.concat(parts, ignore_index=True)
    # Ray Data need not preserve block order; every rank must see the same row order.
    return rows.sort_values("crop_path", kind="stable").reset_index(drop=True)


def make_batch(cache: ImageCache, rows: np.ndarray, transform: Callable) -> torch.Tensor:
    return torch.stack([transform(cache.images[r]) for r in rows])


def run_steps(module: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[tuple[np.ndarray, np.ndarray]],
              cache: ImageCache, transform: Callable, device: torch.device, triplets: bool,
              on_step: Callable[[int], None] | None = None) -> tuple[float, int]:
    """One pass over ``batches``: transform, forward, backward, Adam step. Returns
    (mean loss, images seen). Shared by the Ray Train worker and the bare-PyTorch benchmark so
    the two measure the same work."""
    module.train()
    total, seen = 0.0, 0
    for step, (rows, labels) in enumerate(batches):
        x = make_batch(cache, rows, transform).to(device, non_blocking=True)
        y = torch.from_numpy(labels).to(device, non_blocking=True)
        loss = module(x, y, triplets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        seen += len(rows)
        if on_step is not None:
            on_step(step)
    return total / max(1, len(batches)), seen


def embed_rows(embedder: nn.Module, cache: ImageCache, rows: np.ndarray, image_size: int, device: torch.device,
               batch_size: int = 128) -> np.ndarray:
    """Embeddings of the cached images ``rows`` (facerec.models.inference: eval mode, the input
    kind's deterministic transform), the embedder's train/eval mode left as it was."""
    from facerec.models.inference import embed_images

    return embed_images(embedder, [cache.images[r] for r in rows], image_size, batch_size=batch_size, device=device)


IMPRINT_IMAGES = 4  # images per class averaged into its initial centre: cheap, and enough for a start


def imprint_class_centres(module: TrainModule, local: pd.DataFrame, cache: ImageCache, image_size: int,
                          device: torch.device, num_classes: int, world: int) -> None:
    """Set the loss's class centres to the mean embedding of up to IMPRINT_IMAGES training images
    of each class under the initial model (Qi, Brown & Lowe, CVPR 2018, "Low-Shot Learning with
    Imprinted Weights"). Every rank embeds its own identities; the centres are gathered so all ranks
    start from the same weights."""
    rows = local.groupby("label", sort=True).head(IMPRINT_IMAGES)
    cache.add(rows["crop_path"])
    emb = embed_rows(module.embedder, cache, cache.rows(list(rows["crop_path"])), image_size, device)
    labels = rows["label"].to_numpy()
    sums = np.zeros((num_classes, emb.shape[1]), np.float64)
    counts = np.zeros(num_classes, np.int64)
    np.add.at(sums, labels, emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12))
    np.add.at(counts, labels, 1)
    parts = _all_gather((sums, counts), world)
    sums, counts = sum(p[0] for p in parts), sum(p[1] for p in parts)
    if (counts == 0).any():  # a class no rank holds cannot be: the split gives every label rows
        raise RuntimeError(f"no training image for classes {np.flatnonzero(counts == 0)[:5].tolist()} while imprinting")
    module.loss.imprint(torch.from_numpy(sums / counts[:, None]).float())


def _unwrap(module: nn.Module) -> TrainModule:
    return module.module if hasattr(module, "module") and isinstance(module.module, TrainModule) else module


def _load_state(ckpt_dir: Path, module: TrainModule) -> dict[str, Any]:
    weights = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=True)
    module.embedder.load_state_dict(weights, strict=True)
    state = torch.load(ckpt_dir / STATE_FILE, map_location="cpu", weights_only=False)
    module.loss.load_state_dict(state["loss"])
    module.embedder.metadata["init"] = state.get("init", module.embedder.metadata.get("init"))
    return state


def _save(ckpt_dir: Path, module: TrainModule, optimizer, cfg: TrainConfig, meta: dict, epoch: int,
          history: list, extra: dict) -> None:
    from facerec.models import save_checkpoint

    metrics = history[-1]
    save_checkpoint(ckpt_dir, module.embedder, {
        "image_size": cfg.image_size, "data_version": meta["data_version"], "loss": cfg.loss, "epoch": epoch,
        "loss_params": cfg.loss_params, "trial": meta.get("trial_name", cfg.trial_name()), "lr": cfg.lr,
        "split": meta["split"], "crop_size": meta.get("crop_size"),
        "val_precision_at_1": metrics["val_precision_at_1"], "val_map_at_r": metrics["val_map_at_r"],
        "train_config": cfg.to_dict(),
    })
    torch.save({"optimizer": optimizer.state_dict(), "loss": module.loss.state_dict(), "epoch": epoch,
                "init": module.embedder.metadata.get("init"), **extra}, ckpt_dir / STATE_FILE)
    (ckpt_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))


def _all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _min_over_ranks(n: int, world: int) -> int:
    return min(_all_gather(int(n), world))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point. ``config = {"train": TrainConfig.to_dict(), "meta": TrainData.meta()
    + {"trial_name"}}``."""
    import ray.train
    import ray.train.torch

    from facerec.data.inputs import input_kind
    from facerec.losses import build_loss
    from facerec.models import build_embedder

    cfg = TrainConfig.from_dict(config["train"])
    meta = config["meta"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        # Ray pins OMP_NUM_THREADS to the worker's CPUs; make torch agree explicitly.
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(mix_seed(cfg.seed, rank, 1))

    # --- data: this worker's identities and validation rows, decoded once
    t0 = time.perf_counter()
    train_rows = _shard_rows("train")
    val_rows = _shard_rows("val")
    local = train_rows[train_rows["shard"] == rank].reset_index(drop=True)
    cache = ImageCache(cfg.data_dir, cfg.image_size, threads=max(2, cfg.cpus_per_worker))
    if cfg.sampling == "pk":
        cache.add(local["crop_path"], progress=rank == 0)
    my_val = val_rows[val_rows["shard"] == rank]
    cache.add(my_val["crop_path"])
    val_cache_rows = cache.rows(list(my_val["crop_path"]))
    plan = BATCH_PLANS.get(cfg.sampling)(cache, local, train_rows, cfg, rank, world)
    data_seconds = time.perf_counter() - t0

    # --- model, loss, optimizer; resume if Ray Train hands us a checkpoint
    embedder = build_embedder(cfg.backbone, cfg.embedding_dim, cfg.freeze, cfg.weights)
    loss_fn = build_loss(cfg.loss, cfg.embedding_dim, meta["num_classes"], **cfg.loss_params)
    module = TrainModule(embedder, loss_fn)
    state: dict[str, Any] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = _load_state(Path(d), module)
    start_epoch = int(state.get("epoch", 0))  # epochs completed
    history: list[dict] = list(state.get("history", []))
    best_score = state.get("best_score", float("-inf"))
    bad_epochs = int(state.get("bad_epochs", 0))
    stopped = bool(state.get("stopped", False))

    if checkpoint is None and cfg.class_init == "imprint" and hasattr(loss_fn, "imprint"):
        t_imp = time.perf_counter()
        imprint_class_centres(module, local, cache, cfg.image_size, device,
                              meta["num_classes"], world)
        data_seconds += time.perf_counter() - t_imp
    module = ray.train.torch.prepare_model(module)
    inner_module = _unwrap(module)
    groups = [{"params": [p for p in inner_module.embedder.parameters() if p.requires_grad], "lr": cfg.lr}]
    loss_params = [p for p in inner_module.loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": cfg.loss_lr or cfg.lr})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    train_tf = input_kind(embedder.metadata["input_kind"]).train_transform(cfg.image_size)
    inner = _unwrap(module)

    def val_embeddings() -> np.ndarray:
        """Validation embeddings of all ranks, in ``val_rows`` order."""
        if world > 1:
            # DDP copies rank 0's buffers (batch-norm running statistics) only at the start of a
            # wrapped forward, so after the last step each rank holds its own; validate every shard
            # with the statistics of the model rank 0 checkpoints.
            for buf in inner.embedder.buffers():
                torch.distributed.broadcast(buf, src=0)
        emb = embed_rows(inner.embedder, cache, val_cache_rows, cfg.image_size, device)
        gathered = _all_gather((my_val.index.to_numpy(), emb), world)
        order = np.concatenate([g[0] for g in gathered])
        return np.concatenate([g[1] for g in gathered])[np.argsort(order)]

    # The spread before any step: a randomly initialised network already maps every face close to
    # one point, which is no collapse; training that shrinks a spread is.
    initial_spread = state.get("initial_spread")
    if initial_spread is None:
        initial_spread = embedding_spread(val_embeddings())

    for epoch in range(start_epoch, cfg.epochs):
        if stopped:
            break
        batches = plan.batches(epoch)
        steps = _min_over_ranks(len(batches), world)  # DDP needs every rank to take the same steps
        if cfg.steps_per_epoch is not None:
            steps = min(steps, cfg.steps_per_epoch)
        batches = batches[:steps]

        def maybe_die(step: int, epoch=epoch, steps=steps) -> None:
            # Test hook: a hard crash mid-epoch of a run that has not resumed yet. The controller
            # collects reports by polling, so wait until the last checkpoint is registered:
            # the crash is then "after the last checkpoint", as a real one minutes later would be.
            if (cfg.kill_at_epoch == epoch + 1 and rank == 0 and checkpoint is None
                    and step == max(0, steps // 2 - 1)):
                ray.train.get_all_reported_checkpoints()
                os.kill(os.getpid(), signal.SIGKILL)

        t_epoch, t_cpu = time.perf_counter(), time.process_time()
        mean_loss, seen = run_steps(module, optimizer, batches, cache, train_tf, device, plan.triplets, maybe_die)
        train_seconds = time.perf_counter() - t_epoch
        cpu_seconds = time.process_time() - t_cpu  # all threads of this process, Ray's own included

        t_val = time.perf_counter()
        all_emb = val_embeddings()
        scores = leave_one_out_metrics(all_emb, val_rows["identity"].to_numpy())
        spread = embedding_spread(all_emb)
        collapsed = is_collapsed(spread, initial_spread)
        val_seconds = time.perf_counter() - t_val

        score = scores["map_at_r"] if cfg.score_attribute == "val_map_at_r" else scores["precision_at_1"]
        if collapsed:
            # Tied distances rank neighbours by row order (sorted by identity), so a collapsed
            # model's scores are meaningless: never let it become the best checkpoint.
            scores = {"precision_at_1": float("nan"), "map_at_r": float("nan")}
            score = float("nan")
        if np.isfinite(score) and score > best_score:
            best_score, bad_epochs = float(score), 0
        else:
            bad_epochs += 1
        stopped = collapsed or (cfg.patience is not None and bad_epochs >= cfg.patience)
        metrics = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "epoch_seconds": train_seconds,
            "images_per_second": seen * world / train_seconds if train_seconds > 0 else float("nan"),
            "steps": steps,
            "cpu_seconds": cpu_seconds,
            "val_precision_at_1": scores["precision_at_1"],
            "val_map_at_r": scores["map_at_r"],
            "val_seconds": val_seconds,
            "val_embedding_spread": spread,
            "initial_embedding_spread": initial_spread,
            "collapsed": collapsed,
            "best_score": best_score,
            "early_stopped": stopped,
            "resumed_from_epoch": start_epoch,
            "data_seconds": data_seconds if epoch == start_epoch else 0.0,
            "world_size": world,
            "pid": os.getpid(),
            "niceness": os.nice(0),
        }
        history.append(metrics)
        if rank == 0:
            with tempfile.TemporaryDirectory(prefix="facerec-ckpt-") as tmp:
                _save(Path(tmp), inner, optimizer, cfg, meta, epoch + 1, history,
                      {"history": history, "best_score": best_score, "bad_epochs": bad_epochs, "stopped": stopped,
                       "initial_spread": initial_spread})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"epoch_{epoch + 1:04d}")
        else:
            ray.train.report(metrics)
