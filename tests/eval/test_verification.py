"""LFW pairs parsing and the k-fold verification protocol, against hand-worked cases and the
real sample pairs.txt."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import AnnotationError, ConfigError, DataNotFoundError
from facerec.eval.verification import best_threshold, kfold_verification_accuracy, read_pairs

PAIRS = "2\t2\nAnn\t1\t2\nBob\t3\t10\nAnn\t1\tBob\t2\nCid\t4\tDee\t1\nEve\t1\t2\nEve\t2\t3\nFay\t1\tGus\t12\nAnn\t2\tCid\t1\n"


def write(tmp_path, text, newline="\n"):
    p = tmp_path / "pairs.txt"
    p.write_bytes(text.replace("\n", newline).encode())
    return p


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_pairs_two_folds(tmp_path, newline):
    df = read_pairs(write(tmp_path, PAIRS, newline))
    assert list(df.columns) == ["path1", "path2", "same", "fold"]
    assert len(df) == 8
    assert df["fold"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert df["same"].tolist() == [True, True, False, False, True, True, False, False]
    assert df.loc[1, "path1"] == "lfw-deepfunneled/Bob/Bob_0003.jpg"
    assert df.loc[1, "path2"] == "lfw-deepfunneled/Bob/Bob_0010.jpg"
    assert df.loc[3, "path1"] == "lfw-deepfunneled/Cid/Cid_0004.jpg"
    assert df.loc[3, "path2"] == "lfw-deepfunneled/Dee/Dee_0001.jpg"
    assert df.loc[6, "path2"] == "lfw-deepfunneled/Gus/Gus_0012.jpg"


def test_read_pairs_single_number_header_is_one_fold(tmp_path):
    df = read_pairs(write(tmp_path, "1\nAnn\t1\t2\nAnn\t1\tBob\t1\n\n\n"))
    assert df["fold"].tolist() == [0, 0] and df["same"].tolist() == [True, False]


@pytest.mark.parametrize(
    "text, line, msg",
    [
        (PAIRS.replace("Bob\t3\t10", "Bob\t3"), 3, r"expected a matched pair 'Name<TAB>i<TAB>j' \(fold 1\), got 'Bob\\t3'"),
        (PAIRS.replace("Cid\t4\tDee\t1", "Cid\t4\t1"), 5, r"expected a mismatched pair"),
        (PAIRS.replace("Eve\t2\t3", "Eve\tx\t3"), 7, r"image number 'x' is not an integer"),
        (PAIRS.replace("Eve\t2\t3", "Eve\t0\t3"), 7, r"image number 0 must be >= 1"),
        ("2\tz\n", 1, r"pairs per fold 'z' is not an integer"),
        (PAIRS + "Extra\t1\t2\n", 10, r"header says 2 folds x 4 pairs = 8 pair lines, the file has 9"),
        ("\n".join(PAIRS.split("\n")[:-3]) + "\n", 8, r"header says 2 folds x 4 pairs = 8 pair lines, the file has 6"),
    ],
)
def test_read_pairs_malformed_line(tmp_path, text, line, msg):
    path = write(tmp_path, text, "\r\n")
    with pytest.raises(AnnotationError, match=rf"pairs\.txt, line {line}: {msg}") as e:
        read_pairs(path)
    assert e.value.line == line


def test_read_pairs_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"pairs file .*nope\.txt not found"):
        read_pairs(tmp_path / "nope.txt")


@pytest.mark.shared
def test_read_pairs_real_sample(lfw_sample):
    path = lfw_sample / "pairs.txt"
    df = read_pairs(path)
    assert len(df) == 1800
    counts = df.groupby("fold")["same"].agg(["sum", "count"])
    assert counts["count"].tolist() == [600, 600, 600]
    assert counts["sum"].tolist() == [300, 300, 300]
    # Within a fold the first 300 are matched, the next 300 mismatched.
    assert df["same"].iloc[:300].all() and not df["same"].iloc[300:600].any()
    first = path.read_text().splitlines()[1].split("\t")
    assert df.loc[0, "path1"] == f"lfw-deepfunneled/{first[0]}/{first[0]}_{int(first[1]):04d}.jpg"
    assert df.loc[0, "path2"] == f"lfw-deepfunneled/{first[0]}/{first[0]}_{int(first[2]):04d}.jpg"
    # The paths name images that exist in the sample.
    root = lfw_sample
    for p in df["path1"].iloc[::97].tolist() + df["path2"].iloc[::89].tolist():
        assert (root / p).is_file(), p


def test_best_threshold_hand_computed():
    # scores  0.1 0.2 0.3 0.4 0.5 0.6 ; same F F T F T T
    # cut after 2 lowest (t=0.25): F,F correct + T,F,T,T -> 3 of 4 same correct -> 5/6
    # cut after 4 lowest (t=0.45): F,F,T,F -> 3 diff correct + T,T -> 5/6 too; the smaller t wins.
    s = np.array([0.3, 0.1, 0.6, 0.2, 0.5, 0.4])
    y = np.array([True, False, True, False, True, False])
    t, acc = best_threshold(s, y)
    assert t == pytest.approx(0.25) and acc == pytest.approx(5 / 6)


def test_best_threshold_never_cuts_between_ties():
    # Equal scores with different labels: t must not split them.
    t, acc = best_threshold(np.array([0.5, 0.5, 0.9]), np.array([False, True, True]))
    assert t in (-np.inf, pytest.approx(0.7))
    assert acc == pytest.approx(2 / 3)


def test_kfold_hand_computed():
    # Fold 0: scores [0.9 T, 0.2 F, 0.6 F]; fold 1: [0.8 T, 0.3 F, 0.5 T]; fold 2: [0.7 T, 0.4 F, 0.1 F].
    scores = np.array([0.9, 0.2, 0.6, 0.8, 0.3, 0.5, 0.7, 0.4, 0.1])
    same = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mean, std, per = kfold_verification_accuracy(scores, same, folds)
    # Test fold 0: train = folds 1,2 sorted 0.1F 0.3F 0.4F 0.5T 0.7T 0.8T -> t = 0.45 (6/6).
    #   fold 0 at 0.45: 0.9T ok, 0.2F ok, 0.6F wrong -> 2/3.
    # Test fold 1: train = 0.1F 0.2F 0.4F 0.6F 0.7T 0.9T -> t = 0.65 (6/6).
    #   fold 1: 0.8T ok, 0.3F ok, 0.5T wrong -> 2/3.
    # Test fold 2: train = 0.2F 0.3F 0.5T 0.6F 0.8T 0.9T -> cuts 0.25 (5/6, 0.2F ok; 0.3F wrong...)
    #   cut after 2 (t=0.4): F,F ok + T,F,T,T -> 5/6; cut after 4 (t=0.7): F,F,T,F -> 3 + T,T -> 5/6.
    #   The smaller, t = 0.4, is taken. fold 2: 0.7T ok, 0.4F ok (0.4 > 0.4 is False), 0.1F ok -> 3/3.
    np.testing.assert_allclose(per["threshold"], [0.45, 0.65, 0.4])
    np.testing.assert_allclose(per["accuracy"], [2 / 3, 2 / 3, 1.0])
    assert per["n_pairs"].tolist() == [3, 3, 3]
    assert mean == pytest.approx(7 / 9)
    assert std == pytest.approx(np.std([2 / 3, 2 / 3, 1.0], ddof=1))


def test_kfold_with_distances():
    # Same data as distances (higher = different): identical accuracies, thresholds negated.
    scores = np.array([0.9, 0.2, 0.6, 0.8, 0.3, 0.5, 0.7, 0.4, 0.1])
    same = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    m1, _, p1 = kfold_verification_accuracy(scores, same, folds)
    m2, _, p2 = kfold_verification_accuracy(-scores, same, folds, higher_is_same=False)
    assert m1 == pytest.approx(m2)
    np.testing.assert_allclose(p2["threshold"], -p1["threshold"])


def test_kfold_perfectly_separable_is_one():
    rng = np.random.default_rng(0)
    same = rng.random(600) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    mean, std, _ = kfold_verification_accuracy(scores, same, np.repeat(np.arange(10), 60))
    assert mean == 1.0 and std == 0.0


def test_kfold_input_errors():
    with pytest.raises(ConfigError, match=r"folds='1 distinct fold\(s\)'.*at least 2 folds"):
        kfold_verification_accuracy([0.1, 0.2], [True, False], [0, 0])
    with pytest.raises(ConfigError, match=r"scores='NaN/inf at pair 1'"):
        kfold_verification_accuracy([0.1, np.nan], [True, False], [0, 1])
    with pytest.raises(ConfigError, match=r"same/folds="):
        kfold_verification_accuracy([0.1, 0.2], [True], [0, 1])
    with pytest.raises(ConfigError, match=r"same=.*booleans"):
        kfold_verification_accuracy([0.1, 0.2], [2, 0], [0, 1])
