"""``pipelines/serve.py`` as a real process: its startup messages tell the truth, and SIGTERM
stops it like Ctrl-C (Serve shut down, then its local Ray: no Ray process left behind).
(The --smoke run is tested in test_serve_smoke.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process whose command line contains ``text``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out[int(d.name)] = cmd[:200]
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_serve_and_its_ray(serve_artifacts, tmp_path, sig, free_port):
    # A private Ray temp folder (short: it holds Unix sockets): the process cannot join another
    # Ray of this machine, its processes are found by it, and the log folder it prints must be in it.
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    gallery = tmp_path / "gallery"
    shutil.copytree(serve_artifacts["gallery"], gallery)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FACEREC_GALLERY_TOKEN")}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "pipelines" / "serve.py"), "--gallery", str(gallery), "--allow-untrained",
           "--port", str(port), "--num-cpus", "2", "--workdir", str(tmp_path / "work")]
    # A suite started in the background by a non-interactive shell (`pytest &`) ignores SIGINT, and
    # a child inherits that: give the server the default disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "to stop." in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(300), "serve did not start:\n" + "".join(lines[-40:])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        ray_procs = _processes_mentioning(ray_tmp)
        assert len(ray_procs) >= 3, ray_procs  # gcs, raylet, agents, workers: all under the private temp folder
        proc.send_signal(sig)
        assert proc.wait(timeout=180) == 0, "".join(lines[-40:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    deadline = time.time() + 30
    left = _processes_mentioning(ray_tmp)
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = _processes_mentioning(ray_tmp)
    try:
        assert left == {}, f"Ray processes left running after {sig.name}: {left}"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        for pid in left:  # never leave them to the rest of the suite
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = "".join(lines)
    assert "Traceback" not in out, out[-3000:]
    # startup messages that are true: the options given to serve.start were applied, serve has
    # no --weights flag, and the log folder is the one of the Ray it started (under RAY_TMPDIR)
    assert "will not be applied" not in out and "Pass --weights" not in out, out[-3000:]
    logs = next(ln for ln in lines if "replica and access logs in" in ln).split(" in ", 1)[1].strip()
    assert logs.startswith(ray_tmp + "/") and logs.endswith("/logs/serve"), logs
