"""CelebA annotation reader: the official formats (LF and CRLF), optional files, every kind of
malformed line reported with its file and line, missing files, and a full-size (202,599-row) load."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from facerec.data.celeba import load_celeba, read_attributes, read_boxes, read_identities, read_partition
from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import AnnotationError, DataNotFoundError

NAMES_LINE = " ".join(ATTRIBUTE_NAMES)
BBOX_HEADER = "image_id x_1 y_1 width height"
LM_HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


def _write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def _attr_row(image_id: str, values) -> str:
    # the official file right-aligns values in 2 columns: "000001.jpg -1  1  1 -1 ..."
    return image_id + " " + " ".join(f"{int(v):2d}" for v in values)


def _attr_lines(rows: dict[str, list[int]], count: int | None = None, names: str = NAMES_LINE) -> list[str]:
    return [str(len(rows) if count is None else count), names + " "] + [_attr_row(k, v) for k, v in rows.items()]


def _attrs(seed: int) -> list[int]:
    return list(np.random.default_rng(seed).choice([-1, 1], size=40))


def _err(path: Path, line: int, text: str) -> str:
    """The start of an AnnotationError message, as a regex: the file, the line, then ``text``."""
    return "^" + re.escape(f"{path}, line {line}: {text}")


# --------------------------------------------------------------------------- full layout


def _official_folder(root: Path, newline: str) -> Path:
    (root / "img_align_celeba").mkdir(parents=True)
    _write(root / "identity_CelebA.txt",
           ["000001.jpg 2880", "000002.jpg 2937", "000003.jpg 8692", "000004.jpg 2880", "000005.jpg 5"], newline)
    rows = {f"00000{i}.jpg": _attrs(i) for i in (1, 2, 3, 4)}  # 000005.jpg has no attribute row
    _write(root / "list_attr_celeba.txt", _attr_lines(rows), newline)
    _write(root / "list_eval_partition.txt", ["000001.jpg 0", "000002.jpg 1", "000003.jpg 2", "000004.jpg 0"], newline)
    _write(root / "list_bbox_celeba.txt",
           ["5", BBOX_HEADER, "000001.jpg    95  71 226 313", "000002.jpg    72  94 221 306", "000003.jpg   216  59  91 126",
            "000004.jpg   622 257 564 781", "000005.jpg   236 109 120 166"], newline)
    _write(root / "list_landmarks_align_celeba.txt",
           ["2", LM_HEADER, "000001.jpg 69  109  106  113   77  142   73  152  108  154",
            "000003.jpg 76  112  104  106  108  128   74  156   98  158"], newline)
    return root


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_official_layout_all_files(tmp_path, newline):
    root = _official_folder(tmp_path / "celeba", newline)
    df = load_celeba(root)

    assert list(df["image_id"]) == [f"00000{i}.jpg" for i in range(1, 6)]
    assert list(df["identity"]) == [2880, 2937, 8692, 2880, 5]
    assert df["identity"].dtype == np.int64
    assert list(df.columns[:43]) == ["image_id", "identity", "partition", *ATTRIBUTE_NAMES]
    # partitions as written; 000005.jpg is absent from the partition file -> -1
    assert list(df["partition"]) == [0, 1, 2, 0, -1]
    assert df["partition"].dtype == np.int8
    for i in (1, 2, 3, 4):
        np.testing.assert_array_equal(df.loc[i - 1, list(ATTRIBUTE_NAMES)].to_numpy(dtype=int), _attrs(i))
    # absent from the attribute file -> 0 ("unknown"), never a made-up -1/1
    assert (df.loc[4, list(ATTRIBUTE_NAMES)] == 0).all()
    assert all(df[a].dtype == np.int8 for a in ATTRIBUTE_NAMES)
    # boxes for every row; landmarks only for 000001 and 000003
    assert list(df["celeba_bbox_x_1"]) == [95, 72, 216, 622, 236]
    assert list(df["celeba_bbox_height"]) == [313, 306, 126, 781, 166]
    assert list(df["celeba_lm_lefteye_x"]) == [69, -1, 76, -1, -1]
    assert list(df["celeba_lm_rightmouth_y"]) == [154, -1, 158, -1, -1]
    assert df.attrs["image_dir"] == str(root / "img_align_celeba")
    assert df.attrs["found"] == {"identities": True, "attributes": True, "partition": True, "bbox": True,
                                 "landmarks": "list_landmarks_align_celeba.txt"}


def test_identity_file_only_and_img_celeba_folder(tmp_path):
    (tmp_path / "img_celeba").mkdir()
    _write(tmp_path / "identity_CelebA.txt", ["000010.jpg 7", "000011.jpg 7", "000010.jpg 7"])
    df = load_celeba(tmp_path)
    assert list(df["image_id"]) == ["000010.jpg", "000011.jpg", "000010.jpg"]  # duplicates kept for the caller
    assert (df["partition"] == -1).all()
    assert (df[list(ATTRIBUTE_NAMES)] == 0).all().all()
    assert df.attrs["image_dir"] == str(tmp_path / "img_celeba")
    assert df.attrs["found"] == {"identities": True, "attributes": False, "partition": False}
    assert not any(c.startswith("celeba_") for c in df.columns)


def test_leading_zeros_and_whitespace_variants(tmp_path):
    # tabs, several spaces, trailing blanks, a final blank line: all whitespace-separated
    path = _write(tmp_path / "identity_CelebA.txt", ["000001.jpg\t12 ", "000002.jpg    0012", "000003.jpg 3\t", ""])
    df = read_identities(path)
    assert list(df["image_id"]) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert list(df["identity"]) == [12, 12, 3]


def test_read_attributes_and_partition_directly(tmp_path):
    rows = {"a.jpg": [1] * 40, "b.jpg": [-1] * 40}
    attrs = read_attributes(_write(tmp_path / "attr.txt", _attr_lines(rows), "\r\n"))
    assert list(attrs.columns) == ["image_id", *ATTRIBUTE_NAMES]
    assert (attrs.loc[0, list(ATTRIBUTE_NAMES)] == 1).all() and (attrs.loc[1, list(ATTRIBUTE_NAMES)] == -1).all()
    part = read_partition(_write(tmp_path / "part.txt", ["a.jpg 2", "b.jpg 1"]))
    assert part.to_dict("list") == {"image_id": ["a.jpg", "b.jpg"], "partition": [2, 1]}


# --------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    "lines, line, message",
    [
        (["000001.jpg 1", "000002.jpg", "000003.jpg 3"], 2, "expected 2 fields (image name and identity), found 1"),
        (["000001.jpg 1", "000002.jpg 2 5", "000003.jpg 3"], 2, "expected 2 fields (image name and identity), found 3"),
        # a long *first* row must not be mistaken for an index column
        (["000001.jpg 1 5", "000002.jpg 2"], 1, "expected 2 fields (image name and identity), found 3"),
        (["000001.jpg 1", "000002.jpg 2", "000003.jpg 3 4 5"], 3, "expected 2 fields (image name and identity), found 4"),
        (["000001.jpg 1", "", "000002.jpg two"], 3, "identity is 'two', expected an integer"),
        (["000001.jpg 1", "000002.jpg 1.5"], 2, "identity is '1.5', expected an integer"),
        (["000001.jpg 99999999999999999999999"], 1, "identity is '99999999999999999999999', expected an integer"),
        # words pandas would otherwise read as missing or boolean are bad values too
        (["000001.jpg 1", "000002.jpg NA"], 2, "identity is 'NA', expected an integer"),
        (["000001.jpg True", "000002.jpg False"], 1, "identity is 'True', expected an integer"),
    ],
    ids=["too-few", "too-many", "too-many-first-row", "too-many-last-row", "word", "fraction", "overflow", "NA",
         "boolean"],
)
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_malformed_identity_file_names_file_and_line(tmp_path, lines, line, message, newline):
    path = _write(tmp_path / "identity_CelebA.txt", lines, newline)
    with pytest.raises(AnnotationError, match=_err(path, line, message)) as info:
        read_identities(path)
    assert info.value.path == str(path) and info.value.line == line


def _bad_attr_lines(case: str) -> tuple[list[str], int, str]:
    rows = {f"00000{i}.jpg": [1, -1] * 20 for i in range(1, 5)}
    if case == "value-0":
        rows["000002.jpg"] = [1, -1] * 19 + [1, 0]
        return _attr_lines(rows), 4, "attribute Young is '0', expected one of [-1, 1]"
    if case == "value-2":
        rows["000004.jpg"] = [2] + [-1] + [1, -1] * 19
        return _attr_lines(rows), 6, "attribute 5_o_Clock_Shadow is '2', expected one of [-1, 1]"
    if case == "count-too-big":
        return _attr_lines(rows, count=5), 1, "count line says 5 rows but the file has 4"
    if case == "count-not-a-number":
        lines = _attr_lines(rows)
        lines[0] = "four"
        return lines, 1, "expected the number of rows, found 'four'"
    if case == "count-missing":  # the file starts with the header
        return _attr_lines(rows)[1:], 1, "expected the number of rows, found '5_o_Clock_Shadow Arched_Eyebrows"
    if case == "header-renamed":
        return _attr_lines(rows, names=NAMES_LINE.replace("Smiling", "Smile")), 2, "expected the 40 attribute names"
    if case == "header-39-names":
        return _attr_lines(rows, names=" ".join(ATTRIBUTE_NAMES[:-1])), 2, \
            "expected the 40 attribute names of the official file, found 39 names"
    if case == "row-39-values":
        lines = _attr_lines(rows)
        lines[3] = _attr_row("000002.jpg", [1] * 39)
        return lines, 4, "expected 41 fields (image name + 40 attribute), found 40"
    if case == "row-41-values":
        lines = _attr_lines(rows)
        lines[2] = _attr_row("000001.jpg", [1] * 41)
        return lines, 3, "expected 41 fields (image name + 40 attribute), found 42"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["value-0", "value-2", "count-too-big", "count-not-a-number", "count-missing",
                                  "header-renamed", "header-39-names", "row-39-values", "row-41-values"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_malformed_attribute_file_names_file_and_line(tmp_path, case, newline):
    lines, line, message = _bad_attr_lines(case)
    path = _write(tmp_path / "list_attr_celeba.txt", lines, newline)
    with pytest.raises(AnnotationError, match=_err(path, line, message)):
        read_attributes(path)


def test_malformed_attribute_file_fails_load_celeba(tmp_path):
    root = _official_folder(tmp_path / "celeba", "\n")
    lines, line, message = _bad_attr_lines("value-2")
    _write(root / "list_attr_celeba.txt", lines)
    with pytest.raises(AnnotationError, match=_err(root / "list_attr_celeba.txt", line, message)):
        load_celeba(root)


def test_malformed_partition_and_box_files(tmp_path):
    part = _write(tmp_path / "list_eval_partition.txt", ["000001.jpg 0", "000002.jpg 3"])
    with pytest.raises(AnnotationError, match=_err(part, 2, "partition is '3', expected one of [0, 1, 2]")):
        read_partition(part)
    boxes = _write(tmp_path / "list_bbox_celeba.txt", ["2", BBOX_HEADER, "000001.jpg 95 71 226 313", "000002.jpg 72 x 221 306"])
    with pytest.raises(AnnotationError, match=_err(boxes, 4, "y_1 is 'x', expected an integer")):
        read_boxes(boxes, "b_")
    short = _write(tmp_path / "short_bbox.txt", ["1", BBOX_HEADER, "000001.jpg 95 71 226"])
    with pytest.raises(AnnotationError, match=_err(short, 3, "expected 5 fields (image name + 4 coordinate), found 4")):
        read_boxes(short, "b_")
    no_header = _write(tmp_path / "no_header.txt", ["1", "", "000001.jpg 95 71 226 313"])
    with pytest.raises(AnnotationError, match=_err(no_header, 2, "expected a header line of coordinate names")):
        read_boxes(no_header, "b_")


def test_error_is_a_value_error_for_callers():
    # callers that catch ValueError keep working
    assert issubclass(AnnotationError, ValueError)
    assert issubclass(DataNotFoundError, FileNotFoundError)


# --------------------------------------------------------------------------- missing data


def test_missing_root_identity_file_or_image_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match=re.escape(f"data folder {tmp_path / 'nope'} does not exist")):
        load_celeba(tmp_path / "nope")
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(DataNotFoundError, match=re.escape(f"{tmp_path / 'identity_CelebA.txt'} not found")):
        load_celeba(tmp_path)
    (tmp_path / "img_align_celeba").rmdir()
    _write(tmp_path / "identity_CelebA.txt", ["000001.jpg 1"])
    with pytest.raises(DataNotFoundError, match=r"has no image folder: expected one of img_align_celeba, img_celeba"):
        load_celeba(tmp_path)
    (tmp_path / "img_celeba").write_text("a file, not a folder")
    with pytest.raises(DataNotFoundError, match="has no image folder"):
        load_celeba(tmp_path)


# --------------------------------------------------------------------------- full size

N_FULL = 202_599


def _fixed_width_lines(cells: np.ndarray, newline: bytes) -> bytes:
    """(n, width) uint8 character matrix + newline -> file bytes, without a per-line Python loop."""
    nl = np.frombuffer(newline, np.uint8)
    return np.hstack([cells, np.broadcast_to(nl, (len(cells), len(nl)))]).tobytes()


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) non-negative ints -> (n, width) ASCII digits, zero padded."""
    powers = 10 ** np.arange(width - 1, -1, -1)
    return (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def test_full_size_identity_and_attribute_files(tmp_path):
    rng = np.random.default_rng(7)
    n = N_FULL
    names = np.hstack([_digits(np.arange(1, n + 1), 6), np.frombuffer(b".jpg", np.uint8)[None].repeat(n, 0)])
    identities = rng.integers(1, 10_178, n)
    attrs = rng.choice(np.array([-1, 1], np.int8), size=(n, 40))

    space = np.full((n, 1), ord(" "), np.uint8)
    # identities right-aligned with spaces, like "000001.jpg  2880"
    ident_digits = _digits(identities, 5)
    leading = np.cumprod(ident_digits == ord("0"), axis=1).astype(bool)
    leading[:, -1] = False
    ident_digits[leading] = ord(" ")
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "identity_CelebA.txt").write_bytes(_fixed_width_lines(np.hstack([names, space, ident_digits]), b"\n"))
    # attribute values as " 1" / "-1" after a space, CRLF line ends like the official file
    cells = np.empty((n, 40, 3), np.uint8)
    cells[:, :, 0] = ord(" ")
    cells[:, :, 1] = np.where(attrs == 1, ord(" "), ord("-"))
    cells[:, :, 2] = ord("1")
    header = f"{n}\r\n{NAMES_LINE} \r\n".encode()
    (tmp_path / "list_attr_celeba.txt").write_bytes(
        header + _fixed_width_lines(np.hstack([names, cells.reshape(n, 120)]), b"\r\n"))

    df = load_celeba(tmp_path)  # a per-line Python loop would take minutes here; pandas' C parser takes ~1 s

    assert len(df) == n
    np.testing.assert_array_equal(df["identity"].to_numpy(), identities)
    np.testing.assert_array_equal(df[list(ATTRIBUTE_NAMES)].to_numpy(), attrs)
    for i in np.random.default_rng(1).choice(n, size=5, replace=False):
        assert df["image_id"].iloc[i] == f"{i + 1:06d}.jpg"
        assert df["identity"].iloc[i] == identities[i]
        assert df.loc[i, "Young"] == attrs[i, 39] and df.loc[i, "5_o_Clock_Shadow"] == attrs[i, 0]
    assert df.iloc[-1]["image_id"] == "202599.jpg"


