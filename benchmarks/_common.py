"""Shared bits of the benchmarks: where results go, and writing a table as CSV + Markdown."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pandas as pd

from facerec.io import atomic_write_text

SHARED_DATA = Path(os.environ.get("FACEREC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, title: str, notes: list[str] = ()) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    cols = list(df.columns)
    lines = [f"# {title}", "", f"Machine: {machine()}", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")
    print(df.to_string(index=False))
    for n in notes:
        print(f"- {n}")
    print(f"written: {out / name}.csv, {out / name}.md")
