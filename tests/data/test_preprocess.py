"""The cropping stage end to end on a small CelebA-layout folder of face photos plus every kind
of bad file: the accounting invariant, the drop manifest, the crops table and files, the local
and Ray engines agreeing, resuming after an interruption, and refusing mixed settings.

Every test runs twice: on synthetic faces the tests draw (so a clean clone tests the stage end
to end) and on real photos of ../shared/data/celeba-sample (marked ``shared``). Both folders have
the same file names, identities and bad files, so the expected counts are the same."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facerec.data.images import read_image
from facerec.data.preprocess import PARTS_DIR, PreprocessConfig, data_version, preprocess
from facerec.data.schema import (ATTRIBUTE_NAMES, CROP_COLUMNS, CROPS_TABLE, DROPPED_TABLE, SUMMARY_FILE,
                                 load_crops)
from facerec.errors import ConfigError
from facerec.io import read_parquet_metadata

# Photos with one frontal face each (at the default Haar settings), by identity: these real sample
# names, or synthetic faces written under the same names.
GOOD = {
    10: ["000114.jpg", "000131.jpg", "000176.jpg", "000180.jpg"],
    20: ["000280.jpg", "000306.jpg", "000457.jpg", "000461.jpg"],
    30: ["000486.jpg", "000501.jpg", "000565.jpg"],
    40: ["000625.jpg"],  # alone -> identity_too_small
}
# Valid but unusual encodings of face photos: they decode, so they are KEPT (identity 50).
CONVERTED = {"900001.jpg": ("000654.jpg", "gray"), "900002.png": ("000678.jpg", "16bit"),
             "900003.jpg": ("000711.jpg", "cmyk"), "900004.png": ("000795.jpg", "rgba")}
# Identity 60: one good photo + one unreadable file -> the good one is left alone.
LEFT_ALONE = "000875.jpg"
BAD = {  # identity 70, except the text file (60); image -> expected drop reason
    "800001.jpg": "unreadable",     # zero bytes
    "800002.jpg": "unreadable",     # truncated JPEG
    "800003.jpg": "unreadable",     # a text file named .jpg (identity 60)
    "800004.png": "too_large",      # decompression bomb
    "800005.jpg": "no_face",        # flat grey
    "800006.jpg": "several_faces",  # two faces side by side
    "800007.jpg": "missing",        # listed, no file
}
UNLISTED = "700001.jpg"
DUPLICATE = "000114.jpg"


def _png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, ~50 KB on disk (400 MP decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * min(1000, side - i)) for i in range(0, side, 1000)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _convert(src: Path, kind: str) -> bytes:
    with Image.open(src) as im:
        im.load()
        buf = io.BytesIO()
        if kind == "gray":
            im.convert("L").save(buf, "JPEG", quality=95)
        elif kind == "16bit":
            gray16 = np.asarray(im.convert("L")).astype(np.uint16) * 257
            return cv2.imencode(".png", gray16)[1].tobytes()
        elif kind == "cmyk":
            im.convert("CMYK").save(buf, "JPEG", quality=95)
        elif kind == "rgba":
            rgba = np.asarray(im.convert("RGBA")).copy()
            rgba[:8, :, 3] = 0  # a transparent border, composited on white when decoded
            rgba[:, :8, 3] = 0
            Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue()


def _attrs(image_id: str) -> list[int]:
    seed = int("".join(c for c in image_id if c.isdigit()))
    return list(np.random.default_rng(seed).choice([-1, 1], size=40))


# the photos the folder is made of, by their real sample name
SOURCES = [n for names in GOOD.values() for n in names] + [s for s, _ in CONVERTED.values()] + [
    LEFT_ALONE, "000962.jpg", "000825.jpg"]


def _sources(request) -> dict[str, Path]:
    """name in SOURCES -> a one-face photo: the real one, or a synthetic face (in file order)."""
    if request.param == "real":
        src = request.getfixturevalue("celeba_sample") / "img_celeba"
        return {name: src.joinpath(name) for name in SOURCES}
    one_face = request.getfixturevalue("synthetic_faces")["one_face"]
    return dict(zip(SOURCES, one_face[:len(SOURCES)], strict=True))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.shared)])
def dataset(request, tmp_path_factory) -> dict:
    """A CelebA-layout folder in tmp (never in the repo): identity, attribute and partition files."""
    src = _sources(request)
    root = tmp_path_factory.mktemp(f"celeba-{request.param}")
    img = root / "img_celeba"
    img.mkdir()
    listing: list[tuple[str, int]] = []
    for ident, names in GOOD.items():
        for name in names:
            shutil.copyfile(src[name], img / name)
            listing.append((name, ident))
    for name, (source, kind) in CONVERTED.items():
        (img / name).write_bytes(_convert(src[source], kind))
        listing.append((name, 50))
    shutil.copyfile(src[LEFT_ALONE], img / LEFT_ALONE)
    listing.append((LEFT_ALONE, 60))

    (img / "800001.jpg").write_bytes(b"")
    data = src["000962.jpg"].read_bytes()
    (img / "800002.jpg").write_bytes(data[: len(data) // 2])
    (img / "800003.jpg").write_text("not a photo, just text\n")
    (img / "800004.png").write_bytes(_png_bomb())
    cv2.imwrite(str(img / "800005.jpg"), np.full((200, 180, 3), 128, np.uint8))
    a, b = read_image(src["000114.jpg"]), read_image(src["000131.jpg"])
    fit = [cv2.resize(x, (round(x.shape[1] * 256 / x.shape[0]), 256), interpolation=cv2.INTER_AREA) for x in (a, b)]
    cv2.imwrite(str(img / "800006.jpg"), np.hstack(fit)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    for name in BAD:
        listing.append((name, 60 if name == "800003.jpg" else 70))
    listing.append((DUPLICATE, 10))
    shutil.copyfile(src["000825.jpg"], img / UNLISTED)
    (img / "README.txt").write_text("not an image: neither listed nor counted as unlisted\n")

    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in listing))
    unique = list(dict.fromkeys(n for n, _ in listing))
    lines = [str(len(unique)), " ".join(ATTRIBUTE_NAMES)]
    lines += [n + " " + " ".join(f"{v:2d}" for v in _attrs(n)) for n in unique]
    (root / "list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")
    partition = {n: i % 3 for n, i in listing}
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in partition.items()))
    identity = dict(listing[::-1])  # first line wins for the duplicate (same identity anyway)
    return {"root": root, "listing": listing, "unique": unique, "identity": identity, "partition": partition}


def _expected_reasons() -> dict[str, str]:
    reasons = dict(BAD)
    reasons[GOOD[40][0]] = "identity_too_small"
    reasons[LEFT_ALONE] = "identity_too_small"
    return reasons


def _expected_kept() -> set[str]:
    return {n for i in (10, 20, 30) for n in GOOD[i]} | set(CONVERTED)


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out-local")
    summary = preprocess(dataset["root"], out, PreprocessConfig(engine="local", batch_size=4, several_faces="drop"), progress=False)
    return out, summary


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept = pd.read_parquet(out / CROPS_TABLE).sort_values("image_id").reset_index(drop=True)
    dropped = pd.read_parquet(out / DROPPED_TABLE)
    dropped = dropped.sort_values(["image_id", "reason"]).reset_index(drop=True)
    return kept, dropped


# --------------------------------------------------------------------------- one local run


def test_accounting_and_summary(dataset, local_run):
    out, summary = local_run
    listed = len(dataset["listing"])
    assert summary["listed"] == listed == 25
    assert summary["kept"] + sum(summary["dropped"].values()) == listed
    assert summary["kept"] == len(_expected_kept()) == 15
    assert summary["dropped"] == {"missing": 1, "unreadable": 3, "too_large": 1, "no_face": 1, "several_faces": 1,
                                  "duplicate": 1, "identity_too_small": 2}
    assert summary["identities"] == 4  # 10, 20, 30, 50
    assert summary["unlisted"] == 1
    assert (out / "unlisted.txt").read_text() == UNLISTED + "\n"
    assert summary["processed_now"] == len(dataset["unique"]) == 24 and summary["resumed"] == 0
    assert summary["engine"] == "local"
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary


def test_drop_manifest_reasons(dataset, local_run):
    out, _ = local_run
    dropped = pd.read_parquet(out / DROPPED_TABLE)
    assert list(dropped.columns) == ["image_id", "identity", "reason", "detail"]
    dup = dropped[dropped["reason"] == "duplicate"]
    assert list(dup["image_id"]) == [DUPLICATE] and list(dup["identity"]) == [10]
    rest = dropped[dropped["reason"] != "duplicate"]
    assert rest["image_id"].is_unique
    assert dict(zip(rest["image_id"], rest["reason"])) == _expected_reasons()
    assert (rest["identity"] == rest["image_id"].map(dataset["identity"])).all()
    assert (dropped["detail"].str.len() > 0).all()
    detail = dict(zip(rest["image_id"], rest["detail"]))
    assert "empty file (0 bytes)" in detail["800001.jpg"]
    assert "exceeds limit" in detail["800004.png"] or "exceeds the limit" in detail["800004.png"]
    assert detail[LEFT_ALONE] == "identity has 1 usable image(s), fewer than 2"
    assert read_parquet_metadata(out / DROPPED_TABLE)["data_version"] == read_parquet_metadata(out / CROPS_TABLE)[
        "data_version"]


def test_crops_table_and_files(dataset, local_run):
    out, summary = local_run
    kept, meta = load_crops(out)
    assert list(kept.columns) == [*CROP_COLUMNS, *ATTRIBUTE_NAMES]
    assert set(kept["image_id"]) == _expected_kept() and kept["image_id"].is_unique
    assert meta["crop_size"] == 218 and meta["margin"] == 0.2
    assert meta["attribute_names"] == list(ATTRIBUTE_NAMES)
    assert meta["data_version"] == summary["data_version"] and len(meta["data_version"]) == 16
    assert meta["has_attributes"] is True and meta["has_partition"] is True
    assert data_version(kept, PreprocessConfig(engine="local", batch_size=4, several_faces="drop")) == meta["data_version"]

    assert kept["identity"].dtype == np.int64 and kept["partition"].dtype == np.int8
    for col in ("box_x", "box_y", "box_w", "box_h", "orig_w", "orig_h"):
        assert kept[col].dtype == np.int32, col
    assert kept["haar_pass"].dtype == np.int8 and set(kept["haar_pass"]) <= {1, 2}
    assert (kept["identity"] == kept["image_id"].map(dataset["identity"])).all()
    assert (kept["partition"] == kept["image_id"].map(dataset["partition"])).all()
    for _, row in kept.iterrows():
        np.testing.assert_array_equal(row[list(ATTRIBUTE_NAMES)].to_numpy(dtype=int), _attrs(row["image_id"]))
        assert row["crop_path"] == f"crops/{row['image_id']}.png"
        crop = read_image(out / row["crop_path"])
        assert crop.shape == (218, 218, 3)
        with Image.open(dataset["root"] / "img_celeba" / row["image_id"]) as src:
            assert (row["orig_w"], row["orig_h"]) == src.size
        assert 0 <= row["box_x"] and row["box_x"] + row["box_w"] <= row["orig_w"]
        assert 0 <= row["box_y"] and row["box_y"] + row["box_h"] <= row["orig_h"]
        assert row["box_w"] >= 24
    # the crop of the grayscale photo is gray, that of a colour photo is not
    gray = read_image(out / "crops" / "900001.jpg.png").astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 3
    colour = read_image(out / "crops" / "000114.jpg.png").astype(int)
    assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 5


def test_rerun_is_a_no_op(dataset, local_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    summary = preprocess(dataset["root"], out, PreprocessConfig(engine="local", batch_size=4, several_faces="drop"), progress=False)
    assert summary["processed_now"] == 0 and summary["resumed"] == 24
    assert summary["data_version"] == local_run[1]["data_version"]


# --------------------------------------------------------------------------- resume / settings


def test_resume_processes_only_the_missing_work(dataset, local_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    parts = sorted((out / PARTS_DIR).glob("part-*.parquet"))
    assert len(parts) == 6  # 24 unique images in batches of 4
    removed = parts[::2]  # as if the run had been killed before these batches finished
    lost = set()
    for p in removed:
        lost |= set(pd.read_parquet(p)["image_id"])
        p.unlink()
    for name in lost:  # and their crops had never been written
        (out / "crops" / f"{name}.png").unlink(missing_ok=True)
    for name in (CROPS_TABLE, DROPPED_TABLE, SUMMARY_FILE):
        (out / name).unlink()

    summary = preprocess(dataset["root"], out, PreprocessConfig(engine="local", batch_size=4, several_faces="drop"), progress=False)

    assert summary["processed_now"] == len(lost) == 12
    assert summary["resumed"] == 24 - len(lost)
    assert summary["data_version"] == local_run[1]["data_version"]
    before, after = _tables(local_run[0]), _tables(out)
    pd.testing.assert_frame_equal(after[0], before[0])
    pd.testing.assert_frame_equal(after[1], before[1])
    for name in before[0]["image_id"]:  # same settings -> byte-identical crops
        assert (out / "crops" / f"{name}.png").read_bytes() == (local_run[0] / "crops" / f"{name}.png").read_bytes()


def test_resume_from_a_run_over_a_subset(dataset, tmp_path):
    # An interrupted run, modelled as a first run whose listing held only the first 10 lines.
    partial = tmp_path / "partial"
    shutil.copytree(dataset["root"], partial, ignore=shutil.ignore_patterns("img_celeba"))
    (partial / "img_celeba").symlink_to(dataset["root"] / "img_celeba", target_is_directory=True)
    lines = (dataset["root"] / "identity_CelebA.txt").read_text().splitlines(keepends=True)
    (partial / "identity_CelebA.txt").write_text("".join(lines[:10]))
    out = tmp_path / "out"
    config = PreprocessConfig(engine="local", batch_size=4, several_faces="drop")
    first = preprocess(partial, out, config, progress=False)
    assert first["processed_now"] == 10
    second = preprocess(dataset["root"], out, config, progress=False)
    assert second["processed_now"] == 14 and second["resumed"] == 10
    assert second["kept"] == 15 and second["dropped"]["too_large"] == 1


def test_other_crop_settings_on_the_same_folder_are_refused_then_overwrite(dataset, local_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    small = PreprocessConfig(engine="local", batch_size=8, crop_size=64, several_faces="drop")
    with pytest.raises(ConfigError, match=r"^out='.*' is invalid: expected a folder made with the same crop settings: "
                                          r"it holds crops made with \{'crop_size': 218"):
        preprocess(dataset["root"], out, small, progress=False)
    # settings that do not change a crop's bytes (batching, engine, identity threshold) resume fine
    same = preprocess(dataset["root"], out, PreprocessConfig(engine="local", batch_size=8, several_faces="drop"), progress=False)
    assert same["processed_now"] == 0

    summary = preprocess(dataset["root"], out, small, overwrite=True, progress=False)
    assert summary["processed_now"] == 24
    kept, meta = load_crops(out)
    assert set(kept["image_id"]) == _expected_kept()
    assert meta["crop_size"] == 64 and meta["data_version"] != local_run[1]["data_version"]
    assert read_image(out / "crops" / "000114.jpg.png").shape == (64, 64, 3)
    assert len(list((out / PARTS_DIR).glob("part-*.parquet"))) == 3  # the old parts are gone


# --------------------------------------------------------------------------- Ray engine


@pytest.mark.slow
def test_ray_engine_gives_the_same_result(dataset, local_run, ray_cluster, tmp_path):
    out = tmp_path / "out-ray"
    config = PreprocessConfig(engine="ray", batch_size=4, num_workers=2, several_faces="drop")
    summary = preprocess(dataset["root"], out, config, progress=False)
    # the bomb is dropped with its reason; the worker that met it lived on to finish the run
    assert summary["dropped"]["too_large"] == 1
    assert summary["engine"] == "ray" and summary["processed_now"] == 24
    for key in ("listed", "kept", "dropped", "identities", "unlisted", "data_version"):
        assert summary[key] == local_run[1][key], key
    ray_kept, ray_dropped = _tables(out)
    local_kept, local_dropped = _tables(local_run[0])
    pd.testing.assert_frame_equal(ray_kept, local_kept)
    pd.testing.assert_frame_equal(ray_dropped, local_dropped)
    for name in ray_kept["image_id"]:
        assert (out / "crops" / f"{name}.png").read_bytes() == (local_run[0] / "crops" / f"{name}.png").read_bytes()
    # the Ray workers wrote the resume record: one part per batch, every image once
    parts = sorted((out / PARTS_DIR).glob("part-*.parquet"))
    assert len(parts) == 6
    ids = pd.concat([pd.read_parquet(p) for p in parts])["image_id"]
    assert sorted(ids) == sorted(dataset["unique"])
    again = preprocess(dataset["root"], out, config, progress=False)
    assert again["processed_now"] == 0 and again["resumed"] == 24
    assert again["data_version"] == summary["data_version"]


def test_default_rule_keeps_the_largest_of_several_faces(dataset, tmp_path):
    """The two-faces photo the study's rule drops: the default keeps its largest accepted face."""
    from facerec.data.cropper import crop_images
    from facerec.data.celeba import find_image_dir

    rows = crop_images(["800006.jpg"], find_image_dir(dataset["root"]), tmp_path, PreprocessConfig(engine="local"),
                       progress=False).set_index("image_id")
    row = rows.loc["800006.jpg"]
    assert row["status"] == "kept" and row["method"] == "largest" and row["faces"] == 2, row.to_dict()
    assert row["detail"] == "largest of 2 faces" and row["score"] >= 0.9


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [("crop_size", 8), ("margin", -0.1), ("margin", 3.0), ("scale_step", 1.0), ("min_neighbors", -1),
     ("min_face", 0), ("min_face", 1.5), ("min_confidence", 1.2), ("min_confidence", float("nan")),
     ("detect_max_side", 10), ("detector", "hog"), ("max_pixels", 100), ("min_images_per_identity", 0),
     ("batch_size", 0), ("num_workers", 0), ("several_faces", "every"), ("engine", "spark")],
)
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}={value!r} is invalid: expected ") as info:
        PreprocessConfig(**{field: value})
    assert info.value.field == field


