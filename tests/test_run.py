"""``facerec run`` chains library calls with config objects: every stage's config is built and
validated before the first stage starts, so a bad setting of the last stage is refused, with its
field named, before anything is cropped, trained or written."""

from __future__ import annotations

import re

import pytest

from facerec.errors import ConfigError, DataNotFoundError
from facerec.run import PENDING, plan_run

BAD = [
    ("preprocess", {"preprocess": {"margin": 5.0}}, r"margin=5\.0 is invalid: expected a fraction in \[0, 2\]"),
    ("train", {"train": {"epochs": 0}}, r"epochs=0 is invalid"),
    ("train field", {"train": {"epoch": 3}}, r"train settings=\['epoch'\] is invalid: expected fields of TrainConfig"),
    ("train data_dir", {"train": {"data_dir": "/elsewhere"}},
     r"train settings=\['data_dir'\] is invalid: expected fields other than data_dir"),
    ("gallery", {"gallery": {"kinds": ["kdtree", "nosuch"]}}, r"index kind='nosuch' is invalid"),
    ("evaluate", {"tables": {"ks": [10, 0]}}, r"ks=\[10, 0\] is invalid: expected a non-empty list of integers >= 1"),
    ("input kind", {"preprocess": {"input_kind": "haar_crop"}},
     r"preprocess.input_kind='haar_crop' is invalid: expected aligned_chip_5pt"),
]


@pytest.mark.parametrize("overrides,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_setting_of_any_stage_is_refused_before_the_first_stage(overrides, message, tmp_path):
    import ray

    work = tmp_path / "work"
    with pytest.raises(ConfigError, match=message):
        plan_run(work, preset="face-smoke", **overrides)
    assert not work.exists()  # nothing preprocessed, trained or written
    assert not ray.is_initialized()


def test_the_plan_holds_each_stages_config(tmp_path):
    from facerec.data.preprocess import PreprocessConfig
    from facerec.eval.tables import TablesConfig
    from facerec.gallery.build_index import BuildIndexConfig
    from facerec.train.config import SweepConfig

    plan = plan_run(tmp_path / "w", preset="face-smoke", tables={"ks": [5, 10]})
    assert isinstance(plan.preprocess, PreprocessConfig) and plan.preprocess.input_kind == "aligned_chip_5pt"
    assert isinstance(plan.sweep, SweepConfig) and plan.sweep.backbones == ["dlib_resnet"]
    assert plan.sweep.train.data_dir == str(tmp_path / "w" / "crops")
    assert isinstance(plan.gallery, BuildIndexConfig) and plan.gallery.split == "test"
    assert plan.gallery.kinds == ["kdtree", "exact"] and plan.gallery.checkpoints == {"dlib_resnet": PENDING}
    assert isinstance(plan.tables, TablesConfig) and plan.tables.ks == [5, 10]
    assert plan.tables.out_dir == str(tmp_path / "w" / "results")


def test_a_missing_photo_folder_is_named(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"--data .*nothere: no such folder"):
        plan_run(tmp_path / "w", data=str(tmp_path / "nothere"))


@pytest.mark.slow
def test_the_whole_chain_on_generated_photos(tmp_path, monkeypatch, capsys):
    """preprocess -> one-trial sweep -> gallery -> tables, each a library call with its config."""
    import json

    import pandas as pd

    from facerec.data.synth import generate_synthetic
    from facerec.run import run_plan

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    photos = generate_synthetic(tmp_path / "photos", 8, 5, seed=1, progress=False)
    plan = plan_run(tmp_path / "w", data=str(photos), preset="smoke",
                    preprocess={"several_faces": "largest"}, sweep={"losses": ["triplet"]},
                    train={"epochs": 1, "steps_per_epoch": 2, "image_size": 32, "embedding_dim": 16, "p": 3, "k": 2,
                           "val_max_images": 40, "num_workers": 1, "cpus_per_worker": 1},
                    tables={"ks": [5], "timing_queries": 5}, gallery={"kinds": ["exact"]})
    import ray

    started = not ray.is_initialized()
    try:
        out = run_plan(plan)
    finally:
        if started:  # the chain starts a local Ray in this process: later modules start their own
            ray.shutdown()
    printed = capsys.readouterr().out
    for stage in ("preprocess", "train-sweep", "build-index", "evaluate"):
        assert printed.count(f"\n== {stage}: ") + printed.startswith(f"== {stage}: ") == 1, printed
    last = printed.strip().splitlines()[-1]
    assert re.match(r"facerec run: finished in \d+ s \(preprocess \d+ s, train-sweep \d+ s, build-index \d+ s, "
                    r"evaluate \d+ s\)", last), last
    assert "$ facerec" not in printed  # no argv round trip
    summary = json.loads((tmp_path / "w" / "crops" / "summary.json").read_text())
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["listed"] == 40
    assert out["trials"] == 1 and (out["run"] / "sweep_summary.csv").is_file()
    manifest = json.loads((out["gallery"] / "gallery.json").read_text())
    assert set(manifest["models"]) == {"mobilenet_v3_small"}
    tables = pd.read_csv(out["results"] / "tables.csv")
    assert set(tables["table"].astype(str)) >= {"3.1", "3.2"}
