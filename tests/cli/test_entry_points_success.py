"""The successful path of the entry points that are cheap to run whole, as a user runs them (a fresh
interpreter, ``python -m facerec.cli`` or ``python pipelines/*.py``) on a tiny folder of generated
photos. The others run elsewhere: ``pipelines/build_index.py`` (tests/gallery/test_build_index.py),
``pipelines/train_sweep.py`` through ``ray job submit`` (tests/train/test_job_submit.py),
``facerec evaluate`` (tests/eval/test_tables.py), ``facerec serve --smoke``
(tests/serve/test_serve_smoke.py), ``facerec run``'s chain (tests/test_run.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from facerec.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
FACEREC = [sys.executable, "-m", "facerec.cli"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    """A temp HOME / FACEREC_CACHE / RAY_TMPDIR: no real cache is read or written, and a Ray the
    command starts is its own (not another one found on the machine). RAY_TMPDIR is short: Ray's
    socket paths under it must fit AF_UNIX's 107 bytes, which pytest's tmp paths do not leave."""
    base = tmp_path_factory.mktemp("entry-ok")
    ray_tmp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEREC_GALLERY_TOKEN")}
    env.update(HOME=str(base / "home"), FACEREC_CACHE=str(base / "cache"), RAY_TMPDIR=str(ray_tmp),
               PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    (base / "home").mkdir()
    yield {"base": base, "env": env, "ray_tmp": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _run(cmd: list[str], sandbox: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=sandbox["base"], env=sandbox["env"], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_top_level_help_lists_every_command(capsys):
    from facerec.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"facerec {name} " in out, name
    assert main([]) == 0  # no command: the same list, not an error
    assert capsys.readouterr().out == out


@pytest.fixture(scope="module")
def synth(sandbox) -> tuple[Path, subprocess.CompletedProcess]:
    """``facerec data synth``: 3 people x 4 photos."""
    out = sandbox["base"] / "photos"
    proc = _run(FACEREC + ["data", "synth", "--out", str(out), "--identities", "3", "--images-per-identity", "4",
                           "--seed", "1"], sandbox)
    return out, proc


@pytest.mark.slow  # a fresh interpreter per command (~5 s of imports each on 2 CPUs)
def test_data_synth_writes_what_the_library_writes(synth, sandbox, tmp_path):
    from facerec.data.synth import MARKER_FILE, generate_synthetic

    out, proc = synth
    assert proc.stdout.strip().splitlines()[-1] == f"synthetic dataset: {out}"
    same = generate_synthetic(tmp_path / "lib", 3, 4, seed=1, progress=False)
    got, want = _files(out), _files(same)
    assert sorted(got) == sorted(want) and len([k for k in got if k.startswith("img_celeba/")]) == 12
    assert all(got[k] == want[k] for k in got if k != MARKER_FILE)  # the marker records the time taken
    assert not (sandbox["base"] / "cache" / "synthetic-v1").exists()  # --out, not the default folder


def _summary_line(proc: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("preprocess summary: ")]
    assert len(lines) == 1, proc.stdout[-2000:]
    return json.loads(lines[0].removeprefix("preprocess summary: "))


@pytest.mark.slow
def test_preprocess_cli_and_pipeline_script_crop_the_folder_alike(synth, sandbox):
    """``facerec preprocess`` and ``pipelines/preprocess.py`` on the same photos: each prints the
    summary it wrote, every listed photo is kept or dropped, and both write the same crops table
    and crop files. Both run the local loop: a Ray started in a fresh interpreter costs ~25 s on
    2 CPUs, and the Ray engine's parity with the loop is tests/data/test_preprocess.py's."""
    photos, _ = synth
    listed = len((photos / "identity_CelebA.txt").read_text().splitlines())
    outs = {"cli": sandbox["base"] / "crops-cli", "script": sandbox["base"] / "crops-script"}
    procs = {
        "cli": _run(FACEREC + ["preprocess", "--data", str(photos), "--out", str(outs["cli"]), "--engine", "local",
                               "--batch-size", "4"], sandbox),
        "script": _run([sys.executable, str(ROOT / "pipelines" / "preprocess.py"), "--data", str(photos), "--out",
                        str(outs["script"]), "--engine", "local", "--batch-size", "4"], sandbox),
    }
    tables = {}
    for entry, out in outs.items():
        summary = _summary_line(procs[entry])
        assert summary == json.loads((out / "summary.json").read_text())
        assert summary["engine"] == "local" and summary["listed"] == listed == 12
        assert summary["kept"] + sum(summary["dropped"].values()) == listed
        table = pd.read_parquet(out / "crops.parquet").sort_values("image_id").reset_index(drop=True)
        assert len(table) == summary["kept"] >= 10  # the cascade finds ~98 % of synthetic faces
        assert sorted(p.name for p in (out / "crops").iterdir()) == sorted(f"{i}.png" for i in table["image_id"])
        tables[entry] = table
    pd.testing.assert_frame_equal(tables["cli"], tables["script"])
    for name in tables["cli"]["image_id"]:
        assert (outs["cli"] / "crops" / f"{name}.png").read_bytes() == (outs["script"] / "crops" / f"{name}.png").read_bytes()
    assert not list(sandbox["ray_tmp"].glob("*/session_*")), "the local engine started a Ray"
