"""One training run on Ray Train: build the ``TorchTrainer`` from a :class:`TrainConfig`, run
it, and export the outcome into a trial folder of the run folder::

    RUN/<trial>/best/          model.pt + model.json of the best-scoring epoch (a checkpoint dir)
    RUN/<trial>/history.json   one dict per epoch (loss, seconds, images/s, val metrics, pid)
    RUN/<trial>/result.json    the trial's summary row (see :func:`summarize`)

Ray Train keeps the per-epoch checkpoints under the storage path (``RUN/_ray`` by default;
on a multi-node cluster it must be a folder every node shares). The Ray Train run is named
``<trial>-<config fingerprint>``, so re-running an unchanged config resumes from its last
checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from facerec.io import atomic_write_json
from facerec.ray_utils import init_ray
from facerec.train.config import TrainConfig
from facerec.train.data import TrainData, prepare_data
from facerec.train.loop import HISTORY_FILE, train_loop_per_worker

log = logging.getLogger(__name__)

BEST_DIR = "best"


def resolve_use_gpu(cfg: TrainConfig) -> bool:
    """``cfg.use_gpu``, or, when None, whether the connected Ray cluster has GPUs."""
    if cfg.use_gpu is not None:
        return bool(cfg.use_gpu)
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def default_storage(out_dir: str | os.PathLike) -> str:
    return str(Path(out_dir).resolve() / "_ray")


def build_trainer(cfg: TrainConfig, data: TrainData, *, name: str, storage_path: str,
                  use_gpu: bool, callbacks: list | None = None, trial_name: str | None = None):
    """The ``TorchTrainer`` of one run: ``num_workers`` workers of ``cpus_per_worker`` CPUs (and
    one GPU each with ``use_gpu``), retries from the last checkpoint up to ``max_failures``, the
    ``num_to_keep`` best checkpoints by ``score_attribute`` (the latest is always kept too)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    meta = {**data.meta(), "trial_name": trial_name or cfg.trial_name()}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "meta": meta},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.num_to_keep,
                checkpoint_score_attribute=cfg.score_attribute,
                checkpoint_score_order="max",
            ),
            callbacks=list(callbacks or []),
            worker_runtime_env=worker_runtime_env(cfg),
        ),
        datasets=data.datasets(),
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )


def worker_runtime_env(cfg: TrainConfig) -> dict:
    """Runtime env of the training workers. Ray starts worker processes at nice 15 so its own
    daemons stay responsive; a CPU training step is a team of torch/OpenMP threads that meet at
    barriers, and each preemption of one of them by any nice-0 process leaves the others spinning.
    On a 2-CPU machine bench_train measured the worker at 0.85 and 0.92 of a bare PyTorch loop's
    images/s at nice 15, 0.98 and 0.95 at nice 0 (medians of 2-3 alternating runs; the nice-15
    runs also vary more). ``worker_niceness=None`` keeps Ray's default."""
    if cfg.worker_niceness is None:
        return {}
    return {"env_vars": {"RAY_worker_niceness": str(int(cfg.worker_niceness))}}


