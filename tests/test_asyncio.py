"""asyncio with scoopexec: run_in_executor, wrap_future and amap, in clients and inside tasks on workers.

Inside a task, an event loop the task runs parks the task while it waits
(worker.py's task-aware selector), so a one-worker pool can run a task whose
loop awaits sub-tasks, and several tasks of one worker can each run a loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import os
import sys
import threading
import time

import pytest

import scoopexec
from tests import helpers


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x}")
    return x


def mark_and_sleep(path, i, wait):
    with open(os.path.join(path, f"{i}.started"), "w"):
        pass
    time.sleep(wait)
    return i


# ------------------------------------------------------------- in a task
def loop_awaiting_subtasks(n):
    """A task that runs an event loop which awaits sub-tasks, three ways."""

    async def main():
        ex = scoopexec.current_executor()
        loop = asyncio.get_running_loop()
        wrapped = [asyncio.wrap_future(ex.submit(sqr, i)) for i in range(n)]
        in_executor = [loop.run_in_executor(ex, sqr, i) for i in range(n)]
        streamed = [r async for r in scoopexec.amap(sqr, range(n), ordered=True)]
        return await asyncio.gather(*wrapped), await asyncio.gather(*in_executor), streamed

    return asyncio.run(main())


def nested_loops(depth):
    """A task whose loop awaits tasks whose loops await tasks ... ``depth`` levels down."""

    async def main():
        if depth == 0:
            await asyncio.sleep(0.01)
            return 1
        ex = scoopexec.current_executor()
        subs = [asyncio.wrap_future(ex.submit(nested_loops, depth - 1)) for _ in range(2)]
        parts = await asyncio.gather(*subs)
        return sum(parts)

    return asyncio.run(main())


_meeting: dict[str, cf.Future] = {}
_meeting_lock = threading.Lock()


def _rendezvous(name):
    with _meeting_lock:
        return _meeting.setdefault(name, cf.Future())


def wait_for_partner(name):
    """Run a loop that waits until another task of this worker calls ``arrive(name)``.

    Returns what the loop saw after waking: whether the running loop and the
    async-generator hooks of this thread are still its own.
    """

    async def agen():
        yield 1

    async def main():
        me = asyncio.get_running_loop()
        got = await asyncio.wait_for(asyncio.wrap_future(_rendezvous(name)), 30)
        hooks = sys.get_asyncgen_hooks()
        items = [x async for x in agen()]
        return got, asyncio.get_running_loop() is me, getattr(hooks.firstiter, "__self__", None) is me, items

    return asyncio.run(main())


def arrive(name, with_loop):
    """Resolve the rendezvous; with_loop: from inside an event loop of this task."""
    if not with_loop:
        _rendezvous(name).set_result(os.getpid())
        return os.getpid()

    async def main():
        await asyncio.sleep(0.05)
        _rendezvous(name).set_result(os.getpid())
        return os.getpid()

    return asyncio.run(main())


def running_loop_here(_=None):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "a loop is running"


# -------------------------------------------------------------- clients
def test_run_in_executor_and_wrap_future_from_a_client_loop(executor):
    async def main():
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(executor, sqr, 7)
        b = await asyncio.wrap_future(executor.submit(sqr, 8))
        many = await asyncio.gather(*(loop.run_in_executor(executor, sqr, i) for i in range(20)))
        return a, b, many

    assert asyncio.run(main()) == (49, 64, [i * i for i in range(20)])


def test_errors_come_through_with_the_remote_traceback(executor):
    async def main():
        with pytest.raises(ValueError, match="boom") as info:
            await asyncio.wrap_future(executor.submit(helpers.raise_value_error))
        return info.value

    exc = asyncio.run(main())
    assert "raise ValueError(msg)" in str(exc.__cause__)


def test_a_loop_in_another_thread(executor):
    out = []

    def run():
        async def main():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, sqr, 3), [r async for r in executor.amap(sqr, [1, 2])]

        out.append(asyncio.run(main()))

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert out and out[0][0] == 9 and sorted(out[0][1]) == [1, 4]


def test_cancelling_the_awaiting_task_cancels_a_future_not_started(one_worker):
    async def main():
        busy = one_worker.submit(sqr, 1, 1.0)
        fut = one_worker.submit(sqr, 2)
        waiter = asyncio.ensure_future(asyncio.wrap_future(fut))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wrap_future(busy)
        return fut

    fut = asyncio.run(main())
    assert fut.cancelled()


# ---------------------------------------------------------------- amap
def test_amap_yields_every_result_without_blocking_the_loop(executor):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        got = [r async for r in executor.amap(sqr, range(6), [0.3] * 6)]
        t.cancel()
        return got, ticks

    got, ticks = asyncio.run(main())
    assert sorted(got) == [i * i for i in range(6)]
    assert ticks > 0  # the loop ran other work while amap waited


def test_amap_orders_chunks_and_buffers(executor):
    async def collect(agen):
        return [r async for r in agen]

    expected = [i * i for i in range(50)]
    assert asyncio.run(collect(executor.amap(sqr, range(50), ordered=True))) == expected
    assert asyncio.run(collect(executor.amap(sqr, range(50), chunksize=7, ordered=True))) == expected
    assert sorted(asyncio.run(collect(executor.amap(sqr, range(50), chunksize=7)))) == expected
    assert asyncio.run(collect(executor.amap(sqr, range(50), buffersize=3, ordered=True))) == expected
    assert sorted(asyncio.run(collect(scoopexec.amap(sqr, range(5), executor=executor)))) == expected[:5]

    async def first_of_endless():
        out = []
        endless = executor.amap(sqr, itertools.count(), buffersize=4, ordered=True)
        async with contextlib.aclosing(endless) as results:
            async for r in results:
                out.append(r)
                if len(out) == 5:
                    break
        return out

    assert asyncio.run(first_of_endless()) == expected[:5]


def test_amap_checks_its_arguments(executor):
    async def first(agen):
        async for r in agen:
            return r

    for kwargs, kind in (({"chunksize": 0}, ValueError), ({"chunksize": 1.5}, TypeError),
                         ({"buffersize": 0}, ValueError), ({"buffersize": "2"}, TypeError)):
        with pytest.raises(kind):
            asyncio.run(first(executor.amap(sqr, [1], **kwargs)))
    with pytest.raises(TypeError, match="at least one iterable"):
        asyncio.run(first(scoopexec.amap(sqr, executor=executor)))


def test_amap_error_comes_at_its_item(executor):
    async def main(chunksize):
        got = []
        with pytest.raises(ValueError, match="item 3") as info:
            async for r in executor.amap(fail_on, range(6), [3] * 6, chunksize=chunksize, ordered=True):
                got.append(r)
        return got, info.value

    for chunksize in (1, 2, 4):
        got, exc = asyncio.run(main(chunksize))
        assert got == [0, 1, 2]
        assert 'raise ValueError(f"item {x}")' in str(exc.__cause__)


def test_leaving_amap_early_cancels_what_has_not_started(one_worker, tmp_path):
    async def main():
        slow = one_worker.amap(mark_and_sleep, [str(tmp_path)] * 10, range(10), [0.3] * 10)
        async with contextlib.aclosing(slow) as results:
            async for _ in results:
                break

    asyncio.run(main())
    one_worker.shutdown(wait=True)
    started = len(os.listdir(tmp_path))
    assert 1 <= started < 10


# ------------------------------------------------------- inside tasks
def test_a_tasks_loop_awaits_sub_tasks_on_a_single_worker(one_worker):
    # One worker: the sub-tasks can only run while the task's loop waits.
    assert one_worker.submit(loop_awaiting_subtasks, 5).result(timeout=60) == (
        [0, 1, 4, 9, 16], [0, 1, 4, 9, 16], [0, 1, 4, 9, 16],
    )


def test_loops_inside_loops_on_a_single_worker(one_worker):
    assert one_worker.submit(nested_loops, 3).result(timeout=60) == 8


@pytest.mark.parametrize("with_loop", [False, True])
def test_two_tasks_of_one_worker_each_with_a_loop(one_worker, with_loop):
    name = f"meeting-{with_loop}"
    waiting = one_worker.submit(wait_for_partner, name)
    arriving = one_worker.submit(arrive, name, with_loop)
    pid = arriving.result(timeout=60)
    got, same_loop, own_hooks, items = waiting.result(timeout=60)
    assert got == pid  # the same worker process: one task woke the other's loop
    assert same_loop and own_hooks and items == [1]
    # No loop stays "running" on the worker once those tasks are done.
    assert one_worker.submit(running_loop_here).result(timeout=60) is None


def test_many_task_loops_at_once(executor):
    fs = [executor.submit(loop_awaiting_subtasks, 3) for _ in range(6)]
    for f in fs:
        assert f.result(timeout=120) == ([0, 1, 4], [0, 1, 4], [0, 1, 4])


def test_a_task_can_block_on_a_loop_in_a_thread(one_worker):
    # A thread of a task with its own loop: the real selector there (not the task's).
    assert one_worker.submit(_loop_in_thread).result(timeout=60) == 9


def _loop_in_thread():
    box = []

    def run():
        async def main():
            await asyncio.sleep(0.05)
            return sqr(3)

        box.append(asyncio.run(main()))

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return box[0]
