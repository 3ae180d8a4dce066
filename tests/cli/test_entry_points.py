"""Every ``facerec`` subcommand and ``pipelines/*.py`` script checks its whole configuration before
it starts Ray or touches data: a bad argument is one line ``facerec <cmd>: error: ...`` on stderr
with exit code 2, in seconds, and ``--help`` shows no path of this machine."""

from __future__ import annotations

import os
import re
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACEREC = [sys.executable, "-m", "facerec.cli"]


def pipeline(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / f"{name}.py")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    """A temp HOME / FACEREC_CACHE / RAY_TMPDIR, so no real cache is touched and a started Ray
    would leave its session folder where the test looks; a checkpoint folder without model.json
    and a fake crops folder for the commands that need one before the bad argument."""
    base = tmp_path_factory.mktemp("entry")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEREC_GALLERY_TOKEN")}
    env.update(HOME=str(base / "home"), FACEREC_CACHE=str(base / "cache"), RAY_TMPDIR=str(base / "ray"),
               PYTHONPATH=str(ROOT))
    (base / "home").mkdir()
    (base / "crops").mkdir()
    (base / "crops" / "crops.parquet").write_bytes(b"")
    return {"base": base, "env": env}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str], sandbox: dict, extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """The finished process, its wall seconds and its CPU seconds."""
    env = dict(sandbox["env"], **(extra_env or {}))
    t0, c0 = time.perf_counter(), _cpu_seconds()
    proc = subprocess.run(cmd, cwd=sandbox["base"], env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0, _cpu_seconds() - c0


CASES = [
    # (id, command, extra env, prefix, what the message names)
    ("train-sweep --loss", FACEREC + ["train-sweep", "--loss", "nosuchloss"], None, "facerec train-sweep", "nosuchloss"),
    ("train-sweep --losses", FACEREC + ["train-sweep", "--losses", "triplet,nosuchloss"], None,
     "facerec train-sweep", "nosuchloss"),
    ("train_sweep.py --loss", pipeline("train_sweep") + ["--loss", "nosuchloss"], None, "facerec train-sweep", "nosuchloss"),
    ("train-sweep --lrs", FACEREC + ["train-sweep", "--lrs", "0.1,fast"], None, "facerec train-sweep", "fast"),
    ("train-sweep --data", FACEREC + ["train-sweep", "--data", "/nonexistent"], None, "facerec train-sweep", "/nonexistent"),
    ("train_sweep.py --data", pipeline("train_sweep") + ["--data", "/nonexistent"], None,
     "facerec train-sweep", "/nonexistent"),
    ("train-sweep config", FACEREC + ["train-sweep", "--crops", "{base}/crops", "--epochs", "0"], None,
     "facerec train-sweep", "epochs"),
    ("build-index --checkpoint", FACEREC + ["build-index", "--crops", "{base}/crops", "--checkpoint", "/nonexistent",
                                            "--out", "{base}/g"], None, "facerec build-index", "/nonexistent"),
    ("build_index.py --checkpoint", pipeline("build_index") + ["--crops", "{base}/crops", "--checkpoint",
                                                               "m=/nonexistent", "--out", "{base}/g"], None,
     "facerec build-index", "/nonexistent"),
    ("build-index --crops", FACEREC + ["build-index", "--crops", "/nonexistent", "--checkpoint", "dlib_resnet",
                                       "--out", "{base}/g"], None, "facerec build-index", "/nonexistent"),
    ("build-index --kinds", FACEREC + ["build-index", "--crops", "{base}/crops", "--kinds", "kdtree,nosuch",
                                       "--out", "{base}/g"], None, "facerec build-index", "nosuch"),
    ("evaluate --index-kind", FACEREC + ["evaluate", "--index-kind", "nosuch"], None, "facerec evaluate", "nosuch"),
    ("evaluate --ks", FACEREC + ["evaluate", "--ks", "10,x"], None, "facerec evaluate", "'x'"),
    ("evaluate.py --ks", pipeline("evaluate") + ["--ks", "10,x"], None, "facerec evaluate", "'x'"),
    ("evaluate --checkpoint", FACEREC + ["evaluate", "--checkpoint", "/nonexistent"], None, "facerec evaluate",
     "/nonexistent"),
    ("serve --checkpoint", FACEREC + ["serve", "--checkpoint", "=x"], None, "facerec serve", "=x"),
    ("serve.py --checkpoint", pipeline("serve") + ["--checkpoint", "=x"], None, "facerec serve", "=x"),
    ("serve.py short token", pipeline("serve"), {"FACEREC_GALLERY_TOKEN": "short"}, "facerec serve", "gallery_token"),
    ("serve --data", FACEREC + ["serve", "--data", "/nonexistent"], None, "facerec serve", "/nonexistent"),
    ("run --preset", FACEREC + ["run", "--preset", "nosuch"], None, "facerec run", "nosuch"),
    ("run --data", FACEREC + ["run", "--data", "/nonexistent"], None, "facerec run", "/nonexistent"),
    ("preprocess --data", FACEREC + ["preprocess", "--data", "/nonexistent", "--out", "{base}/p"], None,
     "facerec preprocess", "/nonexistent"),
    ("preprocess.py --input-kind", pipeline("preprocess") + ["--input-kind", "nosuch", "--out", "{base}/p"], None,
     "facerec preprocess", "nosuch"),
    # the face detector and its gate: refused before Ray starts, naming the field
    ("preprocess --min-confidence", FACEREC + ["preprocess", "--min-confidence", "1.5", "--out", "{base}/p"], None,
     "facerec preprocess", "min_confidence=1.5"),
    ("preprocess.py --min-face", pipeline("preprocess") + ["--min-face", "3", "--out", "{base}/p"], None,
     "facerec preprocess", "min_face=3"),
    ("preprocess --detector", FACEREC + ["preprocess", "--detector", "hog", "--out", "{base}/p"], None,
     "facerec preprocess", "hog"),
    ("serve --scale-step", FACEREC + ["serve", "--scale-step", "1.0"], None, "facerec serve", "scale_step=1.0"),
    ("serve.py --min-confidence", pipeline("serve") + ["--min-confidence", "-0.1"], None, "facerec serve",
     "min_confidence=-0.1"),
    ("calibrate --min-face", FACEREC + ["calibrate", "--model", "dlib_resnet", "--lfw", "{base}", "--min-face", "5000"],
     None, "facerec calibrate", "min_face=5000"),
    ("calibrate --model", FACEREC + ["calibrate", "--model", "/nonexistent", "--lfw", "{base}"], None,
     "facerec calibrate", "/nonexistent"),
    ("calibrate.py --fars", pipeline("calibrate") + ["--model", "dlib_resnet", "--lfw", "{base}", "--fars", "0.1,x"], None,
     "facerec calibrate", "'x'"),
    ("calibrate --default-far", FACEREC + ["calibrate", "--model", "dlib_resnet", "--lfw", "{base}", "--default-far",
                                           "0.05"], None, "facerec calibrate", "default_far=0.05"),
    ("calibrate --lfw", FACEREC + ["calibrate", "--model", "dlib_resnet", "--lfw", "{base}/nolfw"], None,
     "facerec calibrate", "nolfw"),
    ("calibrate --crops", FACEREC + ["calibrate", "--model", "dlib_resnet", "--crops", "{base}/crops"], None,
     "facerec calibrate", "crops.parquet"),
]


@pytest.mark.slow  # one interpreter per case: about 3-5 s each on 2 CPUs
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_argument_fails_in_one_line_before_ray(case, sandbox):
    _, cmd, extra_env, prefix, named = case
    cmd = [a.replace("{base}", str(sandbox["base"])) for a in cmd]
    proc, wall, cpu = _run(cmd, sandbox, extra_env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prefix}: error: "), proc.stderr
    assert re.search(re.escape(named), last), last
    # CPU seconds: the imports alone (torch, torchvision, scikit-learn) take 5-6 s of wall time on an
    # idle 2-core machine and twice that beside a benchmark; Ray or a preprocess takes 25-65 s.
    assert cpu < 10, f"{cpu:.1f} CPU s ({wall:.1f} s wall)"
    assert wall < 30, f"{wall:.1f} s"
    assert "Started a local Ray instance" not in out
    assert not list((sandbox["base"] / "ray").glob("session_*")), "a Ray was started"
    assert not (sandbox["base"] / "cache" / "synthetic-v1").exists(), "data was generated"


class ReachedRay(Exception):
    """Raised where ``facerec serve`` would start Ray: its whole configuration was accepted."""


@pytest.fixture
def serve_stops_at_ray(monkeypatch):
    """``facerec serve``'s main runs up to starting Ray, then raises :class:`ReachedRay`."""
    import facerec.ray_utils

    def no_ray(*args, **kwargs):
        raise ReachedRay

    monkeypatch.setattr(facerec.ray_utils, "init_ray", no_ray)
    for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_DIRECT_INGRESS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # apply_serve_env sets them; restored after

def test_empty_gallery_token_means_unset(monkeypatch, serve_stops_at_ray):
    """FACEREC_GALLERY_TOKEN= (empty) passes validation as "writes disabled", up to starting Ray."""
    import facerec.cli.serve as serve_cli

    seen = []
    build = serve_cli._serve_config
    monkeypatch.setattr(serve_cli, "_serve_config", lambda args, *a: seen.append(args.token) or build(args, *a))
    monkeypatch.setenv("FACEREC_GALLERY_TOKEN", "")
    with pytest.raises(ReachedRay):
        serve_cli.main([])
    with pytest.raises(ReachedRay):
        serve_cli.main(["--token", ""])
    assert seen == [None, None]


def test_empty_read_token_means_unset_and_a_short_one_is_refused(monkeypatch, capsys, serve_stops_at_ray):
    """FACEREC_READ_TOKEN= (empty) or --read-token "" leaves reads open; a short one is refused
    with the field named, before Ray."""
    import facerec.cli.serve as serve_cli

    seen = []
    build = serve_cli._serve_config
    monkeypatch.setattr(serve_cli, "_serve_config", lambda args, *a: seen.append(build(args, *a).read_token) or build(args, *a))
    monkeypatch.setenv("FACEREC_READ_TOKEN", "")
    with pytest.raises(ReachedRay):
        serve_cli.main([])
    with pytest.raises(ReachedRay):
        serve_cli.main(["--read-token", ""])
    assert seen == [None, None]
    assert serve_cli.main(["--read-token", "short"]) == 2
    assert "read_token='<hidden>' is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["smoke", "face-smoke"])
def test_valid_sweep_is_checked_before_its_photos_are_preprocessed(preset, tmp_path, monkeypatch):
    """A photo folder is preprocessed only once Ray is up: the config check before must pass
    without the crops folder it will train on."""
    import facerec.ray_utils
    from facerec.cli.train_sweep import main

    class ReachedRay(Exception):
        pass

    def no_ray(*args, **kwargs):
        raise ReachedRay

    monkeypatch.setattr(facerec.ray_utils, "init_ray", no_ray)
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 1\n")
    with pytest.raises(ReachedRay):
        main(["--preset", preset, "--data", str(tmp_path), "--out", str(tmp_path / "run")])


HELP = [["data", "synth"], ["preprocess"], ["train-sweep"], ["build-index"], ["evaluate"], ["calibrate"], ["serve"],
        ["run"]]
PIPELINES = ["preprocess", "train_sweep", "build_index", "evaluate", "calibrate", "serve"]


def _machine_paths() -> list[str]:
    paths = {"/work/", "/root/", str(Path.home()), str(ROOT)}
    return sorted(p for p in paths if p not in ("", "/"))


def _check_help(text: str) -> None:
    assert "usage:" in text
    for path in _machine_paths():
        assert path not in text, f"--help shows {path!r}"


@pytest.mark.parametrize("words", HELP, ids=[" ".join(w) for w in HELP])
def test_help_has_no_machine_path(words, capsys):
    from facerec.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    _check_help(capsys.readouterr().out)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_help_has_no_machine_path(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"pipelines/{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "pipelines" / f"{name}.py"), run_name="__main__")
    assert exit_.value.code == 0
    _check_help(capsys.readouterr().out)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_is_thin(name):
    text = (ROOT / "pipelines" / f"{name}.py").read_text()
    doc = text.split('"""')[1]
    assert "\n" not in doc.strip(), "one-line docstring"
    assert "sys.exit(main())" in text
