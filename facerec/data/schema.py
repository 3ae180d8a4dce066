"""The contract between stages: the crops folder that ``facerec preprocess`` writes.

```
OUT/
  crops/<image_id>.png        the model inputs (face crops or aligned chips), PNG, size x size
  crops.parquet               one row per kept image, columns below; schema metadata ``facerec``
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
    "crop_path",   # str, relative to OUT, e.g. "crops/000114.jpg"
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


def load_crops(out_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read ``OUT/crops.parquet`` and its metadata; a clear error if the folder is not a
    finished preprocess output."""
    from facerec.errors import DataNotFoundError
    from facerec.io import read_parquet_metadata

    path = Path(out_dir) / CROPS_TABLE
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found: {out_dir} is not a preprocessed folder. "
            f"Run `facerec preprocess --data PHOTOS --out {out_dir}` first."
        )
    df = pd.read_parquet(path)
    return df, read_parquet_metadata(path)
