"""`ray job submit --working-dir . -- python pipelines/train_sweep.py ...` against a real local
head node (`ray start --head --num-cpus=2`, on free ports and its own temp dir, stopped after)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = pytest.mark.slow


@pytest.fixture
def head_node(free_port):
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                             "dashboard-agent-listen-port", "runtime-env-agent-port",
                                             "metrics-export-port")}
    temp_dir = Path(tempfile.gettempdir()) / f"rt{uuid.uuid4().hex[:6]}"  # short: socket paths are length-limited
    # Token auth is on by default for local clusters; this node listens on 127.0.0.1 only and must
    # not touch the shared ~/.ray/auth_token other local clusters use, so it opts out.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           *[f"--{k}={v}" for k, v in ports.items()]]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{ports['dashboard-port']}", env
    finally:
        # `ray stop` stops every Ray on the machine (other users' too): stop only this node's
        # processes, found by the unique temp dir on their command lines.
        _stop_by_temp_dir(temp_dir)
        assert not _pids_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _pids_using(temp_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


def _stop_by_temp_dir(temp_dir: Path) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _pids_using(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while _pids_using(temp_dir) and time.time() < deadline:
            time.sleep(0.5)


def test_job_submit_runs_the_sweep(head_node, tiny_crops, tmp_path):
    address, env = head_node
    out = tmp_path / "run"
    cmd = [RAY, "job", "submit", f"--address={address}", f"--working-dir={ROOT}", "--",
           "python", "pipelines/train_sweep.py", "--data", str(tiny_crops), "--out", str(out),
           "--losses", "triplet,softmax", "--backbones", "mobilenet_v3_small", "--epochs", "1",
           "--image-size", "32", "--embedding-dim", "16", "--p", "3", "--k", "2", "--steps-per-epoch", "2",
           "--val-fraction", "0.25", "--max-failures", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log
    assert "sweep done: 2/2 trials ok" in log
    for trial in ("triplet-mobilenet_v3_small", "softmax-mobilenet_v3_small"):
        assert (out / trial / "best" / "model.pt").is_file()
        assert json.loads((out / trial / "result.json").read_text())["status"] == "ok"
    assert (out / "sweep_summary.md").is_file() and (out / "sweep_summary.csv").is_file()
