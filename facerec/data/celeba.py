"""Reading the official CelebA annotation layout (Liu et al., "Deep Learning Face Attributes in
the Wild", ICCV 2015).

```
ROOT/img_align_celeba/ or ROOT/img_celeba/     the photos
ROOT/identity_CelebA.txt        "000001.jpg 2880"                       (required)
ROOT/list_attr_celeba.txt       count line, 40 names, rows of -1/1      (optional)
ROOT/list_eval_partition.txt    "000001.jpg 0"  0 train / 1 val / 2 test (optional)
ROOT/list_bbox_celeba.txt       count line, header, image_id x_1 y_1 width height (optional)
ROOT/list_landmarks_celeba.txt  or list_landmarks_align_celeba.txt      (optional)
```

Parsing goes through pandas' C tokenizer, so the 202,599-row files load in well under a second;
validation is vectorised too, and the first bad row is reported with its file and line number.
Both LF and CRLF line endings are accepted.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from facerec.data.schema import ATTRIBUTE_NAMES
from facerec.errors import AnnotationError, DataNotFoundError

IDENTITY_FILE = "identity_CelebA.txt"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
BBOX_FILE = "list_bbox_celeba.txt"
LANDMARK_FILES = ("list_landmarks_celeba.txt", "list_landmarks_align_celeba.txt")
IMAGE_DIRS = ("img_align_celeba", "img_celeba")


def _read_rows(path: Path, first_line: int, ncols: int, what: str) -> pd.DataFrame:
    """Whitespace-separated rows of exactly ``ncols`` tokens starting at 1-based line
    ``first_line``; the result carries a ``_line`` column with each row's line number."""
    # One spare column catches rows with too many fields; ``index_col=False`` stops pandas from
    # silently turning the extra fields of a long *first* row into an index (which shifted the
    # columns and blamed the wrong line). The warning it emits for that case is the error below.
    # Only the image name is read as text: the C parser's own integer inference is ~50x faster
    # than ``to_numeric`` over 202,599 x 40 string cells (seconds -> well under one).
    # ``keep_default_na=False``: a token such as "NA" or "nan" is a bad value to report, not a missing field.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(
                path, sep=r"\s+", header=None, names=range(ncols + 1), skiprows=first_line - 1,
                dtype={0: str}, skip_blank_lines=False, engine="c", index_col=False,
                keep_default_na=False, na_values=[""],
            )
    except pd.errors.ParserError as e:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            line = int(m.group(2)) + first_line - 1
            raise AnnotationError(path, line, f"expected {ncols} fields ({what}), found {m.group(3)}") from None
        raise AnnotationError(path, None, f"cannot parse: {e}") from None
    except pd.errors.EmptyDataError:
        df = pd.DataFrame(columns=range(ncols + 1), dtype=str)
    df["_line"] = np.arange(first_line, first_line + len(df))
    blank = df[list(range(ncols + 1))].isna().all(axis=1)
    df = df[~blank]
    wrong = df[list(range(ncols))].isna().any(axis=1) | df[ncols].notna()
    if wrong.any():
        line = int(df.loc[wrong, "_line"].iloc[0])
        raise AnnotationError(path, line, f"expected {ncols} fields ({what}), found {len(_line_tokens(path, line))}")
    return df.drop(columns=[ncols]).reset_index(drop=True)


def _line_tokens(path: Path, line: int) -> list[str]:
    """Tokens of 1-based ``line`` as written (read again only to word an error message exactly)."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for i, text in enumerate(f, start=1):
            if i == line:
                return text.split()
    return []


def _to_int(df: pd.DataFrame, col: int, path: Path, field: str, allowed: set[int] | None = None) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    # to_numeric accepts "1.5" (which the int cast below would truncate to 1) and returns a float
    # for numbers past int64 (which the cast would wrap): both are non-integers here.
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = pd.Series(~np.isfinite(v) | (v != np.floor(v)) | (np.abs(v) >= 2.0**63), index=values.index)
    if values.dtype == bool:  # the C parser reads a column of only True/False words as booleans
        bad[:] = True
    if allowed is not None:
        bad |= ~values.isin(list(allowed))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        want = f"one of {sorted(allowed)}" if allowed is not None else "an integer"
        line = int(df["_line"].iloc[i])
        tokens = _line_tokens(path, line)
        token = tokens[col] if col < len(tokens) else str(df[col].iloc[i])
        raise AnnotationError(path, line, f"{field} is {token!r}, expected {want}")
    return values.to_numpy(dtype=np.int64)


def _read_count_file(path: Path, names_expected: tuple[str, ...] | None, what: str) -> tuple[list[str], pd.DataFrame]:
    """CelebA's 'count line, header line, rows' format (attributes, boxes, landmarks)."""
    with open(path, "r", encoding="utf-8", errors="replace", newline=None) as f:
        count_line = f.readline().strip()
        header = f.readline().split()
    if not count_line.isdigit():
        raise AnnotationError(path, 1, f"expected the number of rows, found {count_line[:40]!r}")
    if header and header[0] == "image_id":  # the bbox/landmark files name the first column
        header = header[1:]
    if names_expected is not None and tuple(header) != names_expected:
        raise AnnotationError(
            path, 2, f"expected the {len(names_expected)} {what} names of the official file, found {len(header)} names "
            f"starting {header[:3]}"
        )
    if not header:
        raise AnnotationError(path, 2, f"expected a header line of {what} names, found an empty line")
    df = _read_rows(path, 3, len(header) + 1, f"image name + {len(header)} {what}")
    if int(count_line) != len(df):
        raise AnnotationError(path, 1, f"count line says {count_line} rows but the file has {len(df)}")
    return header, df


