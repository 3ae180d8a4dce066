"""IdleGate in front of ``@serve.batch``: requests that arrive while a batch computes form the
next batch together (instead of one batch per ``batch_wait_timeout_s`` tick)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ray import serve

from facerec.serve.batching import IdleGate


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class _SlowBatched:
    def __init__(self, seconds: float, wait_s: float):
        self.seconds = seconds
        self.gate = IdleGate()
        self.run.set_batch_wait_timeout_s(wait_s)

    async def __call__(self, x: int) -> tuple[int, int]:
        await self.gate.wait()
        return await self.run(x)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def run(self, items: list[int]) -> list[tuple[int, int]]:
        async with self.gate.busy():
            await asyncio.sleep(self.seconds)
        return [(x, len(items)) for x in items]


@pytest.mark.parametrize("wait_s", [0.0, 0.01])  # 0: the default, the gate alone forms the batch
def test_requests_queued_during_a_batch_form_one_batch(live_app, wait_s):
    handle = serve.run(_SlowBatched.bind(1.0, wait_s), name="gate-test", route_prefix=None)
    try:
        assert handle.remote(-1).result(timeout_s=60) == (-1, 1)  # replica warm, gate idle
        first = handle.remote(0)
        time.sleep(0.2)  # the first batch (of one) is now computing for 1 s
        # Arrivals spread over 7 x 20 ms, well past the 10 ms batch wait: without the gate
        # Serve 2.60 parks them as several small batches behind the running one.
        late = []
        for i in range(1, 8):
            late.append(handle.remote(i))
            time.sleep(0.02)
        assert first.result(timeout_s=60) == (0, 1)
        got = sorted(r.result(timeout_s=60) for r in late)
        assert got == [(i, 7) for i in range(1, 8)], got
    finally:
        serve.delete("gate-test")


def test_gate_idle_admits_at_once_and_busy_blocks():
    asyncio.run(_gate_scenario())


async def _gate_scenario():
    gate = IdleGate()
    await asyncio.wait_for(gate.wait(), 0.1)  # idle: no wait
    entered = asyncio.Event()

    async def batch():
        async with gate.busy():
            entered.set()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(batch())
    await entered.wait()
    waiter = asyncio.create_task(gate.wait())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # a batch runs: callers wait
    await task
    await asyncio.wait_for(waiter, 1.0)  # released when it ends
