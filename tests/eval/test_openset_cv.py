"""Open-set (1:N) figures cross-validated by identity (facerec.eval.openset_cv), checked against
FPIR, FNIR and gallery thresholds recomputed here with a few lines of numpy, and the open-set
part of a calibration record (impostor curve, report, DET plot) built from generated distances."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from facerec.errors import ConfigError
from facerec.eval.openset_cv import cross_validated_open_set, rows


def _faces(people: int = 150, per: int = 6, dim: int = 12, spread: float = 0.55, seed: int = 0):
    """Clustered embeddings: ``people`` centres, ``per`` noisy faces each, and 3 identity folds."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    ids = np.repeat(np.arange(people), per)
    x = (centres[ids] + spread * rng.normal(size=(len(ids), dim))).astype(np.float32)
    fold = rng.permutation(people)[ids] % 3
    return x, ids, fold


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def _own_threshold(gx, gid, target):
    """The gallery's own threshold, recomputed: each face's nearest face of another person is a
    non-mated search; accept at most floor(target * n) of them, half-way to the next."""
    d = _dist(gx, gx)
    d[gid[:, None] == gid[None, :]] = np.inf
    nm = np.sort(d.min(1))
    m = math.floor(target * len(nm) + 1e-9)
    return (nm[m - 1] + nm[m]) / 2, len(nm)


def test_fpir_fnir_and_thresholds_recomputed_with_numpy():
    x, ids, fold = _faces()
    out = cross_validated_open_set(x, ids, fold, targets=(0.1, 0.01), galleries=(("all", 1.0),))
    (g,) = out["galleries"]
    assert out["faces"] == len(x) and out["identities"] == 150 and g["folds"] == 3
    # 900 faces cannot resolve 1e-2 in a gallery of 600 (fewer than 1,000 own searches): no
    # impostor curve was given, so that threshold is left undecided ("none") -- nothing measured.
    assert g["points"][1]["methods"] == [] and g["points"][1]["fpir"] is None
    for p in g["points"][:1]:
        t_target = p["fpir_target"]
        accepted = searches = missed = mated = 0
        for k, f in enumerate(range(3)):
            gal, held = fold != f, fold == f
            gx, gid = x[gal], ids[gal]
            t, n_own = _own_threshold(gx, gid, t_target)
            # 600 own searches resolve 1e-1: the gallery measures itself, from its own faces alone
            assert n_own >= 10 / t_target and p["methods"][k] == "gallery"
            assert p["threshold_folds"][k] == pytest.approx(t, abs=1e-5)
            # non-mated: each held-out face, nearest gallery face within t
            nearest = _dist(x[held], gx).min(1)
            accepted += int((nearest <= t).sum())
            searches += int(held.sum())
            # mated, leave-one-out: rank 1 among the other gallery faces must be a mate within t
            d = _dist(gx, gx)
            np.fill_diagonal(d, np.inf)
            has_mate = np.array([(gid == i).sum() > 1 for i in gid])
            r1 = d.argmin(1)
            ok = (gid[r1] == gid) & (d[np.arange(len(gid)), r1] <= t)
            missed += int((~ok & has_mate).sum())
            mated += int(has_mate.sum())
        assert p["nonmated_searches"] == searches == len(x)
        assert p["fpir"] == pytest.approx(accepted / searches)
        assert p["mated_searches"] == mated and p["fnir"] == pytest.approx(missed / mated)
        assert p["resolvable"] is (searches >= 10 / t_target)


def test_held_out_people_do_not_choose_the_threshold():
    """Moving the held-out people's faces changes the FPIR measured, never the thresholds."""
    x, ids, fold = _faces()
    a = cross_validated_open_set(x, ids, fold, targets=(0.1,), galleries=(("all", 1.0),))
    y = x.copy()
    y[fold == 0] *= 0.2  # fold 0's people squeezed together near the origin
    b = cross_validated_open_set(y, ids, fold, targets=(0.1,), galleries=(("all", 1.0),))
    pa, pb = a["galleries"][0]["points"][0], b["galleries"][0]["points"][0]
    assert pa["threshold_folds"][0] == pb["threshold_folds"][0]  # fold 0 held out: its gallery is unchanged
    assert pa["fpir_folds"][0] != pb["fpir_folds"][0]


def test_a_tenth_of_the_people_and_the_calibration_fallback():
    from facerec.gallery.openset import impostor_curve, threshold_from_impostors

    x, ids, fold = _faces(people=200, per=5)
    imp = _dist(x[:300], x[300:600])[ids[:300, None] != ids[None, 300:600]]
    curve = impostor_curve(imp)
    out = cross_validated_open_set(x, ids, fold, targets=(0.1, 0.01), impostors_of=lambda f: curve)
    all_, tenth = out["galleries"]
    assert tenth["gallery"] == "tenth" and tenth["identities"] == 20 and tenth["gallery_size"] == 100
    assert all_["gallery_size"] == pytest.approx(len(x) * 2 / 3, abs=5)
    # a gallery of 100 faces has 100 own searches: 1e-1 measured on itself, 1e-2 from the curve
    assert set(tenth["points"][0]["methods"]) == {"gallery"}
    assert set(tenth["points"][1]["methods"]) == {"calibration"}
    assert tenth["points"][1]["threshold"] == pytest.approx(threshold_from_impostors(curve, 100, 0.01)["threshold"])
    # the unlabelled rule: every threshold from the curve for N faces
    unl = cross_validated_open_set(x, ids, fold, targets=(0.1,), impostors_of=lambda f: curve, labelled=False)
    p = unl["galleries"][1]["points"][0]
    assert unl["method"] == "calibration" and set(p["methods"]) == {"calibration"}
    assert p["threshold"] == pytest.approx(threshold_from_impostors(curve, 100, 0.1)["threshold"])
    table = pd.DataFrame(rows(out))
    assert list(table["gallery"]) == ["all", "all", "tenth", "tenth"]
    assert list(table["method"]) == ["gallery", "calibration", "gallery", "calibration"]


