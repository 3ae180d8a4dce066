"""Photo-folder layouts (facerec.data.layouts): folder per person and unlabelled folders read from
folders the tests make (bad files, empty person folders, names with spaces and Unicode, nested
folders, hidden files), layout detection and its ambiguous-folder error, ``--layout`` overriding
it, preprocessing a folder-per-person set and an unlabelled one end to end (display names and the
layout in the crops table's metadata, an EXIF-rotated photo kept upright), the crops cache keyed
by layout, and LFW's lfw-deepfunneled read as folder per person."""

from __future__ import annotations

import hashlib
import io
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facerec.data.layouts import UNLABELLED, detect_layout, read_photos, require_labelled
from facerec.data.schema import ATTRIBUTE_NAMES, CROPS_TABLE, DROPPED_TABLE
from facerec.errors import AmbiguousLayoutError, ConfigError, DataNotFoundError


def _ident(name: str) -> int:
    """The identity the module documents for a person folder: 48 bits of SHA-256 of the NFC name."""
    return int.from_bytes(hashlib.sha256(unicodedata.normalize("NFC", name).encode()).digest()[:6], "big")


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


NFD_ZOE = unicodedata.normalize("NFD", "Zoë Ångström")  # as macOS writes names


@pytest.fixture
def people(tmp_path) -> Path:
    root = tmp_path / "people"
    _touch(root / "Ada Lovelace" / "a.jpg")
    _touch(root / "Ada Lovelace" / "b.PNG")
    _touch(root / "Ada Lovelace" / "notes.txt")          # not a photo: ignored
    _touch(root / "Ada Lovelace" / "._a.jpg")            # macOS resource fork: hidden, skipped
    _touch(root / NFD_ZOE / "x.jpeg")
    _touch(root / NFD_ZOE / "2019" / "y.WebP")            # nested in the person's folder: still hers
    _touch(root / "李小龍" / "z.tif")
    _touch(root / "李小龍" / "w.bmp")
    _touch(root / "李小龍" / "v.TIFF")
    (root / "empty person").mkdir()
    _touch(root / ".thumbnails" / "t.jpg")               # hidden folder: skipped
    _touch(root / "README.md")
    return root


def test_folder_per_person_reads_people_with_their_names(people):
    df = read_photos(people)
    assert df.attrs["layout"] == "folder_per_person" and df.attrs["labelled"] is True
    zoe = "Zoë Ångström"
    expected = {
        "Ada Lovelace/a.jpg": "Ada Lovelace", "Ada Lovelace/b.PNG": "Ada Lovelace",
        f"{NFD_ZOE}/2019/y.WebP": zoe, f"{NFD_ZOE}/x.jpeg": zoe,
        "李小龍/v.TIFF": "李小龍", "李小龍/w.bmp": "李小龍", "李小龍/z.tif": "李小龍",
    }
    assert sorted(df["image_id"]) == sorted(expected)
    got = dict(zip(df["image_id"], df["identity"]))
    assert got == {k: _ident(v) for k, v in expected.items()}
    assert df.attrs["display_names"] == {_ident(n): n for n in ("Ada Lovelace", zoe, "李小龍")}
    assert zoe in df.attrs["display_names"].values()  # NFC, whatever the disk holds
    assert df.attrs["empty_people"] == ["empty person"]
    assert sorted(df.attrs["ignored"]) == ["Ada Lovelace/notes.txt", "README.md"]
    assert Path(df.attrs["image_dir"]) == people
    # the shape load_celeba returns: no partition, unknown attributes
    assert list(df.columns[:3]) == ["image_id", "identity", "partition"]
    assert (df["partition"] == -1).all() and (df[list(ATTRIBUTE_NAMES)] == 0).all().all()
    for rel in df["image_id"]:
        assert (people / rel).is_file()


def test_person_numbers_do_not_move_when_people_are_added(people):
    before = read_photos(people).attrs["display_names"]
    _touch(people / "Aaron First" / "a.jpg")  # sorts before everyone
    after = read_photos(people).attrs["display_names"]
    assert {n: i for i, n in after.items() if n != "Aaron First"} == {n: i for i, n in before.items()}


