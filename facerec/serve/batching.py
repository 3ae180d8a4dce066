"""Keep ``@serve.batch`` batches full under load.

Ray Serve 2.60's ``@serve.batch`` forms the next batch as soon as the previous one has been
*handed to* its executor, not when it has *finished*: ``_BatchQueue._process_batches`` loops on
``wait_for_batch`` and only the created task waits on the ``max_concurrent_batches`` semaphore.
While a 50 ms batch computes, every ``batch_wait_timeout_s`` (10 ms) a new batch of whatever has
arrived — usually one request — is formed and parked behind the semaphore. Under closed-loop load
the Embedder therefore ran batches of 1.0 on average (bench_serve, 8 and 32 clients), and dynamic
batching bought nothing.

:class:`IdleGate` restores the usual dynamic-batching behaviour (TF Serving's / Triton's
scheduler: a batch is taken when the model is free): callers wait at the gate while a batch
runs and all enter the batch queue together when it ends, so the next batch holds everything
that queued meanwhile (up to ``max_batch_size``). An idle replica admits at once, so a lone
request only waits ``batch_wait_timeout_s`` (0 by default in ``ModelConfig``: no wait at all).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class IdleGate:
    """``await gate.wait()`` before entering the ``@serve.batch`` method; wrap the batch
    method's body in ``async with gate.busy():``. One gate per batched method and replica."""

    def __init__(self) -> None:
        self._idle = asyncio.Event()  # binds to the running loop on first use (Python >= 3.10)
        self._idle.set()
        self._running = 0

    async def wait(self) -> None:
        await self._idle.wait()

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()