def test_fingerprint_covers_crop_settings_only():
    base = PreprocessConfig()
    assert PreprocessConfig(batch_size=3, engine="local", num_workers=1).fingerprint() == base.fingerprint()
    assert PreprocessConfig(crop_size=64).fingerprint() != base.fingerprint()
    assert PreprocessConfig(margin=0.3).fingerprint() != base.fingerprint()
    assert PreprocessConfig(several_faces="drop").fingerprint() != base.fingerprint()
    # the detector and its gate decide which faces are stored: each is in the fingerprint
    assert PreprocessConfig(detector="haar").fingerprint() != base.fingerprint()
    assert PreprocessConfig(min_confidence=0.5).fingerprint() != base.fingerprint()
    assert PreprocessConfig(min_face=64).fingerprint() != base.fingerprint()
    assert PreprocessConfig(scale_step=1.8).fingerprint() != base.fingerprint()
    # None means the detector's default: the same stored inputs, the same fingerprint
    from facerec.detect import DETECTORS

    d = DETECTORS.get("mtcnn").defaults
    assert PreprocessConfig(min_confidence=d["min_confidence"], min_face=d["min_face"]).fingerprint() == base.fingerprint()
    assert PreprocessConfig(input_kind="aligned_chip_5pt").fingerprint() != base.fingerprint()


def test_input_kind_decides_the_size_and_refuses_another():
    assert PreprocessConfig().crop_size == 218
    assert PreprocessConfig(input_kind="aligned_chip_5pt").crop_size == 150
    with pytest.raises(ConfigError, match=r"^crop_size=160 is invalid: expected 150: input kind aligned_chip_5pt is "
                                          r"dlib's 5-point aligned face chip"):
        PreprocessConfig(input_kind="aligned_chip_5pt", crop_size=160)
    with pytest.raises(ConfigError, match=r"^input_kind='mtcnn' is invalid: expected one of \['aligned_chip_5pt', 'haar_crop'\]"):
        PreprocessConfig(input_kind="mtcnn")


def test_missing_data_folder_is_refused_before_any_work(tmp_path):
    from facerec.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="does not exist"):
        preprocess(tmp_path / "nope", tmp_path / "out", PreprocessConfig(engine="local"))
    assert not (tmp_path / "out").exists()
