"""The study's tables on a tiny crops folder: layout, and every figure recomputed here
independently (in-process embeddings, brute-force neighbours, explicit loops)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facerec.errors import ArtifactMismatchError, ConfigError, DataNotFoundError
from facerec.eval.tables import TablesConfig, best_checkpoints, evaluate_tables

KS = [2, 5, 20]  # 20 is clipped to the 12-image gallery


@pytest.fixture(scope="module")
def result(ray_local, tiny_crops, tiny_checkpoint, tmp_path_factory):
    cfg = TablesConfig(crops_dir=str(tiny_crops), out_dir=str(tmp_path_factory.mktemp("results")),
                       backbones=["resnet18"], checkpoints={"resnet18": str(tiny_checkpoint)}, ks=KS,
                       timing_queries=2, batch_size=16, num_actors=1)
    return evaluate_tables(cfg), cfg


@pytest.mark.slow
def test_layout_of_both_tables(result):
    res, cfg = result
    long, summary = res["long"], res["summary"]
    assert list(summary["table"]) == ["3.1", "3.2"]
    assert summary.loc[0, "init"] in ("imagenet", "random") and summary.loc[0, "weights"] == summary.loc[0, "init"]
    assert summary.loc[1, "weights"] == "trial resnet18-test"
    for stage in ("before", "after"):
        part = long[long["stage"] == stage]
        assert list(part["k_requested"]) == [2, 5, 20, "mean"]
        assert list(part["k"]) == [2, 5, 12, "mean"]
        for col in ("attribute_accuracy_pct", "mean_attribute_distance", "query_time_s",
                    "random_attribute_accuracy_pct", "random_mean_attribute_distance"):
            assert part[col].iloc[3] == pytest.approx(part[col].iloc[:3].mean())
        assert (part["query_time_s"] > 0).all()
    out = cfg.out_dir
    for name in ("results.md", "tables.csv", "table_3_1.csv", "table_3_2.csv", "summary.csv", "results.json"):
        assert (res["files"][name]).startswith(out)
    for grid in summary["grid"]:
        assert (Path(out) / grid).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", grid
    md = open(res["files"]["results.md"]).read()
    assert "Table 3.1" in md and "Table 3.2" in md and "random attr. acc. %" in md and "| 20 (12) |" in md
    assert pd.read_csv(res["files"]["table_3_2.csv"]).shape[0] == 4
    assert json.load(open(res["files"]["results.json"]))["protocol"]["gallery"] == 12


@pytest.mark.slow
def test_split_is_the_trainings_and_identity_disjoint(result, tiny_crops, helpers):
    from facerec.data.schema import load_crops
    from facerec.data.splits import assign_splits

    res, _ = result
    df = assign_splits(load_crops(tiny_crops)[0], **helpers.SPLIT)
    test_ids = set(df.loc[df["split"] == "test", "identity"])
    q, g = res["query"], res["gallery"]
    assert set(q["identity"]) == test_ids and set(g["identity"]) == test_ids
    assert len(q) == 4 and len(g) == 12 and q["identity"].is_unique
    assert not set(q["image_id"]) & set(g["image_id"])


@pytest.mark.slow
def test_figures_match_an_independent_computation(result, tiny_crops, tiny_checkpoint, helpers):
    res, _ = result
    q, g = res["query"], res["gallery"]
    qe = helpers.reference_embeddings(tiny_checkpoint, [tiny_crops / p for p in q["crop_path"]])
    ge = helpers.reference_embeddings(tiny_checkpoint, [tiny_crops / p for p in g["crop_path"]])
    got = res["retrieval"][("after", "resnet18")]
    np.testing.assert_allclose(got["query_embeddings"], qe, atol=1e-5)
    np.testing.assert_allclose(got["gallery_embeddings"], ge, atol=1e-5)
    d = np.sqrt(((qe[:, None, :] - ge[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    np.testing.assert_allclose(got["distances"], np.take_along_axis(d, order, 1), atol=1e-4)

    from facerec.data.schema import ATTRIBUTE_NAMES

    qa = q[list(ATTRIBUTE_NAMES)].to_numpy()
    ga = g[list(ATTRIBUTE_NAMES)].to_numpy()
    rows = res["long"][res["long"]["stage"] == "after"].set_index("k_requested")
    for k in (2, 5, 12):
        agree = [np.mean(qa[i] == ga[order[i, j]]) for i in range(len(q)) for j in range(k)]
        label = 20 if k == 12 else k
        assert rows.loc[label, "attribute_accuracy_pct"] == pytest.approx(100 * np.mean(agree), abs=1e-9)
        assert rows.loc[label, "mean_attribute_distance"] == pytest.approx(40 * (1 - np.mean(agree)), abs=1e-9)
    # Whole gallery (k = 12): the model's and the random ranking's figures are both the mean
    # agreement over every query-gallery pair, whatever the order.
    all_pairs = 100 * (qa[:, None, :] == ga[None, :, :]).mean()
    assert rows.loc[20, "random_attribute_accuracy_pct"] == pytest.approx(all_pairs)
    assert rows.loc[20, "attribute_accuracy_pct"] == pytest.approx(all_pairs)

    qi, gi = q["identity"].to_numpy(), g["identity"].to_numpy()
    p1 = np.mean([gi[order[i, 0]] == qi[i] for i in range(len(q))])
    aps = []
    for i in range(len(q)):
        R = int((gi == qi[i]).sum())
        hits, s = 0, 0.0
        for j in range(R):
            if gi[order[i, j]] == qi[i]:
                hits += 1
                s += hits / (j + 1)
        aps.append(s / R)
    s = res["summary"].set_index("stage").loc["after"]
    assert s["precision_at_1"] == pytest.approx(p1)
    assert s["map_at_r"] == pytest.approx(np.mean(aps))
    assert 0 < s["gallery_embed_s"] < s["embed_wall_s"]


@pytest.mark.slow
def test_evaluate_command_gives_the_library_figures(result, tiny_crops, tiny_checkpoint, tmp_path, capsys):
    """``facerec evaluate`` (what ``pipelines/evaluate.py`` runs) on the same crops and checkpoint:
    exit 0, the results it prints are the results.md it wrote, and its Table 3.2 figures are
    those of the library call above (checked independently in the previous test)."""
    from facerec.cli import main

    out = tmp_path / "cli"
    code = main(["evaluate", "--crops", str(tiny_crops), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--ks", ",".join(map(str, KS)), "--no-before", "--batch-size", "16", "--num-actors", "1"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith((out / "results.md").read_text().strip())
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["stage"]) == ["after"]  # --no-before: Table 3.2 only
    want = result[0]["summary"].set_index("stage").loc["after"]
    assert summary.loc[0, "precision_at_1"] == pytest.approx(want["precision_at_1"])
    assert summary.loc[0, "map_at_r"] == pytest.approx(want["map_at_r"])
    long = pd.read_csv(out / "tables.csv")
    ref = result[0]["long"]
    ref = ref[ref["stage"] == "after"]
    np.testing.assert_allclose(long["attribute_accuracy_pct"], ref["attribute_accuracy_pct"].astype(float))


def test_best_checkpoint_per_backbone(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    for trial, score in (("a", 0.3), ("b", 0.6), ("c", 0.9)):
        shutil.copytree(tiny_checkpoint, run / trial / "best")
        meta = json.loads((run / trial / "best" / "model.json").read_text())
        meta["val_map_at_r"] = score
        (run / trial / "best" / "model.json").write_text(json.dumps(meta))
    # From model.json alone: c wins.
    assert best_checkpoints(run) == {"resnet18": str(run / "c" / "best")}
    # The summary says c failed: b wins.
    pd.DataFrame({"trial": ["a", "b", "c"], "backbone": "resnet18", "val_map_at_r": [0.3, 0.6, 0.9],
                  "status": ["ok", "ok", "error"]}).to_csv(run / "sweep_summary.csv", index=False)
    assert best_checkpoints(run, ["resnet18"]) == {"resnet18": str(run / "b" / "best")}
    with pytest.raises(DataNotFoundError, match=r"no finished trial .* for backbone\(s\) \['mobilenet_v2'\]"):
        best_checkpoints(run, ["resnet18", "mobilenet_v2"])
    with pytest.raises(DataNotFoundError, match="run folder .* not found"):
        best_checkpoints(tmp_path / "nope")


def test_checkpoint_of_other_crops_is_refused(tiny_crops, tiny_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    meta = json.loads((other / "model.json").read_text())
    meta["data_version"] = "another-version"
    (other / "model.json").write_text(json.dumps(meta))
    cfg = TablesConfig(crops_dir=str(tiny_crops), out_dir=str(tmp_path / "r"), backbones=["resnet18"],
                       checkpoints={"resnet18": str(other)})
    with pytest.raises(ArtifactMismatchError, match="data_version another-version but the crops folder has data_version"):
        evaluate_tables(cfg)


def test_config_is_validated(tiny_crops, tmp_path):
    base = {"crops_dir": str(tiny_crops), "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="backbones=\\[\\]"):
        TablesConfig(backbones=[], **base)
    with pytest.raises(ConfigError, match="backbone"):
        TablesConfig(backbones=["vgg99"], **base)
    with pytest.raises(ConfigError, match="checkpoints=\\['resnet50'\\]"):
        TablesConfig(backbones=["resnet18"], checkpoints={"resnet50": "x"}, **base)
    with pytest.raises(ConfigError, match="ks=\\[0\\]"):
        TablesConfig(backbones=["resnet18"], ks=[0], **base)
    with pytest.raises(ConfigError, match="index kind"):
        TablesConfig(backbones=["resnet18"], index_kind="faiss", **base)
    with pytest.raises(DataNotFoundError, match="LFW folder"):
        TablesConfig(backbones=["resnet18"], lfw_root=str(tmp_path / "nolfw"), **base)


def test_fine_tuning_verdict_says_when_it_made_things_worse():
    import pandas as pd

    from facerec.eval.tables import fine_tuning_verdicts

    summary = pd.DataFrame([
        {"backbone": "dlib_resnet", "stage": "before", "weights": "dlib", "map_at_r": 0.80, "precision_at_1": 0.95},
        {"backbone": "dlib_resnet", "stage": "after", "weights": "trial triplet-dlib_resnet", "map_at_r": 0.78,
         "precision_at_1": 0.96},
        {"backbone": "resnet18", "stage": "before", "weights": "random", "map_at_r": 0.02, "precision_at_1": 0.1},
        {"backbone": "resnet18", "stage": "after", "weights": "trial x", "map_at_r": 0.05, "precision_at_1": 0.2},
        {"backbone": "mobilenet_v2", "stage": "before", "weights": "random", "map_at_r": 0.01, "precision_at_1": 0.1},
        {"backbone": "resnet50", "stage": "before", "weights": "random", "map_at_r": 0.9940, "precision_at_1": 1.0},
        {"backbone": "resnet50", "stage": "after", "weights": "trial y", "map_at_r": 0.9938, "precision_at_1": 1.0},
    ])
    v = fine_tuning_verdicts(summary)
    assert v == [
        "dlib_resnet: fine-tuning (trial triplet-dlib_resnet) made it WORSE on the test split's MAP@R: "
        "MAP@R 0.8 -> 0.78; precision@1 0.95 -> 0.96.",
        "resnet18: fine-tuning (trial x) improved on the test split's MAP@R: MAP@R 0.02 -> 0.05; precision@1 0.1 -> 0.2.",
        "resnet50: fine-tuning (trial y) left it unchanged on the test split's MAP@R: MAP@R 0.994 -> 0.9938; "
        "precision@1 1 -> 1.",
    ]
