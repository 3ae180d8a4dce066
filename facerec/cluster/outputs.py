"""What ``facerec cluster`` writes into ``--out``, each file atomically (temp file, then rename):

    people.parquet      one row per face: face (its crop), photo, box_x/y/w/h, person (-1: unassigned),
                        cluster (never -1), confidence, model_id
    people/             a contact sheet per person, person-<id>.png (its most confident faces first);
                        the folder swapped in whole
    summary.json        counts, thresholds and where they came from, seconds per stage
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PEOPLE_TABLE = "people.parquet"
SHEETS = "people"
SUMMARY = "summary.json"


def people_table(faces: pd.DataFrame, groups: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                 model_id: str) -> pd.DataFrame:
    out = pd.DataFrame({"face": faces["crop_path"].to_numpy(), "photo": faces["image_id"].to_numpy()})
    for col in ("box_x", "box_y", "box_w", "box_h"):
        out[col] = faces[col].to_numpy().astype(np.int32)
    out["person"] = labels.astype(np.int64)
    out["cluster"] = groups.astype(np.int64)
    out["confidence"] = confidence.astype(np.float32)
    out["model_id"] = model_id
    return out


def contact_sheet(paths: list[Path], title: str, side: int = 96, cols: int = 8) -> np.ndarray:
    import cv2

    from facerec.data.images import read_image

    rows = max(1, math.ceil(len(paths) / cols))
    sheet = np.full((24 + rows * side, cols * side, 3), 255, np.uint8)
    cv2.putText(sheet, title[:60], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k, p in enumerate(paths):
        r, c = divmod(k, cols)
        sheet[24 + r * side:24 + (r + 1) * side, c * side:(c + 1) * side] = cv2.resize(
            read_image(p), (side, side), interpolation=cv2.INTER_AREA)
    return sheet


def write_outputs(out: Path, people: pd.DataFrame, crops_dir: Path, summary: dict[str, Any],
                  sheet_faces: int = 24, progress: bool = True) -> None:
    from facerec.data.images import encode_png
    from facerec.io import atomic_write_json, atomic_write_parquet, publish_folder
    from facerec.progress import Progress

    out.mkdir(parents=True, exist_ok=True)
    assigned = people[people["person"] >= 0]
    with publish_folder(out / SHEETS) as tmp, \
            Progress(int(assigned["person"].nunique()), "contact sheets", "person", enabled=progress) as bar:
        for person, rows in assigned.groupby("person", sort=True):
            rows = rows.sort_values("confidence", ascending=False).head(sheet_faces)
            png = encode_png(contact_sheet([crops_dir / f for f in rows["face"]],
                                           f"person {person}: {int((people['person'] == person).sum())} faces"))
            (tmp / f"person-{int(person):05d}.png").write_bytes(png)
            bar.update(1)
    atomic_write_parquet(out / PEOPLE_TABLE, people, metadata={"model_id": summary.get("model_id"),
                                                               "thresholds": summary.get("thresholds")})
    atomic_write_json(out / SUMMARY, summary)


def one_line(summary: dict[str, Any]) -> str:
    return (f"facerec cluster: {summary['faces']} faces in {summary['photos']} photos -> {summary['people']} people "
            f"(>= {summary['min_faces']} faces), {summary['unassigned']} unassigned; "
            f"{summary['new_faces']} new faces ({summary['mode']}); {summary['seconds']['total']} s -> {summary['out']}")