def _copy_checkpoint_atomically(src: Path, dst: Path) -> None:
    """Replace folder ``dst`` by a copy of ``src``'s model files: copy into a temporary sibling,
    then swap, so a reader never sees a half-written ``best/``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for name in ("model.pt", "model.json", HISTORY_FILE):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        old = None
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finite(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def summarize(trial_name: str, cfg: TrainConfig, history: list[dict], best_epoch: int | None,
              status: str = "ok", error: str | None = None, counts: dict | None = None) -> dict[str, Any]:
    """The summary row of a trial: the best epoch's validation scores and the mean seconds per
    epoch and images/s over the epochs run."""
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    secs = [h["epoch_seconds"] for h in history]
    ips = [h["images_per_second"] for h in history]
    return {
        "trial": trial_name,
        "loss": cfg.loss,
        "backbone": cfg.backbone,
        "lr": cfg.lr,
        "loss_params": json.dumps(cfg.loss_params, sort_keys=True),
        "sampling": cfg.sampling,
        "image_size": cfg.image_size,
        "epochs": len(history),
        "epochs_planned": cfg.epochs,
        "best_epoch": best_epoch,
        "val_precision_at_1": _finite(best["val_precision_at_1"]) if best else None,
        "val_map_at_r": _finite(best["val_map_at_r"]) if best else None,
        "seconds_per_epoch": float(np.mean(secs)) if secs else None,
        "images_per_second": float(np.mean(ips)) if ips else None,
        "final_loss": _finite(history[-1]["loss"]) if history else None,
        "num_workers": cfg.num_workers,
        "status": status,
        "error": error,
        **({"train_images": counts.get("train_images"), "val_images": counts.get("val_images")} if counts else {}),
    }


def one_line(row: dict) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    return (f"[{row['trial']}] {row['status']}: {row['epochs']} epochs, "
            f"val P@1 {f(row['val_precision_at_1'], '.3f')}, mAP@R {f(row['val_map_at_r'], '.3f')} "
            f"(best epoch {row['best_epoch']}), {f(row['seconds_per_epoch'], '.1f')} s/epoch, "
            f"{f(row['images_per_second'], '.1f')} img/s")


def export_result(result, cfg: TrainConfig, trial_dir: str | os.PathLike, trial_name: str,
                  counts: dict | None = None) -> dict[str, Any]:
    """Copy the best checkpoint to ``trial_dir/best``, write history.json and result.json."""
    trial_dir = Path(trial_dir)
    best = result.get_best_checkpoint(metric=cfg.score_attribute, mode="max") if result.best_checkpoints else None
    latest = result.checkpoint
    history: list[dict] = []
    if latest is not None:
        with latest.as_directory() as d:
            if (Path(d) / HISTORY_FILE).is_file():
                history = json.loads((Path(d) / HISTORY_FILE).read_text())
    best_epoch = None
    if best is not None:
        with best.as_directory() as d:
            _copy_checkpoint_atomically(Path(d), trial_dir / BEST_DIR)
            best_epoch = json.loads((Path(d) / "model.json").read_text())["epoch"]
    atomic_write_json(trial_dir / HISTORY_FILE, history)
    collapsed = next((h for h in history if h.get("collapsed")), None)
    if collapsed is not None:
        from facerec.train.loop import COLLAPSE_SPREAD

        row = summarize(trial_name, cfg, history, best_epoch, counts=counts, status="failed",
                        error=f"collapsed: validation embeddings spread {collapsed['val_embedding_spread']:.2g} "
                              f"< {COLLAPSE_SPREAD} at epoch {collapsed['epoch']}, down from "
                              f"{collapsed.get('initial_embedding_spread', float('nan')):.2g} before training "
                              f"(every face maps to nearly one point); "
                              f"lower the learning rate or change the loss parameters")
    else:
        row = summarize(trial_name, cfg, history, best_epoch, counts=counts)
    atomic_write_json(trial_dir / "result.json", {**row, "config": cfg.to_dict(), "ray_run_path": result.path})
    return row


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, trial_name: str | None = None,
          storage_path: str | None = None, callbacks: list | None = None, data: TrainData | None = None) -> dict:
    """Validate, run one Ray Train run, export it into ``out_dir/<trial_name>``; return the summary row.

    Connects to Ray if needed (:func:`facerec.ray_utils.init_ray`: the cluster of ``RAY_ADDRESS`` /
    ``ray job submit`` when there is one, else a local one).
    """
    data = data or prepare_data(cfg)   # every check before a worker starts
    init_ray()
    trial_name = trial_name or cfg.trial_name()
    storage_path = storage_path or default_storage(out_dir)
    use_gpu = resolve_use_gpu(cfg)
    trainer = build_trainer(cfg, data, name=f"{trial_name}-{cfg.fingerprint()}", storage_path=storage_path,
                            use_gpu=use_gpu, callbacks=callbacks, trial_name=trial_name)
    result = trainer.fit()
    row = export_result(result, cfg, Path(out_dir) / trial_name, trial_name, counts=data.counts)
    print(one_line(row), flush=True)
    return row
