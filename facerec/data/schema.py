"""The contract between stages: the crops folder that ``facerec preprocess`` writes.

```
OUT/
  crops/<image_id>.png        the model inputs (face crops or aligned chips), PNG, size x size
  crops.parquet               one row per kept face (one per photo unless several_faces="all"),
                              columns below; schema metadata ``facerec``
                              holds {"data_version", "crop_size", "margin", "attribute_names", ...}
  dropped.parquet             the drop manifest: image_id, identity, reason, detail
  summary.json                {"listed", "kept", "dropped": {reason: n}, "identities", "seconds", ...}
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# The 40 CelebA attributes in the order of ``list_attr_celeba.txt``.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

# Columns of crops.parquet besides the 40 attribute columns (int8, -1/1).
CROP_COLUMNS: tuple[str, ...] = (
    "image_id",    # str, CelebA file name, e.g. "000114.jpg"
    "identity",    # int64
    "partition",   # int8: official 0 train / 1 val / 2 test, -1 when no partition file
    "crop_path",   # str, relative to OUT, e.g. "crops/000114.jpg.png"; unique per row (face n > 0 of a
    #                photo kept under several_faces="all": "crops/000114.jpg.face<n>.png")
    "face",        # int16: the face's number in its photo, 0 = largest box; only several_faces="all"
    #                keeps faces after the first, so only then does an image_id repeat
    "box_x", "box_y", "box_w", "box_h",  # int32, detected face box in the original image
    "haar_pass",   # int8: 1 or 2 (Haar's pass 2 = scan step halved); 1 for one-pass detectors
    "score",       # float32: the detector's confidence in the face (1.0 for Haar, which gives none)
    "orig_w", "orig_h",  # int32
)

DROP_REASONS: tuple[str, ...] = (
    "missing",             # listed but no file
    "unreadable",          # zero bytes, truncated, not an image, unsupported
    "too_large",           # over the pixel limit (decompression bomb guard)
    "no_face",             # the detector found no face (Haar: in either pass)
    "too_small",           # every face found was smaller than the gate's min_face
    "low_confidence",      # every face found scored under the gate's min_confidence
    "several_faces",       # several faces accepted (Haar: in both passes) under several_faces=drop
    "duplicate",           # listed more than once (first row kept)
    "identity_too_small",  # identity left with fewer than 2 images
)

CROPS_TABLE = "crops.parquet"
DROPPED_TABLE = "dropped.parquet"
SUMMARY_FILE = "summary.json"


def attributes_matrix(df: pd.DataFrame) -> np.ndarray:
    """(n, 40) int8 matrix of -1/1 attributes in ``ATTRIBUTE_NAMES`` order."""
    return df.loc[:, list(ATTRIBUTE_NAMES)].to_numpy(dtype=np.int8)


def several_faces_of(meta: dict) -> str:
    """The ``several_faces`` rule a crops table was made with (its metadata)."""
    return str(meta.get("several_faces") or "largest")


def require_one_face_per_photo(meta: dict, where: str | Path) -> None:
    """Refuse crops made with ``several_faces="all"`` for a stage that reads one face per photo.

    The stages that read labels (train, evaluate, calibrate, a gallery build) take a row's
    identity to be the person of its face; a photo's label names one person, and "all" gives it
    to every face of the photo, so the other people of a group photo would be trained, scored
    and served as that person."""
    from facerec.errors import ArtifactMismatchError

    if several_faces_of(meta) == "all":
        raise ArtifactMismatchError(
            f"{where}: made with several_faces='all' (every face of a photo, each with the photo's identity), but "
            "this stage needs one face per photo (a photo's label names one person); preprocess the photos again "
            "with --several-faces largest (or drop) into another --out folder (only `facerec cluster` reads every face)")


def load_crops(out_dir: str | Path, several_faces_ok: bool = False) -> tuple[pd.DataFrame, dict]:
    """Read ``OUT/crops.parquet`` and its metadata; a clear error if the folder is not a
    finished preprocess output, or when it holds several faces of a photo (``several_faces="all"``)
    and the caller did not say it reads them (``several_faces_ok``: ``facerec cluster``).
    A table from before the ``face`` column gets ``face`` 0 (it kept one face per photo)."""
    from facerec.errors import ArtifactMismatchError, DataNotFoundError
    from facerec.io import read_parquet_metadata

    path = Path(out_dir) / CROPS_TABLE
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found: {out_dir} is not a preprocessed folder. "
            f"Run `facerec preprocess --data PHOTOS --out {out_dir}` first."
        )
    meta = read_parquet_metadata(path)
    if not several_faces_ok:
        require_one_face_per_photo(meta, path)
    df = pd.read_parquet(path)
    if "face" not in df.columns and "crop_path" in df.columns:
        df.insert(list(df.columns).index("crop_path") + 1, "face", np.zeros(len(df), np.int16))
    if "face" in df.columns and "image_id" in df.columns:
        twice = df.duplicated(["image_id", "face"]).to_numpy()
        if twice.any():
            raise ArtifactMismatchError(f"{path}: photo {df['image_id'].iloc[int(np.argmax(twice))]!r} face "
                                        f"{int(df['face'].iloc[int(np.argmax(twice))])} is listed twice; the table is "
                                        "damaged: preprocess the photos again with --overwrite")
        if several_faces_of(meta) != "all" and (df["face"] != 0).any():
            raise ArtifactMismatchError(f"{path}: faces after the first of a photo in a table made with "
                                        f"several_faces={several_faces_of(meta)!r}; the table is damaged: "
                                        "preprocess the photos again with --overwrite")
    return df, meta
