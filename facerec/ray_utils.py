"""Connecting to Ray the way a user expects: the cluster of ``ray job submit`` / ``RAY_ADDRESS``
when there is one, a local cluster otherwise."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None, **kwargs) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs.setdefault("log_to_driver", True)
    kwargs.setdefault("include_dashboard", False)
    if os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit` or pointed at a cluster: join it, never start a second one.
        kwargs.pop("include_dashboard", None)
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