def test_unlabelled_reads_every_photo_recursively(tmp_path):
    root = tmp_path / "library"
    for rel in ("a.jpg", "2019/01/b.png", "2019/02/c.TIFF", "2020/deep/er/d.webp"):
        _touch(root / rel)
    _touch(root / "2019" / "index.html")
    _touch(root / ".git" / "objects" / "e.jpg")
    df = read_photos(root)
    assert df.attrs["layout"] == "unlabelled" and df.attrs["labelled"] is False
    assert sorted(df["image_id"]) == ["2019/01/b.png", "2019/02/c.TIFF", "2020/deep/er/d.webp", "a.jpg"]
    assert (df["identity"] == UNLABELLED).all() and UNLABELLED == -1
    assert df.attrs["display_names"] == {}
    assert df.attrs["ignored"] == ["2019/index.html"]


@pytest.mark.parametrize("files, expected", [
    (["identity_CelebA.txt", "img_align_celeba/000001.jpg"], "celeba"),
    (["A/1.jpg", "B/2.png", "C/"], "folder_per_person"),          # C: an empty person folder
    (["1.jpg", "2.jpg", "notes.txt"], "unlabelled"),
    (["2019/01/1.jpg", "2019/02/2.jpg"], "unlabelled"),            # photos only deeper: a library
    (["A/1.jpg", "2019/01/2.jpg"], "unlabelled"),                  # a person folder beside a library folder
    (["pairs.txt", "A/1.jpg"], "folder_per_person"),               # files that are no photos do not count
])
def test_detect_layout(tmp_path, files, expected):
    for rel in files:
        if rel.endswith("/"):
            (tmp_path / rel).mkdir(parents=True)
        else:
            _touch(tmp_path / rel)
    assert detect_layout(tmp_path) == expected


def test_ambiguous_folder_is_a_clear_error_and_layout_overrides_it(tmp_path):
    _touch(tmp_path / "loose.jpg")
    _touch(tmp_path / "Ada" / "a.jpg")
    _touch(tmp_path / "Bob" / "b.jpg")
    with pytest.raises(AmbiguousLayoutError, match=r"layout is ambiguous: it could be folder_per_person or unlabelled "
                                                   r"\(it holds 1 photo\(s\) at its top level \(loose\.jpg\) and 2 "
                                                   r"sub-folder\(s\) of photos \(Ada, Bob\)\); pass --layout "
                                                   r"folder_per_person or --layout unlabelled"):
        read_photos(tmp_path)
    assert sorted(read_photos(tmp_path, "unlabelled")["image_id"]) == ["Ada/a.jpg", "Bob/b.jpg", "loose.jpg"]
    people = read_photos(tmp_path, "folder_per_person")
    assert sorted(people["image_id"]) == ["Ada/a.jpg", "Bob/b.jpg"]
    assert people.attrs["ignored"] == ["loose.jpg"]  # a photo at the top belongs to nobody


def test_bad_layout_names_and_empty_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"layout='flat' is invalid: expected one of \['celeba', 'folder_per_person', "
                                          r"'unlabelled'\]"):
        read_photos(tmp_path, "flat")
    with pytest.raises(DataNotFoundError, match=r"holds no photos .*and no identity_CelebA.txt"):
        detect_layout(tmp_path)
    (tmp_path / "empty person").mkdir()
    with pytest.raises(DataNotFoundError, match=r"holds no photos in person folders"):
        read_photos(tmp_path, "folder_per_person")
    with pytest.raises(DataNotFoundError, match=r"data folder .*missing does not exist"):
        read_photos(tmp_path / "missing")


def test_labelled_stages_refuse_an_unlabelled_folder(tmp_path):
    _touch(tmp_path / "a.jpg")
    with pytest.raises(ConfigError, match=r"--data=.* is invalid: expected a labelled photo folder for train-sweep "
                                          r"\(layout celeba or folder_per_person; this one was read as unlabelled"):
        require_labelled(tmp_path, None, "train-sweep")
    from facerec.data.preprocess import PreprocessConfig

    with pytest.raises(ConfigError, match=r"layout='people' is invalid: expected None \(detected from the folder\) "
                                          r"or one of \['celeba', 'folder_per_person', 'unlabelled'\]"):
        PreprocessConfig(layout="people")


