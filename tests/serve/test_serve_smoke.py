"""``python pipelines/serve.py --smoke`` (the ``facerec serve`` front end) as a user runs it, in a
fresh interpreter: it starts its own Ray and Serve on the test gallery, answers one search
through the HTTP API, shuts both down and exits 0, leaving no Ray process behind."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lines only Ray prints: native log lines, forwarded worker output "(ServeController pid=..)",
# "(raylet)", its driver loggers' records (Ray's and Serve's formats), the token notice.
RAY_LINE = re.compile(r"core_worker|\((\w+ )?pid=\d+|\(raylet\)|graceful_shutdown|Token authentication|"
                      r"Started a local Ray instance|\t(INFO|WARNING) \w+\.py:\d+ --|^(INFO|WARNING) \d{4}-\d\d-\d\d ")


def _pids_under(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (read from /proc; none is touched)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow  # a Ray cluster and a Serve app start and stop in the child (~1 min on 2 CPUs)
def test_serve_smoke_answers_a_search_and_stops_cleanly(gallery_copy, serve_artifacts, tmp_path, free_port):
    from facerec.gallery import read_table

    port = free_port()
    # Ray's socket paths under RAY_TMPDIR must fit AF_UNIX's 107 bytes: a short folder, not pytest's
    ray_tmp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEREC_GALLERY_TOKEN")}
    env.update(HOME=str(tmp_path / "home"), FACEREC_CACHE=str(tmp_path / "cache"), RAY_TMPDIR=str(ray_tmp),
               RAY_USAGE_STATS_ENABLED="0")
    (tmp_path / "home").mkdir()
    # one of the gallery's two models: one Embedder replica to start instead of two
    cmd = [sys.executable, str(ROOT / "pipelines" / "serve.py"), "--gallery", str(gallery_copy), "--checkpoint",
           f"mnv3={serve_artifacts['checkpoints']['mnv3']}", "--allow-untrained", "--smoke", "--port", str(port),
           "--num-cpus", "2", "--model-cpus", "0.5", "--max-batch-size", "4"]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        # A quiet console: Ray's own lines (its token notice, "Started a local Ray instance", Serve's
        # start-up and ready lines, the controller's and raylet's forwarded output such as
        # "graceful_shutdown failed", native core_worker lines) are in its log files, not here.
        ray_lines = [ln for ln in log.splitlines() if RAY_LINE.search(ln)]
        assert ray_lines == [], log[-4000:]
        assert len(log.splitlines()) <= 10, log
        # One cache root: the default --workdir is under FACEREC_CACHE, nothing under ~/.cache/facerec.
        assert (tmp_path / "cache" / "serve").is_dir()
        assert not (tmp_path / "home" / ".cache" / "facerec").exists()
        up = re.search(r"^serve: \[(.*)\] on gallery (\S+) up in ", proc.stdout, re.M)
        assert up and up.group(2) == str(gallery_copy), proc.stdout[-2000:]
        assert ast.literal_eval(f"[{up.group(1)}]") == ["mnv3"]
        smoke = re.search(r"^smoke: (\d+), top-3 (\[.*?\])", proc.stdout, re.M)
        assert smoke and smoke.group(1) == "200", proc.stdout[-2000:]
        top = ast.literal_eval(smoke.group(2))
        rows = set(read_table(gallery_copy)["image_id"])
        assert len(top) == 3 and set(top) <= rows, (top, sorted(rows)[:5])
        assert list(ray_tmp.glob("ray/session_*")), "no Ray session was started under RAY_TMPDIR"
        deadline = time.monotonic() + 30  # raylet and workers exit a moment after the driver
        while (left := _pids_under(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes of the command's Ray still running: {left}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