def test_bad_inputs_are_refused():
    x, ids, fold = _faces(people=12, per=3)
    with pytest.raises(ConfigError, match=r"identities/folds=.* is invalid: expected one label and one fold per face"):
        cross_validated_open_set(x, ids[:-1], fold)
    with pytest.raises(ConfigError, match=r"folds='1 fold\(s\)' is invalid: expected at least 2 identity folds"):
        cross_validated_open_set(x, ids, np.zeros_like(fold))
    with pytest.raises(ConfigError, match=r"fpirs=0\.0 is invalid: expected a share of non-mated searches"):
        cross_validated_open_set(x, ids, fold, targets=(0.1, 0.0))
    with pytest.raises(ConfigError, match=r"galleries=\('half', 1\.5\) is invalid: expected a share of the people"):
        cross_validated_open_set(x, ids, fold, galleries=(("half", 1.5),))
    with pytest.raises(ConfigError, match=r"embeddings='shape \(0,\)' is invalid"):
        cross_validated_open_set([], [], [])


def _calibration_inputs():
    """Generated faces -> the pair distances and open-set data ``build_calibration`` takes."""
    from facerec.eval.calibration import FoldedDistances, pair_distances, pairs_within_folds

    x, ids, fold = _faces(people=120, per=5)
    g, gf, i, imf = pairs_within_folds(ids, fold)
    dist = FoldedDistances(pair_distances(x, g), gf, pair_distances(x, i), imf)
    info = {"meta": {"model_id": "abc123", "backbone": "toy", "input_kind": "haar_crop", "image_size": 64},
            "data": {"source": "crops", "name": "generated", "data_version": "v", "folds": 3,
                     "folds_identity_disjoint": True, "genuine_pairs": "g", "impostor_pairs": "i"},
            "accuracy": {"mean": 0.9, "std": 0.01, "protocol": "p"},
            "open_set_data": {"embeddings": x, "identities": ids, "folds": fold}, "command": "facerec calibrate x"}
    return dist, info


def test_calibration_record_carries_the_impostor_curve_and_the_open_set_report(tmp_path):
    from facerec.eval.calibrate import CalibrateConfig, build_calibration, markdown, open_set_line, write_reports

    dist, info = _calibration_inputs()
    cal, per_fold = build_calibration(dist, info, CalibrateConfig(default_far=0.1, fars=(0.1, 0.01)))
    # impostors: every fold's impostor distances pooled; at each rate f, the ceil(f * n)-th smallest
    imp = np.sort(dist.impostor)
    curve = cal["impostors"]
    assert curve["pairs"] == imp.size and curve["far"][0] == pytest.approx(1 / imp.size)
    for f, d in zip(curve["far"], curve["distance"]):
        assert d == pytest.approx(imp[math.ceil(f * imp.size - 1e-9) - 1], abs=1e-6)
    o = cal["open_set"]
    assert [g["gallery"] for g in o["galleries"]] == ["all", "tenth"]
    assert [p["fpir_target"] for p in o["galleries"][0]["points"]] == [0.1, 0.01, 0.001]
    assert o["galleries"][1]["identities"] == 12
    assert cal["provenance"]["command"] == "facerec calibrate x" and cal["provenance"]["facerec_version"]
    import json

    json.dumps(cal)  # the record is stored as JSON
    files = write_reports(dist, cal, per_fold, tmp_path)
    assert open(files["det_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(files["open_set_csv"])
    assert len(table) == 6 and list(table.columns[:4]) == ["gallery", "gallery_size", "identities", "fpir_target"]
    first = o["galleries"][0]["points"][0]
    assert table["fnir"].iloc[0] == pytest.approx(first["fnir"]) and table["fpir"].iloc[0] == pytest.approx(first["fpir"])
    md = markdown(cal)
    assert "## Open-set identification (1:N searches)" in md
    assert f"| all | {o['galleries'][0]['gallery_size']:,} | 80 | 0.1 |" in md
    assert "(not resolvable)" in md  # 600 held-out searches cannot resolve 1e-3
    line = open_set_line(o)
    assert line.startswith("calibrate: open set, cross-validated by identity: N=")
    assert f"FNIR {first['fnir']:.4f} at FPIR 0.1" in line


def test_open_set_targets_are_validated():
    from facerec.eval.calibrate import CalibrateConfig
    from facerec.cli.calibrate import parse_args

    with pytest.raises(ConfigError, match=r"open_set_fpirs=1\.0 is invalid: expected a share of non-mated searches"):
        CalibrateConfig(open_set_fpirs=(0.1, 1.0))
    with pytest.raises(ConfigError, match=r"open_set_fpirs=\(0\.1, 0\.1\) is invalid: expected one or more distinct"):
        CalibrateConfig(open_set_fpirs=(0.1, 0.1))
    with pytest.raises(ConfigError, match=r"open_set_fpirs='0\.1' is invalid: expected a list of FPIR targets"):
        CalibrateConfig(open_set_fpirs="0.1")
    args = parse_args(["--model", "m", "--lfw", "x", "--open-set-fpirs", "0.05,0.005"])
    assert args.open_set_fpirs == [0.05, 0.005]
