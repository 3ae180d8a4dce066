"""Connecting to Ray the way a user expects: the cluster of ``ray job submit`` / ``RAY_ADDRESS``
when there is one, the one ``ray start`` registered on this machine, a new local Ray otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect the driver to Ray; no-op when already connected.

    ``address`` None: the cluster of ``RAY_ADDRESS`` (set by ``ray job submit``), else the one
    the last ``ray start`` on this machine registered (``/tmp/ray/ray_current_cluster``), else a
    new local Ray with ``num_cpus``. ``"local"`` always starts a new local Ray; anything else is
    passed to ``ray.init(address=...)`` (e.g. ``"auto"``, ``"ray://head:10001"``,
    ``"10.0.0.1:6379"``). Unlike ``"auto"``, the default never joins some other Ray found by
    scanning processes, and a stale registration of a cluster that is gone is ignored.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)
    local = dict(kwargs, address="local", num_cpus=num_cpus)
    local.setdefault("include_dashboard", False)
    # Joining a running cluster: its resources are its own, a dashboard is already there.
    join = {k: v for k, v in kwargs.items() if k != "include_dashboard"}
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


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
