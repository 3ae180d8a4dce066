"""The one face cropper (facerec.data.cropper) with its two box rules: the study's (preprocess) and
the subject nearest the centre (LFW), on generated photos, in this process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facerec.data.cropper import RESULT_COLUMNS, FaceCropper, crop_images, study_box_rule
from facerec.data.images import encode_png, read_image
from facerec.data.preprocess import PreprocessConfig
from facerec.data.synth import generate_synthetic
from facerec.eval.lfw import CENTRE_BOX_FRACTION, subject_box


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two generated face photos, a blank one (no face) and a file that is not an image."""
    root = generate_synthetic(tmp_path_factory.mktemp("synth"), 2, 2, seed=3, progress=False)
    folder = next(p for p in root.iterdir() if p.is_dir() and p.name.startswith("img"))
    faces = sorted(p.name for p in folder.iterdir())[:2]
    (folder / "blank.png").write_bytes(encode_png(np.full((200, 240, 3), 128, np.uint8)))
    (folder / "junk.jpg").write_bytes(b"not an image")
    return folder, faces


def test_study_rule_keeps_faces_and_drops_the_rest_with_reasons(photos, tmp_path):
    folder, faces = photos
    cfg = PreprocessConfig(engine="local", crop_size=64)
    rows = crop_images(faces + ["blank.png", "junk.jpg"], folder, tmp_path, cfg, progress=False)
    assert list(rows.columns) == RESULT_COLUMNS
    by = rows.set_index("image_id")
    assert (by.loc[faces, "status"] == "kept").all() and (by.loc[faces, "method"] == "face").all()
    assert by.loc["blank.png", ["status", "reason"]].tolist() == ["dropped", "no_face"]
    assert by.loc["junk.jpg", ["status", "reason"]].tolist() == ["dropped", "unreadable"]
    for f in faces:
        assert read_image(tmp_path / "crops" / f"{f}.png").shape == (64, 64, 3)
    assert not (tmp_path / "crops" / "blank.png.png").exists()


def test_lfw_rule_crops_the_centre_when_no_face_is_found(photos, tmp_path):
    folder, faces = photos
    cfg = PreprocessConfig(engine="local", crop_size=64)
    rows = crop_images(faces + ["blank.png"], folder, tmp_path / "lfw", cfg, box_rule=subject_box, progress=False)
    by = rows.set_index("image_id")
    assert by.loc["blank.png", ["status", "method"]].tolist() == ["kept", "centre"]
    side = round(CENTRE_BOX_FRACTION * 200)
    assert by.loc["blank.png", ["box_x", "box_y", "box_w", "box_h"]].tolist() == [(240 - side) // 2, (200 - side) // 2,
                                                                                  side, side]
    # one face found: both rules pick the same box, so the stored inputs are the same bytes
    study = crop_images(faces, folder, tmp_path / "study", cfg, progress=False)
    for f in faces:
        assert (tmp_path / "lfw" / "crops" / f"{f}.png").read_bytes() == (tmp_path / "study" / "crops" / f"{f}.png").read_bytes()
    assert study.set_index("image_id").loc[faces, "box_x"].tolist() == by.loc[faces, "box_x"].tolist()


def test_part_files_record_finished_batches(photos, tmp_path):
    folder, faces = photos
    cfg = PreprocessConfig(engine="local", batch_size=1, several_faces="largest")
    cropper = FaceCropper(str(folder), str(tmp_path), cfg, study_box_rule("largest"), parts_dir=str(tmp_path / "parts"))
    cropper(pd.DataFrame({"image_id": faces[:1]}))
    parts = list((tmp_path / "parts").glob("part-*.parquet"))
    assert len(parts) == 1 and pd.read_parquet(parts[0])["image_id"].tolist() == faces[:1]
