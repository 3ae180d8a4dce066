"""LFW verification end to end: a constructed folder whose answer is known (identical
images in matched pairs, no face anywhere), and a few pairs of the real LFW sample."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.errors import DataNotFoundError
from facerec.eval.lfw import CENTRE_BOX_FRACTION, LFWCropConfig, centre_box, choose_box, lfw_verification


def test_box_choice_for_deep_funneled_images():
    # One face: its box as is.
    assert choose_box(np.array([[10, 20, 30, 30]]), 250, 250) == (0, "face")
    # Two faces: centres (25, 35) and (125, 125); the second is at the image centre.
    assert choose_box(np.array([[10, 20, 30, 30], [100, 100, 50, 50]]), 250, 250) == (1, "nearest_centre")
    # None: the centre fallback.
    assert choose_box(np.zeros((0, 4)), 250, 250) == (-1, "centre")
    # The fallback: a centred square of 0.47 x 250 = 117.5 -> 118 px (round half to even), at (250 - 118) // 2 = 66.
    assert CENTRE_BOX_FRACTION == 0.47
    assert centre_box(250, 250) == (66, 66, 118, 118)
    # Not square: side 0.47 x 100 = 47, x = (200 - 47) // 2 = 76, y = (100 - 47) // 2 = 26.
    assert centre_box(100, 200) == (76, 26, 47, 47)


def test_centre_fallback_is_a_haar_box_in_the_detectors_convention():
    """The fallback was measured on Haar boxes; for MTCNN it is mapped so that, once the landmark
    step maps it into dlib's convention, it lands where Haar's box would (by hand: Haar -> dlib ->
    MTCNN's inverse)."""
    from facerec.detect import DETECTORS, DLIB, Found
    from facerec.eval.lfw import subject_box

    none = Found(np.zeros((0, 4)), np.zeros(0), {"too_small": 0, "low_confidence": 1}, {})
    haar = subject_box(none, 250, 250, detector="haar")
    assert haar.box == (66, 66, 118, 118) and haar.method == "centre" and haar.detail == "1 box(es) low confidence"
    mt = subject_box(none, 250, 250, detector="mtcnn")
    to_dlib = DETECTORS.get("mtcnn").box_maps[DLIB](np.array(mt.box))
    np.testing.assert_allclose(to_dlib, DETECTORS.get("haar").box_maps[DLIB](np.array(haar.box, float)), atol=1e-9)


def _gradient(rng, size=250) -> np.ndarray:
    """A smooth two-colour gradient: no face for the cascade to find."""
    t = np.linspace(0, 1, size)[None, :, None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = a * (1 - t) + b * t
    return np.repeat(img, size, axis=0).astype(np.uint8)


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory):
    """2 identical folds x (2 matched + 2 mismatched pairs); a matched pair's two files are
    identical. Identical folds make the answer exact: the threshold fit on one fold lies
    between its highest mismatched score and 1, and the other fold has the very same scores."""
    from facerec.data.images import encode_jpeg

    root = tmp_path_factory.mktemp("lfw")
    rng = np.random.default_rng(0)
    names = [f"Person_{c}" for c in "ABCD"]
    for name in names:
        (root / "lfw-deepfunneled" / name).mkdir(parents=True)
        data = encode_jpeg(_gradient(rng), 95)
        (root / "lfw-deepfunneled" / name / f"{name}_0001.jpg").write_bytes(data)
        (root / "lfw-deepfunneled" / name / f"{name}_0002.jpg").write_bytes(data)
    lines = ["2\t2"]
    a, b, c, d = names
    for _ in range(2):
        lines += [f"{a}\t1\t2", f"{b}\t1\t2", f"{c}\t1\t{d}\t2", f"{a}\t2\t{b}\t1"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_known_answer_on_a_constructed_folder(ray_local, fake_lfw, tiny_checkpoint, tmp_path):
    res = lfw_verification(fake_lfw, tiny_checkpoint, crop_dir=tmp_path / "crops",
                           crop_config=LFWCropConfig(crop_size=64), num_actors=1)
    # Matched pairs score distance 0 (same pixels); mismatched ones less (-distance), so the threshold fit
    # on the other fold separates them: 100 % on both folds.
    assert res["folds"] == 2 and res["pairs"] == 8
    assert list(res["per_fold"]["n_pairs"]) == [4, 4]
    assert list(res["per_fold"]["accuracy"]) == [1.0, 1.0]
    assert res["mean"] == 1.0 and res["std"] == 0.0
    np.testing.assert_allclose(res["scores"][res["same"]], 0.0, atol=1e-5)
    assert (res["scores"][~res["same"]] < -1e-4).all()
    # Gradients hold no face: every image took the counted centre-crop fallback.
    assert res["images"] == 6 and res["centre_fallback"] == 6  # A1 A2 B1 B2 C1 D2
    assert res["crop_methods"] == {"face": 0, "nearest_centre": 0, "centre": 6}
    # Crops are cached: a second run crops nothing and gives the same scores.
    again = lfw_verification(fake_lfw, tiny_checkpoint, crop_dir=tmp_path / "crops",
                             crop_config=LFWCropConfig(crop_size=64), num_actors=1)
    np.testing.assert_allclose(again["scores"], res["scores"], atol=1e-6)


def test_default_lfw_crop_folder_is_under_the_cache_root(fake_lfw, tmp_path, monkeypatch):
    from facerec.eval.lfw import default_crop_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    folder = default_crop_dir(fake_lfw, LFWCropConfig(crop_size=64))
    assert folder.parent == tmp_path / "cache" / "lfw-crops" and folder.name.startswith(f"{fake_lfw.name}-")
    monkeypatch.delenv("FACEREC_CACHE")
    assert default_crop_dir(fake_lfw, LFWCropConfig(crop_size=64)) == (
        tmp_path / "home" / ".cache" / "facerec" / "lfw-crops" / folder.name)


@pytest.mark.slow
def test_lfw_crops_without_a_folder_go_to_facerec_cache(ray_local, fake_lfw, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    res = lfw_verification(fake_lfw, tiny_checkpoint, crop_config=LFWCropConfig(crop_size=64), num_actors=1)
    assert res["images"] == 6
    folders = list((tmp_path / "cache" / "lfw-crops").iterdir())
    assert len(folders) == 1 and len(list((folders[0]).rglob("*.png"))) == 6
    assert not (tmp_path / "home" / ".cache" / "facerec").exists()


def _brute_force_kfold(scores, same, folds) -> list[float]:
    """The View 2 protocol written out: per test fold, try every threshold between the other
    folds' scores (and below / above all), keep the most accurate (the lowest on ties: no cut
    between equal scores), and score the test fold with it."""
    out = []
    for f in np.unique(folds):
        train_s, train_y = scores[folds != f], same[folds != f]
        u = np.unique(train_s)
        candidates = [-np.inf, *((u[1:] + u[:-1]) / 2), np.inf]
        accs = [np.mean((train_s > t) == train_y) for t in candidates]
        t = candidates[int(np.argmax(accs))]
        out.append(float(np.mean((scores[folds == f] > t) == same[folds == f])))
    return out


@pytest.mark.slow
@pytest.mark.shared
def test_real_lfw_subset_gives_an_accuracy_per_fold(ray_local, lfw_sample, tiny_checkpoint, tmp_path):
    res = lfw_verification(lfw_sample, tiny_checkpoint, crop_dir=tmp_path / "crops",
                           crop_config=LFWCropConfig(crop_size=96), num_actors=1, max_pairs_per_fold=3)
    assert res["folds"] == 3 and res["pairs"] == 18
    pf = res["per_fold"]
    assert list(pf["fold"]) == [0, 1, 2] and list(pf["n_pairs"]) == [6, 6, 6]
    # the first 3 matched then the first 3 mismatched pairs of each fold, in file order
    np.testing.assert_array_equal(res["same"], np.tile([True] * 3 + [False] * 3, 3))
    folds = np.repeat([0, 1, 2], 6)
    np.testing.assert_allclose(pf["accuracy"], _brute_force_kfold(res["scores"], res["same"], folds))
    assert res["mean"] == pytest.approx(pf["accuracy"].mean())
    assert res["std"] == pytest.approx(pf["accuracy"].std(ddof=1))
    assert sum(res["crop_methods"].values()) == res["images"]
    # Deep-funneled faces are frontal and centred: the detector finds almost all of them.
    assert res["crop_methods"]["face"] + res["crop_methods"]["nearest_centre"] >= res["images"] - 1


def test_missing_images_are_named(fake_lfw, tiny_checkpoint, tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("2\t1\nPerson_A\t1\t2\nPerson_A\t1\tNobody\t3\nPerson_B\t1\t2\nPerson_C\t1\tPerson_D\t2\n")
    with pytest.raises(DataNotFoundError, match=r"1 of the 7 images .* missing .*Nobody_0003\.jpg"):
        lfw_verification(fake_lfw, tiny_checkpoint, pairs_path=bad, crop_dir=tmp_path / "c")
