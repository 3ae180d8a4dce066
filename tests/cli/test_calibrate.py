"""``facerec calibrate`` end to end on synthetic faces (facerec.data.synth -> preprocess -> a small
checkpoint), its stored result checked against thresholds recomputed here, the reader the server
uses, and on a part of the real LFW sample."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from facerec.errors import ArtifactMismatchError, ConfigError
from facerec.cli.calibrate import main
from facerec.models.calibration import read_calibration, threshold_for
from facerec.serve.verification import startup_line

SPLIT = {"mode": "random", "val_fraction": 0.3, "test_fraction": 0.2, "seed": 0}


@pytest.fixture(scope="module")
def synthetic_setup(tmp_path_factory, helpers):
    """Synthetic photos (30 people x 6) -> Haar crops -> an untrained resnet18 (batch norms
    re-estimated) whose recorded split puts 30 % of the people in validation."""
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.data.synth import generate_synthetic
    from facerec.io import read_parquet_metadata

    base = tmp_path_factory.mktemp("calib")
    photos = generate_synthetic(base / "photos", n_identities=30, images_per_identity=6, seed=2, progress=False)
    crops = base / "crops"
    preprocess(photos, crops, PreprocessConfig(engine="local"), progress=False)
    version = read_parquet_metadata(crops / "crops.parquet")["data_version"]
    ckpt = base / "ckpt"
    helpers.make_checkpoint(ckpt, crops, data_version=version, split=SPLIT)
    return {"crops": crops, "ckpt": ckpt}


def _val_embeddings(setup, helpers):
    from facerec.data.splits import assign_splits

    df = assign_splits(pd.read_parquet(setup["crops"] / "crops.parquet"), **SPLIT)
    val = df[df["split"] == "val"].reset_index(drop=True)
    emb = helpers.reference_embeddings(setup["ckpt"], [setup["crops"] / p for p in val["crop_path"]])
    return val, emb


@pytest.mark.slow
def test_calibrate_crops_stores_thresholds_recomputed_here(ray_local, synthetic_setup, helpers, tmp_path, capsys):
    crops, ckpt = synthetic_setup["crops"], synthetic_setup["ckpt"]
    args = ["--model", str(ckpt), "--crops", str(crops), "--folds", "2"]
    # The default FAR 1e-3 cannot be resolved on a few hundred impostor pairs: refused, nothing stored.
    assert main(args + ["--out", str(tmp_path / "first")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("facerec calibrate: error: default_far=0.001 is invalid")
    assert "not resolvable with" in err and "pass --default-far one of [0.1]" in err
    assert read_calibration(ckpt) is None
    assert (tmp_path / "first" / "roc.png").is_file()  # the reports of what was measured are kept

    assert main(args + ["--default-far", "0.1", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    cal = read_calibration(ckpt)
    assert cal is not None and cal["data"]["source"] == "crops" and cal["data"]["split"] == SPLIT
    assert cal["input_kind"] == "haar_crop" and cal["default_far"] == 0.1

    # Recompute: the validation split embedded in this process, every pair inside an identity fold.
    from facerec.eval.calibration import identity_folds

    val, emb = _val_embeddings(synthetic_setup, helpers)
    fold = identity_folds(val["identity"].to_numpy(), 2, seed=0)
    genuine, impostor = [], []
    for a, b in combinations(range(len(val)), 2):
        if fold[a] == fold[b]:
            d = float(np.linalg.norm(emb[a].astype(np.float64) - emb[b]))
            (genuine if val["identity"][a] == val["identity"][b] else impostor).append(d)
    impostor = np.sort(impostor)
    assert cal["pairs"]["genuine"] == len(genuine) and cal["pairs"]["impostor"] == len(impostor)
    # The impostor curve a gallery's fallback reads: every fold's impostor pairs, from one pair up.
    assert cal["impostors"]["pairs"] == len(impostor) and cal["impostors"]["far"][0] == pytest.approx(1 / len(impostor))
    assert cal["impostors"]["distance"][0] == pytest.approx(impostor[0], abs=1e-5)
    # The open-set report: the validation people in 2 identity folds, each searching the other's gallery.
    o = cal["open_set"]
    assert [g["gallery"] for g in o["galleries"]] == ["all", "tenth"] and o["faces"] == len(val)
    assert all(p["nonmated_searches"] == len(val) for g in o["galleries"] for p in g["points"])
    assert "calibrate: open set, cross-validated by identity: N=" in printed
    assert "## Open-set identification (1:N searches)" in printed  # the Markdown the CLI prints
    far, t = threshold_for(cal)
    assert far == 0.1
    allowed = int(0.1 * len(impostor))
    # At most the impostors FAR 0.1 allows are accepted, and the next one would be one too many
    # (Ray's batches and this process's single images differ in float32 rounding: 1e-5 of slack).
    assert np.sum(impostor <= t - 1e-5) <= allowed
    assert np.sum(impostor <= impostor[impostor > t + 1e-5].min() + 1e-5) > allowed
    points = {p["far"]: p for p in cal["operating_points"]}
    assert not points[0.001]["resolvable"] and "not resolvable with" in points[0.001]["note"]
    with pytest.raises(ConfigError, match=r"far=0\.001 is invalid: expected one of the calibrated false accept rates \[0\.1\]"):
        threshold_for(cal, 0.001)

    # Reports beside the checkpoint and in --out; the held-out figures are the per-fold table's.
    for folder in (ckpt / "calibration", tmp_path / "out"):
        assert (folder / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(pd.read_csv(folder / "open_set.csv")) == 6
        md = (folder / "calibration.md").read_text()
        assert "not resolvable with" in md and "| FAR = 0.1 |" in md
        table = pd.read_csv(folder / "calibration.csv")
        assert list(table["point"]) == ["FAR=0.1", "FAR=0.01", "FAR=0.001", "EER"]
    folds = pd.read_csv(tmp_path / "out" / "calibration_folds.csv")
    rows = folds[(folds["point"] == "far") & (folds["far"] == 0.1)]
    assert points[0.1]["tar_mean"] == pytest.approx(rows["tar"].mean())
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["model_id"] == cal["model_id"]


def test_crops_of_another_input_kind_are_refused_before_ray(synthetic_setup, capsys):
    assert main(["--model", "dlib_resnet", "--crops", str(synthetic_setup["crops"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("facerec calibrate: error: --crops ")
    assert "holds haar_crop inputs" in err and "needs aligned_chip_5pt inputs of 150 px" in err


def test_stale_calibration_is_refused_by_the_reader(tmp_path, synthetic_setup):
    import shutil

    from facerec.models.metadata import read_checkpoint_metadata
    from facerec.models.pretrained import record_measurement

    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic_setup["ckpt"], ckpt)
    (ckpt / "measured.json").unlink(missing_ok=True)
    assert read_calibration(ckpt) is None
    assert startup_line("m", str(ckpt)).startswith("serve: m is not calibrated: /v1/verify answers 409")
    meta = read_checkpoint_metadata(ckpt)
    good = {"model_id": meta["model_id"], "input_kind": "haar_crop", "default_far": 0.1,
            "operating_points": [{"far": 0.1, "resolvable": True, "threshold": 0.5, "tar_mean": 0.75}],
            "data": {"name": "x", "source": "crops"}}
    record_measurement(ckpt, "calibration", good)
    assert threshold_for(read_calibration(ckpt)) == (0.1, 0.5)
    assert startup_line("m", str(ckpt)).startswith("serve: m says same person iff distance <= 0.5000 (FAR 0.1; "
                                                   "held-out TAR 0.750; calibrated on x (crops)")
    record_measurement(ckpt, "calibration", dict(good, model_id="0123abcd"))
    with pytest.raises(ArtifactMismatchError, match=r"measured on model_id 0123abcd but the checkpoint is"):
        startup_line("m", str(ckpt))  # the server refuses to start on it
    record_measurement(ckpt, "calibration", dict(good, input_kind="aligned_chip_5pt"))
    with pytest.raises(ArtifactMismatchError, match=r"measured on aligned_chip_5pt inputs but the model takes haar_crop"):
        read_calibration(ckpt)


@pytest.mark.slow
@pytest.mark.shared
def test_calibrate_on_part_of_the_real_lfw_sample(ray_local, lfw_sample, tmp_path):
    """dlib_resnet on 40 + 40 pairs per fold of lfw-sample: impostors are every pair of different
    people inside a fold; the folds share no person."""
    from facerec.eval.calibrate import CalibrateConfig, calibrate
    from facerec.eval.verification import read_pairs

    lines = (lfw_sample / "pairs.txt").read_text().splitlines()
    body = lines[1:]
    keep = [ln for f in range(3) for ln in body[f * 600: f * 600 + 40] + body[f * 600 + 300: f * 600 + 340]]
    (tmp_path / "pairs.txt").write_text("3\t40\n" + "\n".join(keep) + "\n")
    pairs = read_pairs(tmp_path / "pairs.txt")
    res = calibrate("dlib_resnet", "lfw", lfw_sample, CalibrateConfig(default_far=0.1), out_dir=tmp_path / "out",
                    store=False, pairs_path=tmp_path / "pairs.txt", crop_dir=tmp_path / "crops")
    cal = res["calibration"]
    expected = 0
    for _, sub in pairs.groupby("fold"):
        images = sorted(set(sub["path1"]) | set(sub["path2"]))
        person = [p.split("/")[1] for p in images]
        expected += sum(person[a] != person[b] for a, b in combinations(range(len(images)), 2))
    assert cal["pairs"]["genuine"] == 120 and cal["pairs"]["impostor"] == expected
    assert cal["data"]["folds_identity_disjoint"] is True and cal["data"]["impostor_official"] == 120
    points = {p["far"]: p for p in cal["operating_points"]}
    smallest = min(v["impostor"] for v in cal["pairs"]["per_fold"].values())
    assert smallest < 10_000 and not points[0.001]["resolvable"]
    assert points[0.001]["note"].startswith(f"not resolvable with {smallest} impostor pairs")
    # dlib's descriptors separate LFW people well (98 % accuracy on the full sample): at FAR 1 %,
    # most genuine pairs of held-out people are accepted.
    assert points[0.01]["resolvable"] and points[0.01]["tar_mean"] > 0.8
    assert 0 < cal["eer"]["mean"] < 0.1
    assert (tmp_path / "out" / "roc.png").is_file()
