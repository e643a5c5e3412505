"""Stopping a plugin's read loop must end it even when a cancellation gets lost on the way."""

from __future__ import annotations

import asyncio

from waystation.controller.process import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                # What Python 3.11's wait_for does when the inner call finishes as the cancel arrives.
                if swallowed == 0:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled()
    assert swallowed == 1


async def test_a_failed_task_does_not_raise_into_the_caller() -> None:
    async def fails() -> None:
        raise RuntimeError("plugin broke")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)
