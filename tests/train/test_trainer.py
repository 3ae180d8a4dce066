"""Real TorchTrainer runs (Ray Train V2, 1 CPU worker) on a tiny generated crops folder:
outputs, validation metric, resume after a worker is killed, fixed-triplet sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerec.train.config import TrainConfig
from facerec.train.data import prepare_data
from facerec.train.trainer import train

pytestmark = pytest.mark.slow


def tiny_cfg(data_dir, **kw) -> TrainConfig:
    base = dict(data_dir=str(data_dir), backbone="mobilenet_v3_small", image_size=32, embedding_dim=16, epochs=2,
                p=3, k=2, steps_per_epoch=3, val_fraction=0.25, test_fraction=0.2, num_to_keep=1, max_failures=0)
    base.update(kw)
    return TrainConfig(**base)


def recomputed_val_metrics(cfg: TrainConfig, checkpoint) -> dict:
    """Precision@1 and MAP@R of the exported model on the validation split, embedded here in
    process (one batch, no Ray) and scored by the library's metric, whose own tests check it
    against pytorch-metric-learning (tests/metrics/test_leave_one_out.py). pml is no reference here:
    these tiny random-init models map every face within 1e-8 to 1e-4 of one point (history's
    ``val_embedding_spread``), so the ranking turns on float rounding, and another
    implementation's tie order or another batch split gives another figure (pml: MAP@R 0.597 vs
    0.544 on one run). For the same reason a two-worker run, whose workers embed half the split
    each, is not compared with this."""
    from facerec.data.images import read_image
    from facerec.data.transforms import test_transform
    from facerec.metrics.retrieval import leave_one_out_metrics
    from facerec.models import load_embedder

    model, _ = load_embedder(checkpoint)
    val = prepare_data(cfg).val
    tf = test_transform(cfg.image_size)
    with torch.no_grad():
        emb = model(torch.stack([tf(read_image(f"{cfg.data_dir}/{p}")) for p in val["crop_path"]])).numpy()
    return leave_one_out_metrics(emb, val["identity"].to_numpy())


def test_run_writes_best_checkpoint_history_and_correct_val_metric(ray_local, tiny_crops, tmp_path):
    from facerec.models import load_embedder

    cfg = tiny_cfg(tiny_crops, loss="arcface", epochs=3)
    row = train(cfg, tmp_path)
    trial = tmp_path / "arcface-mobilenet_v3_small"
    history = json.loads((trial / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["steps"] == 3 and h["images_per_second"] > 0 and h["epoch_seconds"] > 0 for h in history)
    # precision@1 counts hits among the validation queries: a multiple of 1/n every epoch
    n_val = len(prepare_data(cfg).val)  # every validation image is a query: 6 per identity, no singleton
    assert all(abs(h["val_precision_at_1"] * n_val - round(h["val_precision_at_1"] * n_val)) < 1e-6 for h in history)
    assert all(h["niceness"] == 0 for h in history)  # worker_niceness default (Ray's own is 15)
    # best/ is the epoch with the highest val mAP@R (first one on ties), per history
    scores = [h["val_map_at_r"] for h in history]
    best_epoch = int(np.argmax(scores)) + 1
    model, meta = load_embedder(trial / "best")
    assert meta["epoch"] == best_epoch == row["best_epoch"]
    assert meta["loss"] == "arcface" and meta["image_size"] == 32 and meta["backbone"] == "mobilenet_v3_small"
    assert meta["data_version"] == "tiny-0"
    assert row["val_map_at_r"] == pytest.approx(scores[best_epoch - 1])
    assert row["epochs"] == 3 and row["status"] == "ok"
    # Recompute the validation metric independently from the exported model and the split.
    ours = recomputed_val_metrics(cfg, trial / "best")
    assert ours["map_at_r"] == pytest.approx(meta["val_map_at_r"], abs=1e-4)
    assert ours["precision_at_1"] == pytest.approx(meta["val_precision_at_1"], abs=1e-4)


def test_killed_worker_resumes_from_last_checkpoint(ray_local, tiny_crops, tmp_path):
    # Rank 0 SIGKILLs its own process in the middle of epoch 2 of the first attempt;
    # Ray Train restarts the worker group, which must continue at epoch 2, not epoch 1.
    cfg = tiny_cfg(tiny_crops, loss="triplet", epochs=3, kill_at_epoch=2, max_failures=1, num_to_keep=2)
    row = train(cfg, tmp_path, trial_name="resume")
    history = json.loads((tmp_path / "resume" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]          # no epoch trained twice in the history
    assert [h["resumed_from_epoch"] for h in history] == [0, 1, 1]
    first_pid, second_pid = history[0]["pid"], history[1]["pid"]
    assert first_pid != second_pid == history[2]["pid"]           # a new process after the kill
    assert row["status"] == "ok" and row["epochs"] == 3
    # without retries the same kill fails the run
    with pytest.raises(Exception, match=r"(?i)worker|died|actor"):
        train(cfg.replace(max_failures=0, seed=1), tmp_path / "noretry", trial_name="noretry")


def test_fixed_triplets_sampling(ray_local, tiny_crops, tmp_path):
    cfg = tiny_cfg(tiny_crops, loss="triplet", sampling="fixed_triplets", triplet_batch=4, triplets_per_identity=2,
                   epochs=1, steps_per_epoch=None, worker_niceness=7)
    row = train(cfg, tmp_path)
    history = json.loads((tmp_path / "triplet-mobilenet_v3_small" / "history.json").read_text())
    n_ids = prepare_data(cfg).counts["train_identities"]
    # one fresh draw of 2 triplets per training identity, in full steps of 4 triplets (12 images)
    assert len(history) == 1 and history[0]["steps"] == (2 * n_ids) // 4
    assert history[0]["niceness"] == 7  # the runtime env reached the worker process
    assert row["status"] == "ok" and (tmp_path / "triplet-mobilenet_v3_small" / "best" / "model.pt").is_file()


def test_two_workers_data_parallel(ray_local, tiny_crops, tmp_path):
    # DDP over gloo with the classifier weights inside the wrapped module; identities split
    # between the workers; validation embeddings gathered from both.
    cfg = tiny_cfg(tiny_crops, loss="cosface", epochs=1, num_workers=2, p=2, k=2, steps_per_epoch=2)
    row = train(cfg, tmp_path)
    history = json.loads((tmp_path / "cosface-mobilenet_v3_small" / "history.json").read_text())
    assert history[0]["world_size"] == 2 and history[0]["steps"] == 2
    assert row["status"] == "ok" and row["epochs"] == 1
    # the score of the embeddings gathered from both workers: hits among all the split's queries
    n_val = len(prepare_data(cfg).val)
    assert abs(history[0]["val_precision_at_1"] * n_val - round(history[0]["val_precision_at_1"] * n_val)) < 1e-6
    assert row["val_map_at_r"] == pytest.approx(history[0]["val_map_at_r"])


def test_early_stopping_follows_patience(ray_local, tiny_crops, tmp_path):
    # lr ~ 0: the score barely moves, so some epoch fails to beat the best and training stops there.
    cfg = tiny_cfg(tiny_crops, loss="normface", epochs=5, patience=1, lr=1e-12, steps_per_epoch=1)
    train(cfg, tmp_path)
    history = json.loads((tmp_path / "normface-mobilenet_v3_small" / "history.json").read_text())
    scores = [h["val_map_at_r"] for h in history]
    first_bad = next((i + 1 for i in range(1, len(scores)) if scores[i] <= max(scores[:i])), None)
    expected = first_bad or 5
    assert len(history) == expected
    assert history[-1]["early_stopped"] == (expected < 5)
