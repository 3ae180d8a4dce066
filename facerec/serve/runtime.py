"""Process environment of the Ray processes that run the Serve app.

Ray Serve reads its request-path switches from environment variables when its modules are
imported in the controller, proxy and replica processes, so they must be in the environment of
the Ray cluster itself (``ray start`` / the pod spec), or of the driver before it starts a new
local Ray (its processes inherit it).

``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` is Ray's documented high-throughput mode (Ray >= 2.56): user
code and the handle router run on the replica's main event loop instead of hopping threads,
request-path logs are buffered, replicas talk gRPC. On this project's 2-CPU machine it raised
bench_serve's MobileNet-V2 throughput at 32 clients from 25.6 to 30.1 req/s batched and from
20.0 to 21.9 req/s unbatched (same run pair, 30 s cells). ``RAY_SERVE_ENABLE_DIRECT_INGRESS=0``
keeps the HTTP proxy: direct ingress, which that mode would also switch on, is in Ray's words "a
limited form ... where ingress applications listen on port 8000 (HTTP) and 9000 (gRPC). No proxies
will be started", which would not honour ``--port``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}

# Serve's HTTP proxy answers /-/routes, /-/healthz and its own 404s itself, before any app: this
# makes it wrap itself in facerec's SecurityHeaders (facerec.serve.middleware.proxy_middlewares).
# The proxy imports it when it starts, so only where facerec is importable in the proxy process:
# a local Ray started by `facerec serve` (set with SERVE_ENV), or cluster nodes with facerec
# installed in their image (not the working_dir zip of cluster/rayservice.yaml, which only the
# application's replicas get).
PROXY_ENV: dict[str, str] = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "facerec.serve.middleware.proxy_middlewares",
}


def apply_serve_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set :data:`SERVE_ENV` and :data:`PROXY_ENV` in ``environ`` (default ``os.environ``) where
    not already set, and return the :data:`SERVE_ENV` in effect. Call before ``ray.init`` starts a
    local Ray; a cluster that is already running keeps the environment it was started with."""
    env = os.environ if environ is None else environ
    for key, value in {**SERVE_ENV, **PROXY_ENV}.items():
        env.setdefault(key, value)
    return {key: env[key] for key in SERVE_ENV}


def print_tracebacks_as_text() -> None:
    """Call in a replica's ``__init__``: its logged tracebacks then read as text again.

    With ``RAY_SERVE_LOG_TO_STDERR=0`` (which throughput mode sets) Serve replaces a replica's
    ``print`` by one that sends stdout/stderr prints to its logger and hands a print to any other
    file to the builtin ``print`` as a single tuple (Ray 2.60). ``logging`` formats an exception
    by printing the traceback into a ``StringIO``, so every ``logger.exception`` in a replica log
    read ``('Traceback (most recent call last):\\n',)('  File ...',)``. This puts a ``print`` in
    front of Serve's that passes prints to other files on intact. A no-op where Serve left
    ``print`` alone (logs to stderr) and when called again."""
    import builtins

    serve_print = builtins.print
    if getattr(serve_print, "_facerec_passes_files", False):
        return
    try:
        from ray.serve._private.logging_utils import buildin_print, redirected_print
    except ImportError:  # a Ray without the redirect
        return
    if serve_print is not redirected_print:
        return

    def passes_files(*objects, sep=" ", end="\n", file=None, flush=False):
        if file is not None and file is not sys.stdout and file is not sys.stderr:
            return buildin_print(*objects, sep=sep, end=end, file=file, flush=flush)
        return serve_print(*objects, sep=sep, end=end, file=file, flush=flush)

    passes_files._facerec_passes_files = True
    builtins.print = passes_files


# "ValueError: ...", "ray.exceptions.RayActorError: ...": an optionally dotted class name, a colon.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*:")


def _last_error_line(message: str) -> str:
    """The exception line of a traceback in a Serve status message (``ValueError: ...``)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _EXCEPTION_LINE.match(ln):
            return ln
    return lines[-1] if lines else message


def serve_logs_dir() -> str:
    """Where Serve writes the controller, proxy and replica logs of the Ray this process is
    connected to: ``serve/`` in the session's logs folder, which follows ``ray start --temp-dir``
    and ``RAY_TMPDIR`` (so it is not always under ``/tmp/ray``). Asked of the running Ray the
    way Serve itself asks (``ray.serve._private.logging_utils.get_serve_logs_dir``); a driver
    that is not on a node of the cluster (Ray Client) gets a description instead."""
    import ray

    node = ray._private.worker._global_node
    if node is None:
        return "the serve/ folder of the Ray session's logs on the cluster's nodes"
    return os.path.join(node.get_logs_dir_path(), "serve")


class _AppliedOptionsNotice(logging.Filter):
    """Drops Serve's "New http_options/controller_options will not be applied": ``serve.run``
    says it when it connects to the Serve instance that ``serve.start`` has just started with
    those very options, so they were applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will not be applied" not in record.getMessage()


@contextlib.contextmanager
def _quiet_applied_options():
    log = logging.getLogger("ray.serve")
    notice = _AppliedOptionsNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def run_app(app, name: str, route_prefix: str | None = "/"):
    """``serve.run`` that, when replicas fail to start, raises :class:`DeploymentStartError`
    naming each failed deployment and its error. Serve itself only says "Failed to update the
    deployments", and in throughput mode the replica's traceback is in the log files, not on
    the console. Call it after ``serve.start(http_options=...)``."""
    from ray import serve
    from ray.serve.schema import DeploymentStatus

    from facerec.errors import DeploymentStartError

    try:
        with _quiet_applied_options():
            return serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        try:
            status = serve.status().applications.get(name)
        except Exception:  # the controller itself is gone: Serve's own error is all there is
            raise exc from None
        failed = [] if status is None else [
            f"{dep}: {_last_error_line(d.message)}" for dep, d in status.deployments.items()
            if d.status in (DeploymentStatus.DEPLOY_FAILED, DeploymentStatus.UNHEALTHY)]
        if not failed:
            raise
        raise DeploymentStartError(
            f"Serve application {name!r} failed to start: " + "; ".join(failed)
            + f" (full tracebacks: {serve_logs_dir()})") from None


def serve_started(ray) -> bool:
    """Whether this driver's Ray runs a Serve controller (nothing to shut down otherwise)."""
    if not ray.is_initialized():
        return False
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True