# --------------------------------------------------------------------------- real data


@pytest.mark.shared
def test_real_celeba_sample(celeba_sample):
    root = celeba_sample
    df = load_celeba(root)
    # the sample's size (README: 5,101 photos), and every row as the text files spell it, split here
    idents = [line.split() for line in (root / "identity_CelebA.txt").read_text().splitlines() if line.strip()]
    assert len(df) == len(idents) == 5101 and df["identity"].nunique() == len({i for _, i in idents}) == 239
    assert list(df["image_id"]) == [n for n, _ in idents] and list(df["identity"]) == [int(i) for _, i in idents]
    parts = dict(line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines() if line.strip())
    assert list(df["partition"]) == [int(parts.get(n, -1)) for n, _ in idents]
    assert df.attrs["found"]["attributes"] and df.attrs["found"]["partition"]
    assert set(np.unique(df[list(ATTRIBUTE_NAMES)].to_numpy())) == {-1, 1}
    assert set(df["partition"]) <= {0, 1, 2}
    # the first line of each file, checked against the text itself
    first_ident = (root / "identity_CelebA.txt").read_text().split()
    assert df["image_id"].iloc[0] == first_ident[0] and df["identity"].iloc[0] == int(first_ident[1])
    first_attr = (root / "list_attr_celeba.txt").read_text().splitlines()[2].split()
    row = df.set_index("image_id").loc[first_attr[0], list(ATTRIBUTE_NAMES)]
    assert list(row) == [int(v) for v in first_attr[1:]]