def test_train_sweep_cli_refuses_an_unlabelled_folder(tmp_path, capsys):
    from facerec.cli.train_sweep import main

    _touch(tmp_path / "photos" / "a.jpg")
    _touch(tmp_path / "photos" / "2019" / "01" / "b.jpg")
    assert main(["--data", str(tmp_path / "photos"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "facerec train-sweep: error: --data=" in err and "expected a labelled photo folder for train-sweep" in err
    assert not (tmp_path / "run").exists()


# -- preprocessing end to end -------------------------------------------------------------------

NAMES = ["Ada Lovelace", NFD_ZOE, "李 小龍", "Ørjan"]


def _rotated_jpeg(src: Path) -> bytes:
    """``src``'s pixels stored turned 90 degrees counter-clockwise with EXIF orientation 6 (turn
    clockwise to show): upright only if the decoder applies the tag."""
    upright = np.asarray(Image.open(src).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.fixture
def people_photos(synthetic_faces, tmp_path) -> dict:
    """The synthetic faces' first four people as a folder per person (names with spaces and
    Unicode), their first photo stored EXIF-rotated, plus an unreadable and an empty file and an
    empty person folder."""
    from facerec.data.celeba import read_identities

    src = synthetic_faces["root"]
    ids = read_identities(src / "identity_CelebA.txt")
    root = tmp_path / "people"
    expected, rotated = {}, []
    for name, (ident, group) in zip(NAMES, list(ids.groupby("identity", sort=True))[:4]):
        for j, image in enumerate(sorted(group["image_id"])):
            rel = f"{name}/{image}"
            if j == 0:
                _touch(root / rel, _rotated_jpeg(src / "img_celeba" / image))
                rotated.append(rel)
            else:
                _touch(root / rel, (src / "img_celeba" / image).read_bytes())
            expected[rel] = unicodedata.normalize("NFC", name)
    _touch(root / "Ada Lovelace" / "broken.jpg", b"this is no JPEG")
    _touch(root / "Ørjan" / "empty.png", b"")
    (root / "Nobody Yet").mkdir()
    return {"root": root, "expected": expected, "rotated": rotated}


def test_preprocess_folder_per_person_end_to_end(people_photos, tmp_path):
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.io import read_parquet_metadata

    root, expected = people_photos["root"], people_photos["expected"]
    out = tmp_path / "crops"
    summary = preprocess(root, out, PreprocessConfig(engine="local", batch_size=4, min_images_per_identity=1),
                         progress=False)
    kept = pd.read_parquet(out / CROPS_TABLE)
    dropped = pd.read_parquet(out / DROPPED_TABLE)
    meta = read_parquet_metadata(out / CROPS_TABLE)
    assert summary["listed"] == len(expected) + 2 and summary["layout"] == "folder_per_person"
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["listed"]
    bad = dropped.set_index("image_id")["reason"].to_dict()
    assert bad["Ada Lovelace/broken.jpg"] == "unreadable" and bad["Ørjan/empty.png"] == "unreadable"
    assert set(kept["image_id"]) | set(dropped["image_id"]) == set(expected) | {"Ada Lovelace/broken.jpg",
                                                                                 "Ørjan/empty.png"}
    assert len(kept) >= len(expected) - 3, dropped  # the synthetic faces are found
    for rel, ident in zip(kept["image_id"], kept["identity"]):
        assert ident == _ident(expected[rel])
        assert (out / "crops" / f"{rel}.png").is_file()
    assert meta["layout"] == "folder_per_person" and meta["labelled"] is True
    assert meta["display_names"] == {str(_ident(n)): n for n in {expected[r] for r in kept["image_id"]}}
    assert summary["empty_people"] == 1
    # EXIF orientation applied on decode: the rotated photos were measured upright (178 x 218)
    rotated = kept[kept["image_id"].isin(people_photos["rotated"])]
    assert len(rotated) >= 2
    assert (rotated["orig_w"] == 178).all() and (rotated["orig_h"] == 218).all()

    # the people's names reach the gallery, which the server's identity listing and page show
    from facerec.gallery import GalleryBuildConfig, build_gallery
    from facerec.gallery.snapshot import GallerySnapshot
    from facerec.serve.defaults import make_default_checkpoint

    make_default_checkpoint("mobilenet_v3_small", tmp_path / "ckpt", out, image_size=32, embedding_dim=8)
    manifest = build_gallery(GalleryBuildConfig(crops_dir=str(out), out_dir=str(tmp_path / "gallery"),
                                                checkpoints={"m": str(tmp_path / "ckpt")}, kinds=["exact"],
                                                erasure_list=str(tmp_path / "none.json")))
    assert manifest["names"] == meta["display_names"]
    page = GallerySnapshot.load(tmp_path / "gallery").identities_page(limit=10)
    assert {item["display_name"] for item in page["identities"]} == {expected[r] for r in kept["image_id"]}


def test_preprocess_unlabelled_folder_keeps_every_face_as_nobody(people_photos, tmp_path):
    from facerec.data.preprocess import PreprocessConfig, preprocess
    from facerec.io import read_parquet_metadata

    root = tmp_path / "one"
    first = sorted(people_photos["expected"])[1]
    _touch(root / "2019" / "camera" / "only.jpg", (people_photos["root"] / first).read_bytes())
    out = tmp_path / "crops"
    # one photo: under a labelled layout it would be an identity too small to keep
    summary = preprocess(root, out, PreprocessConfig(engine="local", batch_size=4), progress=False)
    kept = pd.read_parquet(out / CROPS_TABLE)
    meta = read_parquet_metadata(out / CROPS_TABLE)
    assert summary["layout"] == "unlabelled" and summary["kept"] == 1 and summary["identities"] == 0
    assert kept["image_id"].tolist() == ["2019/camera/only.jpg"] and kept["identity"].tolist() == [-1]
    assert meta["labelled"] is False and meta["display_names"] == {}
    # the stages that measure identities refuse these crops, naming why
    from facerec.data.sources import check_crops

    with pytest.raises(ConfigError, match=r"--crops=.* is invalid: expected crops of a labelled photo folder for "
                                          r"evaluate \(these were made from an unlabelled folder"):
        check_crops(out, labelled_for="evaluate")
    check_crops(out)  # a gallery of them (build-index --split all) is fine


def test_crops_cache_key_follows_layout_and_nested_photos(tmp_path):
    from facerec.data.crops_cache import crops_key
    from facerec.data.preprocess import PreprocessConfig

    _touch(tmp_path / "Ada" / "a.jpg")
    _touch(tmp_path / "Bob" / "b.jpg")
    as_people = crops_key(tmp_path, PreprocessConfig(layout="folder_per_person"))
    assert crops_key(tmp_path, PreprocessConfig()) == as_people  # detected: folder per person
    assert crops_key(tmp_path, PreprocessConfig(layout="unlabelled")) != as_people
    _touch(tmp_path / "Bob" / "c.jpg")  # a photo added inside a person's folder: new content
    assert crops_key(tmp_path, PreprocessConfig(layout="folder_per_person")) != as_people


@pytest.mark.shared
def test_lfw_deepfunneled_reads_as_folder_per_person(lfw_sample):
    root = lfw_sample / "lfw-deepfunneled"
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    people = {p.name: sorted(f.name for f in p.iterdir() if f.suffix.lower() in suffixes)
              for p in root.iterdir() if p.is_dir()}
    people = {k: v for k, v in people.items() if v}
    assert detect_layout(root) == "folder_per_person"
    df = read_photos(root)
    assert len(df) == sum(len(v) for v in people.values())
    assert df["identity"].nunique() == len(people)
    assert sorted(df.attrs["display_names"].values()) == sorted(people)
    bush = df[df["identity"] == _ident("George_W_Bush")] if "George_W_Bush" in people else df.iloc[:0]
    assert sorted(bush["image_id"]) == [f"George_W_Bush/{f}" for f in people.get("George_W_Bush", [])]
