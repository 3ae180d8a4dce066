"""facerec.data.synth: the synthetic CelebA-layout dataset.

Formats are checked against the official CelebA files' conventions, the Haar rate with
OpenCV's own cascade, called here exactly as the preprocess stage calls it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerec.data.celeba import load_celeba
from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.data.synth import (
    MARKER_FILE,
    SYNTH_VERSION,
    default_synthetic_dir,
    ensure_synthetic,
    generate_synthetic,
)
from facerec.errors import ConfigError
from facerec.io import sha256_file

N_IDS, PER_ID = 24, 5  # 120 images: enough for the Haar rate to mean something, a few seconds


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "ds", N_IDS, PER_ID, seed=0, progress=False)


def _pairs(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        name, value = line.split(" ")
        out.append((name, int(value)))
    return out


def _digests(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file() and p.name != MARKER_FILE]
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


def test_layout_and_formats(small: Path):
    n = N_IDS * PER_ID
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    assert sorted(p.name for p in (small / "img_celeba").iterdir()) == names

    ident_raw = (small / "identity_CelebA.txt").read_bytes()
    assert b"\r" not in ident_raw and ident_raw.endswith(b"\n")
    idents = _pairs(small / "identity_CelebA.txt")
    assert [name for name, _ in idents] == names
    per_id = Counter(label for _, label in idents)
    assert len(per_id) == N_IDS and set(per_id.values()) == {PER_ID}
    assert all(1 <= label <= 10177 for label in per_id)

    attr_raw = (small / "list_attr_celeba.txt").read_bytes()
    lines = attr_raw.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line for line in lines)  # CRLF throughout
    assert lines[0] == str(n).encode()
    assert lines[1].decode().split() == list(ATTRIBUTE_NAMES)
    rows = [line.decode() for line in lines[2:-1]]
    assert len(rows) == n
    for name, row in zip(names, rows):
        tokens = row.split()
        assert tokens[0] == name and len(tokens) == 41
        assert set(tokens[1:]) <= {"-1", "1"}
        # the official alignment: every value right-aligned in two columns after one space
        assert row == name + "".join(f" {int(v):2d}" for v in tokens[1:])

    parts = _pairs(small / "list_eval_partition.txt")
    assert [name for name, _ in parts] == names
    assert b"\r" not in (small / "list_eval_partition.txt").read_bytes()
    label_of = dict(idents)
    split_of_identity = defaultdict(set)
    for name, part in parts:
        split_of_identity[label_of[name]].add(part)
    assert all(len(s) == 1 for s in split_of_identity.values()), "an identity spans two partitions"
    ids_per_part = Counter(next(iter(s)) for s in split_of_identity.values())
    # round(0.1 * 24) = 2 identities each for val and test, the rest train
    assert ids_per_part == {0: 20, 1: 2, 2: 2}
    # like the official file: partitions are contiguous runs of image numbers, train first
    part_seq = [part for _, part in parts]
    assert part_seq == sorted(part_seq)

    img = cv2.imread(str(small / "img_celeba" / names[0]))
    assert img is not None and img.shape == (218, 178, 3)
    marker = json.loads((small / MARKER_FILE).read_text())
    assert marker["version"] == SYNTH_VERSION and marker["complete"] is True
    assert marker["params"] == {"n_identities": N_IDS, "images_per_identity": PER_ID, "seed": 0, "image_size": [178, 218]}


def test_attributes_follow_the_drawing(small: Path):
    lines = (small / "list_attr_celeba.txt").read_text().splitlines()[2:]
    rows = {line.split()[0]: dict(zip(ATTRIBUTE_NAMES, map(int, line.split()[1:]))) for line in lines}
    label_of = dict(_pairs(small / "identity_CelebA.txt"))
    by_identity = defaultdict(list)
    for name, a in rows.items():
        hair = [a[h] for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]
        assert hair.count(1) == (0 if a["Bald"] == 1 else 1), name  # one drawn hair colour, none when bald
        if a["Male"] == -1:  # beards are only drawn on men
            assert (a["Goatee"], a["Mustache"], a["Sideburns"], a["5_o_Clock_Shadow"], a["No_Beard"]) == (-1, -1, -1, -1, 1)
        assert not (a["Straight_Hair"] == 1 and a["Wavy_Hair"] == 1)
        by_identity[label_of[name]].append(a)
    for images in by_identity.values():  # traits of the person, not of the photo
        for trait in ("Male", "Eyeglasses", "Bald", "Pale_Skin", "Big_Nose", "Young"):
            assert len({a[trait] for a in images}) == 1, trait
    # both values of the common attributes occur in a set of 24 people
    for name in ("Male", "Smiling", "Mouth_Slightly_Open", "Young", "No_Beard"):
        assert {a[name] for a in rows.values()} == {-1, 1}, name


def test_haar_finds_exactly_one_face_in_nearly_every_image(small: Path):
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert not cascade.empty()
    counts = []
    for path in sorted((small / "img_celeba").glob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        counts.append(len(cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))))
    rate = np.mean(np.asarray(counts) == 1)
    assert len(counts) == N_IDS * PER_ID
    assert rate >= 0.9, f"Haar found exactly one face in {rate:.1%} of images; counts {Counter(counts)}"


def test_deterministic_per_seed_and_seeds_differ(tmp_path: Path):
    a = generate_synthetic(tmp_path / "a", 3, 2, seed=5, progress=False)
    b = generate_synthetic(tmp_path / "b", 3, 2, seed=5, progress=False)
    c = generate_synthetic(tmp_path / "c", 3, 2, seed=6, progress=False)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert len(da) == 6 + 3 and da == db
    images = [k for k in da if k.startswith("img_celeba")]
    assert all(da[k] != dc[k] for k in images)


def test_rerun_is_a_no_op_and_new_parameters_regenerate(tmp_path: Path):
    root = generate_synthetic(tmp_path / "ds", 3, 3, seed=1, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert generate_synthetic(root, 3, 3, seed=1, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps

    generate_synthetic(root, 3, 2, seed=1, progress=False)  # fewer images: the stale ones go
    assert sorted(p.name for p in (root / "img_celeba").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 7)]
    assert (root / "list_attr_celeba.txt").read_text().splitlines()[0] == "6"
    assert json.loads((root / MARKER_FILE).read_text())["params"]["images_per_identity"] == 2


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path: Path):
    root = generate_synthetic(tmp_path / "ds", 3, 2, seed=2, progress=False)
    before = _digests(root)
    # what a crash mid-way leaves: an incomplete marker, some images, no annotation files
    marker = json.loads((root / MARKER_FILE).read_text())
    marker["complete"] = False
    (root / MARKER_FILE).write_text(json.dumps(marker))
    (root / "img_celeba" / "000004.jpg").unlink()
    (root / "list_attr_celeba.txt").unlink()
    generate_synthetic(root, 3, 2, seed=2, progress=False)
    assert _digests(root) == before
    assert json.loads((root / MARKER_FILE).read_text())["complete"] is True


def test_refuses_a_folder_with_other_data(tmp_path: Path):
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 1\n")
    with pytest.raises(ConfigError, match=r"root=.* has files but no SYNTHETIC\.json"):
        generate_synthetic(tmp_path, 2, 2, progress=False)
    assert (tmp_path / "identity_CelebA.txt").read_text() == "000001.jpg 1\n"


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"n_identities": 1}, r"n_identities=1 is invalid: expected an integer >= 2"),
        ({"images_per_identity": 1}, r"images_per_identity=1 is invalid: expected an integer >= 2"),
        ({"n_identities": 2.5}, r"n_identities=2\.5 is invalid: expected an integer >= 2"),
        ({"seed": -3}, r"seed=-3 is invalid: expected a non-negative integer"),
        ({"image_size": (10, 10)}, r"image_size=\(10, 10\) is invalid: expected \(width, height\), two integers in \[96, 2048\]"),
        ({"image_size": "178x218"}, r"image_size='178x218' is invalid: expected \(width, height\)"),
        ({"image_size": (178, 218, 3)}, r"image_size=\(178, 218, 3\) is invalid"),
    ],
)
def test_bad_arguments_raise_config_error_before_writing(tmp_path: Path, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        generate_synthetic(tmp_path / "ds", **{"n_identities": 2, "images_per_identity": 2, **kwargs}, progress=False)
    assert not (tmp_path / "ds").exists()


def test_other_image_size(tmp_path: Path):
    root = generate_synthetic(tmp_path / "ds", 2, 2, image_size=(128, 160), progress=False)
    img = cv2.imread(str(root / "img_celeba" / "000001.jpg"))
    assert img.shape == (160, 128, 3)


def test_default_dir_and_ensure(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    assert default_synthetic_dir() == tmp_path / "cache" / "synthetic-v1"
    root = ensure_synthetic(n_identities=2, images_per_identity=2, progress=False)
    assert root == tmp_path / "cache" / "synthetic-v1"
    assert (root / "list_eval_partition.txt").is_file()
    monkeypatch.delenv("FACEREC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_synthetic_dir() == tmp_path / "home" / ".cache" / "facerec" / "synthetic-v1"


def test_loads_with_the_celeba_reader(small: Path):
    df = load_celeba(small)
    assert len(df) == N_IDS * PER_ID
    assert df["identity"].nunique() == N_IDS
    assert set(ATTRIBUTE_NAMES) <= set(df.columns)
    # every value as the files spell it, parsed here independently
    assert list(zip(df["image_id"], df["identity"])) == _pairs(small / "identity_CelebA.txt")
    assert list(zip(df["image_id"], df["partition"])) == _pairs(small / "list_eval_partition.txt")
    attr_lines = (small / "list_attr_celeba.txt").read_text().splitlines()[2:]
    np.testing.assert_array_equal(df[list(ATTRIBUTE_NAMES)].to_numpy(),
                                  [[int(v) for v in line.split()[1:]] for line in attr_lines])


def test_concurrent_callers_share_one_generation(tmp_path: Path):
    """Two processes asking for the same folder at once (say, parallel test workers reaching for
    the default cache) both return a complete folder, identical to a lone run."""
    import subprocess
    import sys

    code = (
        "import sys; from facerec.data.synth import generate_synthetic; "
        "generate_synthetic(sys.argv[1], 3, 2, seed=4, progress=False)"
    )
    shared = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(shared)], stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    alone = generate_synthetic(tmp_path / "alone", 3, 2, seed=4, progress=False)
    assert _digests(shared) == _digests(alone)
    assert json.loads((shared / MARKER_FILE).read_text())["complete"] is True
