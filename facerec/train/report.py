"""Sweep outputs: ``RUN/sweep_summary.{md,csv}`` (one row per trial: loss x backbone [x lr x
margin]) and ``RUN/plots/<trial>.png``, the per-trial curves of training loss and seconds per
epoch (the study's Figure 3.1), rebuilt from the trial folders so a report can be regenerated
from a finished (or partly finished) run folder alone."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from facerec.io import atomic_write_bytes, atomic_write_text

SUMMARY_COLUMNS = ["trial", "loss", "backbone", "lr", "loss_params", "status", "epochs", "best_epoch",
                   "val_precision_at_1", "val_map_at_r", "seconds_per_epoch", "images_per_second", "final_loss"]


def read_trials(run_dir: str | os.PathLike) -> list[dict]:
    """The ``result.json`` of every trial folder in ``run_dir`` (sorted by trial name)."""
    rows = []
    for path in sorted(Path(run_dir).glob("*/result.json")):
        rows.append(json.loads(path.read_text()))
    return rows


def summary_frame(rows: Sequence[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    for col in SUMMARY_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df[SUMMARY_COLUMNS].sort_values(["backbone", "loss", "trial"], kind="stable").reset_index(drop=True)


def _markdown(df: pd.DataFrame, title: str) -> str:
    def cell(v, fmt=None):
        if v is None or (isinstance(v, float) and v != v):
            return "n/a"
        return format(v, fmt) if fmt else str(v)

    lines = [f"# {title}", "",
             "Validation: leave-one-out retrieval among held-out identities (identity-disjoint split); "
             "scores of the best epoch by the configured score attribute. Seconds per epoch and images/s "
             "are means over the epochs run (training steps only).", "",
             "| trial | loss | backbone | lr | status | epochs | best epoch | val P@1 | val mAP@R | s/epoch | images/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        lines.append(
            f"| {r.trial} | {r.loss} | {r.backbone} | {cell(r.lr, 'g')} | {r.status} | {cell(r.epochs)} | "
            f"{cell(r.best_epoch)} | {cell(r.val_precision_at_1, '.3f')} | {cell(r.val_map_at_r, '.3f')} | "
            f"{cell(r.seconds_per_epoch, '.1f')} | {cell(r.images_per_second, '.1f')} |")
    return "\n".join(lines) + "\n"


def plot_trial(history: Sequence[dict], title: str, target: str | os.PathLike) -> None:
    """Loss and seconds per epoch against epoch, side by side (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.set_title("loss")
    ax2.plot(epochs, [h["epoch_seconds"] for h in history], marker="o", color="tab:orange")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("seconds")
    ax2.set_title("seconds per epoch")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 12 else epochs[:: max(1, len(epochs) // 10)])
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(target, buf.getvalue())


def write_report(run_dir: str | os.PathLike, rows: Sequence[dict] | None = None,
                 title: str = "Training sweep summary") -> pd.DataFrame:
    """Write ``sweep_summary.md``, ``sweep_summary.csv`` and ``plots/<trial>.png``; return the table.

    ``rows`` default to the trial folders' ``result.json``; trials without a folder (a trial that
    failed before exporting) can be passed in as rows with ``status="error"``.
    """
    run_dir = Path(run_dir)
    rows = list(rows) if rows is not None else read_trials(run_dir)
    df = summary_frame(rows)
    atomic_write_text(run_dir / "sweep_summary.csv", df.to_csv(index=False))
    atomic_write_text(run_dir / "sweep_summary.md", _markdown(df, title))
    for r in rows:
        hist_path = run_dir / r["trial"] / "history.json"
        history = json.loads(hist_path.read_text()) if hist_path.is_file() else []
        if history:
            plot_trial(history, f"{r['trial']} ({r.get('loss')}, {r.get('backbone')})",
                       run_dir / "plots" / f"{r['trial']}.png")
    return df
