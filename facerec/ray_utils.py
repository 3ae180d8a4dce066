"""Connecting to Ray the way a user expects: the cluster of ``ray job submit`` / ``RAY_ADDRESS``
when there is one, the one ``ray start`` registered on this machine, a new local Ray otherwise;
and with a quiet console: Ray's own lines go to its log files, the user sees facerec's.

What Ray prints by default, and where it goes instead (a ``facerec run`` printed 2,700 lines to a
log file before, most of them Ray's):

- the workers' output (Ray Train's dataset progress bars, controller and placement-group
  notices, deprecation warnings): ``log_to_driver`` is off, so it stays in the session's
  ``worker-*.out/err`` files;
- the driver's Ray loggers ("Started a local Ray instance", the token-authentication notice, Ray
  Data's execution plans, Serve's start-up lines): their console handlers pass errors only, and
  everything goes to ``facerec-driver-<pid>.log`` in the session's logs folder (Ray Data's also to
  its ``ray-data/`` files);
- Ray Data's progress bars (``logging_progress.py`` blocks every 10 s off a terminal): off;
  each stage draws its own bar (:mod:`facerec.progress`);
- what Ray prints to stdout itself: Tune's experiment header (no ``verbose`` turns it off) and
  the raylet's messages (too many workers starting, Serve's "graceful_shutdown failed" on a
  clean stop) go to ``<name>-<pid>.log`` there while a sweep runs or Serve stops
  (:func:`ray_prints_to_log`);
- the driver core worker's native line that every Ray Data actor pool has "constructor
  arguments in the object store" (Ray's own issue 57733): already in the session's
  ``python-core-driver-*.log``, so dropped from the console (any other native line still shows).

``FACEREC_RAY_CONSOLE=1`` leaves Ray's console output as Ray makes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import IO, Iterator

CONSOLE_ENV = "FACEREC_RAY_CONSOLE"
DRIVER_LOG = "facerec-driver-{pid}.log"


def ray_console_wanted() -> bool:
    """Whether ``FACEREC_RAY_CONSOLE`` asks for Ray's own console output."""
    return os.environ.get(CONSOLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect the driver to Ray; no-op when already connected.

    ``address`` None: the cluster of ``RAY_ADDRESS`` (set by ``ray job submit``), else the one
    the last ``ray start`` on this machine registered (``/tmp/ray/ray_current_cluster``), else a
    new local Ray with ``num_cpus``. ``"local"`` always starts a new local Ray; anything else is
    passed to ``ray.init(address=...)`` (e.g. ``"auto"``, ``"ray://head:10001"``,
    ``"10.0.0.1:6379"``). Unlike ``"auto"``, the default never joins some other Ray found by
    scanning processes, and a stale registration of a cluster that is gone is ignored.

    The console is kept quiet (see the module's docstring) unless ``FACEREC_RAY_CONSOLE=1``;
    ``log_to_driver`` given here, or ``RAY_LOG_TO_DRIVER`` in the environment, still wins.
    """
    import ray

    quiet = not ray_console_wanted()
    if quiet:
        quiet_ray_console()
    if ray.is_initialized():
        return
    if quiet:
        # Before a local Ray starts: its workers inherit it (Ray Train's dataset bars).
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        _filter_native_stderr()
    kwargs.setdefault("log_to_driver", None if "RAY_LOG_TO_DRIVER" in os.environ or not quiet else False)
    local = dict(kwargs, address="local", num_cpus=num_cpus)
    local.setdefault("include_dashboard", False)
    # Joining a running cluster: its resources are its own, a dashboard is already there.
    join = {k: v for k, v in kwargs.items() if k != "include_dashboard"}
    try:
        if address == "local":
            ray.init(**local)
            return
        if address is None and not os.environ.get("RAY_ADDRESS"):
            from ray._common.utils import get_ray_address_file

            registered = Path(get_ray_address_file(None))
            if not registered.is_file():
                ray.init(**local)
                return
            try:
                ray.init(address=registered.read_text().strip(), **join)
            except ConnectionError:
                ray.init(**local)
            return
        ray.init(address=address or os.environ["RAY_ADDRESS"], **join)
    finally:
        if quiet and ray.is_initialized():
            print(f"ray: {cluster_cpus()} CPUs; Ray's own logs in {ray_logs_dir() or 'its session folder'}", flush=True)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_logs_dir() -> str | None:
    """The logs folder of the Ray session this driver is connected to (None before ``ray.init``
    or over Ray Client, where the session is on another machine)."""
    import ray

    node = ray._private.worker._global_node
    return node.get_logs_dir_path() if node is not None else None


_consoles: list[IO[str]] = []


def console() -> IO[str]:
    """Where facerec's own lines go: stdout, or inside :func:`ray_prints_to_log` the stdout it
    was before (a function, so that what Ray pickles, a Tune callback, holds no open file)."""
    return _consoles[-1] if _consoles else sys.stdout


@contextlib.contextmanager
def ray_prints_to_log(name: str) -> Iterator[None]:
    """Inside, what Ray prints to stdout in this process (Ray Tune's experiment header, "View
    detailed results here", its TensorBoard tip, which no ``verbose`` setting turns off; the
    raylet's forwarded warnings) goes to ``<session logs>/<name>-<pid>.log``; facerec's own lines
    meanwhile go to :func:`console`."""
    folder = None if ray_console_wanted() else ray_logs_dir()
    if folder is None:
        yield
        return
    _consoles.append(sys.stdout)
    try:
        with open(os.path.join(folder, f"{name}-{os.getpid()}.log"), "a", encoding="utf-8") as log, \
                contextlib.redirect_stdout(log):
            yield
    finally:
        _consoles.pop()


def ray_data():
    """``ray.data``, imported with its console quiet (see :func:`quiet_ray_console`) and its own
    progress bars off in this driver: the stage that runs a dataset draws one bar itself."""
    import ray.data

    if not ray_console_wanted():
        quiet_ray_console()
        ray.data.DataContext.get_current().enable_progress_bars = False
    return ray.data


# --------------------------------------------------------------------------------------------
# The driver's Ray loggers
# --------------------------------------------------------------------------------------------


class _ErrorsOnly(logging.Filter):
    """On a console handler of Ray's loggers: an error still shows; the rest is in the log files."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _SessionLog(logging.Handler):
    """Ray's driver-side log records in ``<session logs>/facerec-driver-<pid>.log``. The folder
    exists only once ``ray.init`` has started or joined a Ray, and the first records come before
    that (the token-authentication notice), so they are held until it does."""

    HELD_MAX = 1000

    def __init__(self) -> None:
        super().__init__()
        self._held: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None
        self._dir: str | None = None
        self.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            folder = ray_logs_dir() if "ray" in sys.modules else None
        except Exception:  # a Ray half shut down
            folder = None
        if folder is None:
            if len(self._held) < self.HELD_MAX:
                self._held.append(record)
            return
        try:
            if folder != self._dir:  # first record of this session (a new ray.init after a shutdown)
                if self._file is not None:
                    self._file.close()
                self._file = logging.FileHandler(os.path.join(folder, DRIVER_LOG.format(pid=os.getpid())),
                                                 encoding="utf-8", delay=True)
                self._file.setFormatter(self.formatter)
                self._dir = folder
            held, self._held = self._held, []
            for r in [*held, record]:
                self._file.emit(r)
        except Exception:
            self.handleError(record)


_ERRORS_ONLY = _ErrorsOnly()
_SESSION_LOG = _SessionLog()
_QUIET_LOCK = threading.Lock()


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_ray_console() -> None:
    """Make every console handler of Ray's driver-side loggers pass errors only, and send what
    they no longer print to :class:`_SessionLog`. Idempotent; cheap enough to call before each use
    of a Ray library, whose loggers are made when it is first imported (Ray Data's, Serve's).
    Also ignores the ``RayDeprecationWarning``\\ s Ray raises about its own internal calls."""
    import ray
    from ray.util.annotations import RayDeprecationWarning

    if ray._private.worker.global_worker.mode == ray._private.worker.WORKER_MODE:
        return  # a worker's console is its log file already
    with _QUIET_LOCK:
        loggers = [logging.getLogger("ray")] + [
            lg for name, lg in list(logging.Logger.manager.loggerDict.items())
            if name.startswith("ray.") and isinstance(lg, logging.Logger)]
        for lg in loggers:
            consoles = _console_handlers(lg)
            for h in consoles:
                if _ERRORS_ONLY not in h.filters:
                    h.addFilter(_ERRORS_ONLY)
            # "ray" and the loggers that do not pass their records up to it (Serve's) keep a file.
            if consoles and not lg.propagate and not _has_file(lg) and _SESSION_LOG not in lg.handlers:
                lg.addHandler(_SESSION_LOG)
    _divert_raylet_warnings()
    if not any(f[2] is RayDeprecationWarning and f[0] == "ignore" for f in warnings.filters):
        warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")


# A warning the raylet pushes to the driver through Ray's error channel (printed by the driver's
# listen_error_messages thread, whatever log_to_driver says): "WARNING: 10 PYTHON worker processes
# have been started on node ..." under load. Errors on that channel (a dead actor, a task killed
# for memory) still reach the console.
_RAYLET_WARNING = re.compile(r"^\s*(\x1b\[[0-9;]*m)*WARNING: ")


def _divert_raylet_warnings() -> None:
    """Send the raylet's warnings on the driver's error channel to the session's log file."""
    import ray._private.worker as worker

    if getattr(worker.print_to_stdstream, "_facerec_diverts", False):
        return
    original = worker.print_to_stdstream

    def print_to_stdstream(data, ignore_prefix):
        lines = data.get("lines") or []
        if data.get("pid") == "raylet" and lines and all(_RAYLET_WARNING.match(str(x)) for x in lines):
            for line in lines:
                _SESSION_LOG.handle(logging.LogRecord("ray.raylet", logging.WARNING, __file__, 0, str(line), None, None))
            return
        original(data, ignore_prefix)

    print_to_stdstream._facerec_diverts = True
    worker.print_to_stdstream = print_to_stdstream


def _has_file(logger: logging.Logger) -> bool:
    """Whether the logger already writes a file of its own (Ray Data's ``ray-data.log``)."""
    return any(isinstance(h, logging.FileHandler) or type(h).__name__ == "SessionFileHandler"
               for h in logger.handlers if h is not _SESSION_LOG)


# --------------------------------------------------------------------------------------------
# The driver core worker's native log lines
# --------------------------------------------------------------------------------------------

# The driver core worker's native lines known to be noise, and only those: any other native line
# (a lost plasma store, a crash's last words) still reaches the console. "Actor ... has constructor
# arguments in the object store and max_restarts > 0": logged at error level for every Ray Data
# actor pool, whose creation arguments always are there (ray-project/ray#57733).
_NATIVE_NOISE = re.compile(rb"^(\x1b\[[0-9;]*m)*\[[^]]*\] core_worker\.cc:\d+: Actor with class name: .* has constructor "
                           rb"arguments in the object store and max_restarts > 0")
_native_pump = None  # the subprocess.Popen of the filter, once started

# The filter runs in a process of its own, so that whatever the driver writes just before it dies
# (a native "Terminate the process" line) is still forwarded after it is gone.
_PUMP = """
import os, re, sys
noise = re.compile(sys.argv[1].encode("latin-1"))
rest = b""
while chunk := os.read(0, 1 << 16):
    *lines, rest = (rest + chunk).split(b"\\n")
    out = b"".join(line + b"\\n" for line in lines if not noise.match(line))
    if out:
        os.write(1, out)
if rest:
    os.write(1, rest)
"""


def _filter_native_stderr() -> None:
    """Keep the driver core worker's known-noise native lines (:data:`_NATIVE_NOISE`, which it
    writes to file descriptor 2 as well as to its log file, from C++, past Python's
    ``sys.stderr``) off the console: descriptor 2 becomes a pipe into a small filter process that
    forwards every other line to the real stderr, and Python's ``sys.stderr`` writes to the real
    stderr directly. Only when ``sys.stderr`` is this process's own stderr (a command run in a
    terminal, a pipe or a log file), not when a test harness or a notebook has replaced it; once
    per process."""
    global _native_pump
    if _native_pump is not None:
        return
    try:
        if sys.stderr is not sys.__stderr__ or sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return
    import subprocess

    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        # Its own session: a Ctrl-C meant for the driver does not stop it before the driver's last lines.
        _native_pump = subprocess.Popen([sys.executable, "-I", "-S", "-c", _PUMP, _NATIVE_NOISE.pattern.decode("latin-1")],
                                        stdin=read_end, stdout=real, stderr=real, start_new_session=True)
    except OSError:
        os.close(real)
        os.close(write_end)
        return
    finally:
        os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w", closefd=False), encoding=sys.__stderr__.encoding,
                                  errors="backslashreplace", line_buffering=True, write_through=True)
