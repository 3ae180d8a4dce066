"""A real Tune sweep (2 losses x 1 backbone) on a tiny crops folder: run folder layout, summary
table, plots; and the sweep refuses a bad grid before Ray starts."""

from __future__ import annotations

import csv
import json

import pytest

from facerec.errors import ConfigError
from facerec.train.config import SweepConfig, TrainConfig
from facerec.train.report import write_report
from facerec.train.sweep import resolve_concurrency, run_sweep

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def test_sweep_writes_summary_best_checkpoints_and_plots(ray_local, tiny_crops, tmp_path):
    base = TrainConfig(data_dir=str(tiny_crops), backbone="mobilenet_v3_small", image_size=32, embedding_dim=16,
                       epochs=2, p=3, k=2, steps_per_epoch=2, val_fraction=0.25, max_failures=0, num_to_keep=1)
    sweep = SweepConfig(train=base, out_dir=str(tmp_path / "run"), losses=["triplet", "cosface"],
                        backbones=["mobilenet_v3_small"])
    df = run_sweep(sweep)
    run = tmp_path / "run"
    assert list(df["trial"]) == ["cosface-mobilenet_v3_small", "triplet-mobilenet_v3_small"]
    assert (df["status"] == "ok").all() and (df["epochs"] == 2).all()
    with open(run / "sweep_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["loss"] for r in rows} == {"triplet", "cosface"}
    for r in rows:
        trial = run / r["trial"]
        history = json.loads((trial / "history.json").read_text())
        assert float(r["val_map_at_r"]) == pytest.approx(max(h["val_map_at_r"] for h in history))
        assert float(r["seconds_per_epoch"]) == pytest.approx(sum(h["epoch_seconds"] for h in history) / 2)
        assert (trial / "best" / "model.pt").is_file() and (trial / "best" / "model.json").is_file()
        assert (run / "plots" / f"{r['trial']}.png").read_bytes().startswith(PNG)
    md = (run / "sweep_summary.md").read_text()
    assert "| cosface-mobilenet_v3_small | cosface | mobilenet_v3_small |" in md
    # the report can be rebuilt from the run folder alone
    (run / "sweep_summary.csv").unlink()
    again = write_report(run)
    assert list(again["trial"]) == list(df["trial"])


def test_concurrency_from_cluster_resources(ray_local, tiny_crops):
    cfg = TrainConfig(data_dir=str(tiny_crops))
    trials = [("a", cfg), ("b", cfg), ("c", cfg)]
    assert resolve_concurrency(trials, use_gpu=False, max_concurrent=None) == 2  # 2 CPUs / 1 CPU per trial
    assert resolve_concurrency(trials, use_gpu=False, max_concurrent=5) == 3
    two = [(n, cfg.replace(cpus_per_worker=2)) for n, _ in trials]
    assert resolve_concurrency(two, use_gpu=False, max_concurrent=None) == 1


def test_bad_grid_fails_before_any_trial(tiny_crops, tmp_path):
    base = TrainConfig(data_dir=str(tiny_crops), p=50, k=2)
    sweep = SweepConfig(train=base, out_dir=str(tmp_path / "run"), losses=["triplet"], backbones=["resnet18"])
    with pytest.raises(ConfigError, match=r"p=50 is invalid: expected at most"):
        run_sweep(sweep)
    assert not (tmp_path / "run").exists()