def read_identities(path: str | Path) -> pd.DataFrame:
    """``identity_CelebA.txt`` -> DataFrame(image_id, identity), rows in file order (duplicates kept)."""
    path = Path(path)
    df = _read_rows(path, 1, 2, "image name and identity")
    return pd.DataFrame({"image_id": df[0].to_numpy(), "identity": _to_int(df, 1, path, "identity")})


def read_attributes(path: str | Path) -> pd.DataFrame:
    """``list_attr_celeba.txt`` -> DataFrame(image_id, 40 int8 columns of -1/1)."""
    path = Path(path)
    names, df = _read_count_file(path, ATTRIBUTE_NAMES, "attribute")
    out = {"image_id": df[0].to_numpy()}
    for j, name in enumerate(names, start=1):
        out[name] = _to_int(df, j, path, f"attribute {name}", {-1, 1}).astype(np.int8)
    return pd.DataFrame(out)


def read_partition(path: str | Path) -> pd.DataFrame:
    """``list_eval_partition.txt`` -> DataFrame(image_id, partition in {0, 1, 2})."""
    path = Path(path)
    df = _read_rows(path, 1, 2, "image name and partition")
    return pd.DataFrame({"image_id": df[0].to_numpy(), "partition": _to_int(df, 1, path, "partition", {0, 1, 2}).astype(np.int8)})


def read_boxes(path: str | Path, prefix: str) -> pd.DataFrame:
    """The bbox or landmark file -> DataFrame(image_id, <prefix><name> int columns)."""
    path = Path(path)
    names, df = _read_count_file(path, None, "coordinate")
    out = {"image_id": df[0].to_numpy()}
    for j, name in enumerate(names, start=1):
        out[prefix + name] = _to_int(df, j, path, name).astype(np.int32)
    return pd.DataFrame(out)


def find_image_dir(root: str | Path) -> Path:
    root = Path(root)
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(
        f"{root} has no image folder: expected one of {', '.join(IMAGE_DIRS)} (the official CelebA layout). "
        "Point --data at the folder that holds identity_CelebA.txt and img_align_celeba/."
    )


def load_celeba(root: str | Path) -> pd.DataFrame:
    """All listed images of a CelebA-layout folder.

    Returns one row per line of ``identity_CelebA.txt`` (duplicates kept, so the caller can
    report them) with columns image_id, identity, partition (-1 when there is no partition file
    or the image is absent from it), the 40 attributes (0 = unknown when there is no attribute
    file or the image is absent from it), and the optional bbox/landmark columns.
    ``df.attrs`` holds ``image_dir`` and which optional files were found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {root} does not exist. Pass --data PATH to a CelebA-layout folder, "
                                "or omit --data to use the embedded synthetic dataset.")
    ident_path = root / IDENTITY_FILE
    if not ident_path.is_file():
        raise DataNotFoundError(f"{ident_path} not found: a CelebA-layout folder needs {IDENTITY_FILE} "
                                "(lines 'IMAGE IDENTITY').")
    image_dir = find_image_dir(root)
    df = read_identities(ident_path)
    found = {"identities": True}

    def merge(extra: pd.DataFrame, fill: dict) -> pd.DataFrame:
        extra = extra.drop_duplicates("image_id", keep="first")
        merged = df.merge(extra, on="image_id", how="left")
        for col, value in fill.items():
            merged[col] = merged[col].fillna(value).astype(type(value) if not isinstance(value, np.generic) else value.dtype)
        return merged

    attr_path = root / ATTR_FILE
    if attr_path.is_file():
        df = merge(read_attributes(attr_path), {n: np.int8(0) for n in ATTRIBUTE_NAMES})
        found["attributes"] = True
    else:
        for n in ATTRIBUTE_NAMES:
            df[n] = np.int8(0)
        found["attributes"] = False
    part_path = root / PARTITION_FILE
    if part_path.is_file():
        df = merge(read_partition(part_path), {"partition": np.int8(-1)})
        found["partition"] = True
    else:
        df["partition"] = np.int8(-1)
        found["partition"] = False
    if (root / BBOX_FILE).is_file():
        boxes = read_boxes(root / BBOX_FILE, "celeba_bbox_")
        df = merge(boxes, {c: np.int32(-1) for c in boxes.columns if c != "image_id"})
        found["bbox"] = True
    for name in LANDMARK_FILES:
        if (root / name).is_file():
            marks = read_boxes(root / name, "celeba_lm_")
            df = merge(marks, {c: np.int32(-1) for c in marks.columns if c != "image_id"})
            found["landmarks"] = name
            break
    cols = ["image_id", "identity", "partition", *ATTRIBUTE_NAMES]
    df = df[cols + [c for c in df.columns if c not in cols]]
    df.attrs["image_dir"] = str(image_dir)
    df.attrs["found"] = found
    return df
