"""The Serve environment: set where unset, never overriding the user's, present in the Ray
processes of the test app, and carried by the cluster configs."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from facerec.serve.runtime import SERVE_ENV, apply_serve_env

ROOT = Path(__file__).resolve().parents[2]


def test_apply_serve_env_sets_defaults_and_keeps_user_values():
    env = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "OTHER": "x"}
    got = apply_serve_env(env)
    assert got == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
    assert env["OTHER"] == "x" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_ray_processes_of_the_live_app_inherit_it(live_app):
    import ray

    @ray.remote(num_cpus=0)
    def read_env():
        return {k: os.environ.get(k) for k in SERVE_ENV}

    assert ray.get(read_env.remote()) == SERVE_ENV


def test_cluster_configs_start_ray_with_it():
    launcher = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    for cmd in (launcher["head_start_ray_commands"][-1], launcher["worker_start_ray_commands"][-1]):
        for key, value in SERVE_ENV.items():
            assert f"{key}={value}" in cmd and "ray start" in cmd
    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV



def test_a_replica_that_fails_to_start_fails_run_app_with_its_error(live_app):
    # In throughput mode replica logs leave the console: run_app must carry the error itself.
    import pytest
    from ray import serve

    from facerec.errors import DeploymentStartError
    from facerec.serve.runtime import run_app

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class _Broken:
        def __init__(self):
            raise ValueError("checkpoint /nowhere/model.pt is unreadable")

    try:
        with pytest.raises(DeploymentStartError,
                           match=r"'broken' failed to start: _Broken: ValueError: checkpoint /nowhere/model.pt is unreadable"):
            run_app(_Broken.bind(), name="broken", route_prefix=None)
    finally:
        serve.delete("broken")


def test_last_error_line_picks_the_exception():
    from facerec.serve.runtime import _last_error_line

    msg = ("The deployment failed to start 3 times in a row. See controller logs. Error:\n"
           "  File \"x.py\", line 3, in __init__\n    raise ValueError(\"bad: thing\")\n"
           "ValueError: bad: thing\n")
    assert _last_error_line(msg) == "ValueError: bad: thing"
    assert _last_error_line("no traceback here") == "no traceback here"


def _format_exception() -> str:
    import logging

    try:
        raise ValueError("gallery file torn")
    except ValueError:
        import sys

        return logging.Formatter().formatException(sys.exc_info())


def test_a_traceback_formatted_under_serves_print_is_text():
    # A replica's print with Serve's logs off stderr is Ray's redirected_print; logging prints a
    # traceback into a StringIO with it, which came out as tuples. Ray's function, really installed.
    import builtins

    from ray.serve._private.logging_utils import redirected_print

    from facerec.serve.runtime import print_tracebacks_as_text

    own = builtins.print
    builtins.print = redirected_print
    try:
        broken = _format_exception()
        assert broken.startswith("('Traceback (most recent call last):\\n',)")  # what replica logs showed
        print_tracebacks_as_text()
        print_tracebacks_as_text()  # twice: still one layer in front of Serve's
        fixed = _format_exception()
    finally:
        builtins.print = own
    lines = fixed.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ValueError: gallery file torn", fixed
    assert "('" not in fixed


def test_print_tracebacks_as_text_leaves_a_plain_print_alone():
    import builtins

    from facerec.serve.runtime import print_tracebacks_as_text

    own = builtins.print
    print_tracebacks_as_text()
    assert builtins.print is own


def test_a_replicas_logged_traceback_reads_as_text_in_its_log(live_app):
    import glob
    import os

    from ray import serve

    from facerec.serve.runtime import serve_logs_dir

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class _LogsAnError:
        def __init__(self):
            import builtins

            from ray.serve._private.logging_utils import redirected_print

            from facerec.serve.runtime import print_tracebacks_as_text

            self.serve_print = builtins.print is redirected_print  # the throughput mode the app runs in
            print_tracebacks_as_text()

        def __call__(self):
            import logging

            try:
                raise ValueError("gallery file torn")
            except ValueError:
                logging.getLogger("ray.serve").exception("reload failed")  # flushed at once: an error
            return self.serve_print

    try:
        handle = serve.run(_LogsAnError.bind(), name="tb", route_prefix=None)
        assert handle.remote().result(timeout_s=60) is True
        logs = glob.glob(os.path.join(serve_logs_dir(), "replica_tb_*.log"))
        text = "".join(open(p).read() for p in logs)
    finally:
        serve.delete("tb")
    assert "reload failed\nTraceback (most recent call last):\n" in text, text[-3000:]
    assert "\nValueError: gallery file torn\n" in text and "('" not in text, text[-3000:]
