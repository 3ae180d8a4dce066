"""Quiet consoles: what facerec prints to a file or a pipe (a Ray job's log, CI, ``| tee``) is
facerec's own lines, one progress line and one summary a stage; Ray's own lines (its loggers,
its workers' output, its progress bars, the driver core worker's native warnings) are in the
Ray session's log files instead."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from facerec.progress import Progress

ROOT = Path(__file__).resolve().parents[1]

# Lines only Ray prints: its native log lines, its workers' forwarded output "(pid=..)",
# "(TrainController pid=..)", "(raylet)", Ray Data's progress and execution notices, Train's and
# Tune's notices and tables, its deprecation warnings, its own logger's records.
RAY_LINE = re.compile(
    r"core_worker|\((\w+ )?pid=\d+|\(raylet\)|Running Dataset|logging_progress|streaming_executor|"
    r"PlacementGroupCleaner|RayDeprecationWarning|Token authentication|Started a local Ray instance|"
    r"Trial status|Trial \S+ (started|completed)|graceful_shutdown|\t(INFO|WARNING) \w+\.py:\d+ --|╭|│")


def test_progress_off_a_terminal_is_one_line_when_it_ends():
    out = io.StringIO()  # not a terminal, like a pipe or a log file
    with Progress(10, "crop faces", "img", file=out) as bar:
        for _ in range(10):
            bar.update()
        assert out.getvalue() == ""  # nothing while it runs
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"crop faces: 10/10 img in \d+\.\d s(, \d+ img/s)?", lines[0]), lines
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_is_a_bar_and_disabled_is_silent():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    with Progress(4, "embed", "img", file=tty) as bar:
        bar.update(4)
    assert "embed: 100%" in tty.getvalue() and "4/4" in tty.getvalue()
    quiet = io.StringIO()
    with Progress(4, "embed", file=quiet, enabled=False) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


CHAIN = """
import sys
from facerec.run import plan_run, run_plan

plan = plan_run(sys.argv[1], data=sys.argv[2], preset="smoke", sweep={"losses": ["triplet", "softmax"]},
                train={"epochs": 1, "steps_per_epoch": 2, "image_size": 32, "embedding_dim": 16, "p": 3, "k": 2,
                       "val_max_images": 40, "num_workers": 1, "cpus_per_worker": 1},
                tables={"ks": [5], "timing_queries": 5}, gallery={"kinds": ["exact"]})
run_plan(plan)
"""


@pytest.mark.slow  # a fresh interpreter runs the whole chain with a local Ray (~2 min on 2 CPUs)
def test_the_chain_prints_its_own_lines_and_ray_keeps_its_own_in_its_logs(tmp_path):
    """``facerec run``'s library chain, stdout and stderr a pipe: two trials on Ray Train/Tune,
    Ray Data actor pools for the crops and the embeddings. Before, the same run printed Ray's
    token notice, ``core_worker.cc`` warnings, the workers' dataset bars, Tune's tables and Ray
    Data's progress blocks; each stage now prints a few lines of its own."""
    from facerec.data.synth import generate_synthetic

    photos = generate_synthetic(tmp_path / "photos", 8, 5, seed=1, progress=False)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: it holds Unix sockets
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEREC_RAY_CONSOLE", "RAY_LOG_TO_DRIVER")}
    env.update(RAY_TMPDIR=str(ray_tmp), FACEREC_CACHE=str(tmp_path / "cache"), RAY_USAGE_STATS_ENABLED="0")
    try:
        proc = subprocess.run([sys.executable, "-c", CHAIN, str(tmp_path / "work"), str(photos)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        out = proc.stdout
        assert proc.returncode == 0, out[-4000:]
        lines = out.splitlines()
        assert [ln for ln in lines if RAY_LINE.search(ln)] == [], out
        assert "\r" not in out  # no bar redrawn into the log
        assert len(lines) <= 40, out
        for stage in ("preprocess", "train-sweep", "build-index", "evaluate"):
            assert sum(ln.startswith(f"== {stage}: ") for ln in lines) == 1, out
        assert sum(re.match(r"\[(triplet|softmax)-mobilenet_v3_small\] ok: ", ln) is not None for ln in lines) == 2, out
        assert re.match(r"facerec run: finished in \d+ s \(preprocess", lines[-1]), lines[-1]
        # Ray's lines are not lost: they are in the session's logs, where the run says they are.
        said = [ln for ln in lines if ln.startswith("ray: ")]
        assert len(said) == 1, out
        logs = Path(said[0].split(" logs in ", 1)[1])
        assert logs.is_relative_to(ray_tmp) and logs.name == "logs", said
        driver_log = "".join(p.read_text() for p in logs.glob("facerec-driver-*.log"))
        assert "Started a local Ray instance" in driver_log
        native = "".join(p.read_text(errors="replace") for p in logs.glob("python-core-driver-*.log"))
        assert "constructor arguments in the object store" in native  # the warning the console no longer shows
        assert any(p.stat().st_size for p in (logs / "ray-data").glob("ray-data*.log"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_raylet_warnings_on_the_error_channel_go_to_the_log_and_its_errors_stay(capsys):
    """Under load the raylet pushes "WARNING: 10 PYTHON worker processes have been started ..."
    to the driver, which printed it whatever log_to_driver said; an error on that channel (a dead
    actor) is still the user's to see."""
    import ray._private.worker as worker

    from facerec.ray_utils import _SESSION_LOG, quiet_ray_console

    quiet_ray_console()
    held = len(_SESSION_LOG._held)
    worker.print_to_stdstream({"lines": ["WARNING: 10 PYTHON worker processes have been started on node: abc"],
                               "pid": "raylet", "is_err": False}, ignore_prefix=False)
    worker.print_to_stdstream({"lines": ["The actor died unexpectedly before finishing this task."],
                               "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert "PYTHON worker processes" not in out and "The actor died unexpectedly" in out
    import ray

    if not ray.is_initialized():  # no session folder yet: the record waits for one
        assert len(_SESSION_LOG._held) == held + 1
