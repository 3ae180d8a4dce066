"""The retrieval grid of the original study's Figure 3.2: one query crop and its ranks 1-9."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from facerec.errors import ConfigError
from facerec.io import atomic_write_bytes

GRID_RANKS = 9


def retrieval_grid(query_image: np.ndarray, result_images: Sequence[np.ndarray], target: str | os.PathLike,
                   title: str = "", query_label: str = "", result_labels: Sequence[str] | None = None,
                   matches: Sequence[bool] | None = None) -> Path:
    """Write a PNG: the query (left, blue frame) then results ranked 1.. (green frame: same
    identity as the query, red: another one). ``*_image`` are H x W x 3 uint8 RGB crops."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    from matplotlib.figure import Figure

    if not result_images:
        raise ConfigError("result_images", 0, "at least one retrieved crop")
    n = len(result_images)
    labels = list(result_labels) if result_labels is not None else [""] * n
    flags = list(matches) if matches is not None else [None] * n
    if len(labels) != n or len(flags) != n:
        raise ConfigError("result_labels/matches", (len(labels), len(flags)), f"one per result image ({n})")
    cols = 1 + min(n, 5)
    rows = 1 + (n - 1) // 5 if n > 5 else 1
    fig = Figure(figsize=(2.0 * cols, 2.75 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def show(ax, img, label, colour):
        ax.imshow(img)
        ax.set_title(label, fontsize=7)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(3)

    show(axes[0, 0], query_image, f"query\n{query_label}", "tab:blue")
    for i, img in enumerate(result_images):
        r, c = divmod(i, 5)
        colour = {True: "tab:green", False: "tab:red", None: "grey"}[flags[i]]
        show(axes[r, 1 + c], img, f"rank {i + 1}\n{labels[i]}", colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close("all")
    target = Path(target)
    atomic_write_bytes(target, buf.getvalue())
    return target
