"""map(..., chunksize="auto") and scoop_map's default (scoopexec/autochunk.py): correctness only
-- order, errors at their item, lazy inputs, buffersize, timeouts -- never speed."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import time

import pytest

from scoopexec import autochunk, scoop_map
from scoopexec.autochunk import Sizer
from tests import helpers


def inc(x):
    return x + 1


def fail_at(bad, x):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


# ------------------------------------------------------------------ sizing, alone
def test_nothing_measured_means_one_item_per_task():
    assert Sizer(2, total=1000).next() == 1


def test_chunks_grow_at_most_twofold_towards_the_target():
    s = Sizer(2, total=None, target=0.005)
    s.observe(0.000_01 * 4, 4)  # 10 us per item: the target is about 500 items
    sizes = [s.next() for _ in range(12)]
    assert sizes[:6] == [2, 4, 8, 16, 32, 64]
    assert max(sizes) in (499, 500)


def test_a_chunk_holds_about_the_target_and_at_least_one_item():
    s = Sizer(2, total=None, target=0.005)
    s.observe(0.010, 10)  # 1 ms each
    assert [s.next() for _ in range(4)] == [2, 4, 5, 5]
    slow = Sizer(2, total=None)
    slow.observe(2.0, 1)
    assert slow.next() == 1


def test_every_worker_gets_a_share_when_the_count_is_known():
    s = Sizer(4, total=100, prior=1e-9)  # practically free: yet no chunk beyond 100 / 4 items
    assert s.next() == 25


def test_a_cost_known_from_an_earlier_map_sizes_the_first_chunk():
    assert Sizer(2, total=None, prior=0.000_1, target=0.005).next() == 50


def _plan(sizer):
    sizes = []
    while sizer.unsent:
        sizes.append(sizer.next())
    return sizes


def test_a_known_count_goes_in_few_chunks_that_shrink_to_the_target():
    # 600 items of 10 ms on 2 workers: a chunk per item was 600 tasks a DEAP generation.
    sizes = _plan(Sizer(2, total=600, prior=0.010, target=0.005))
    assert sum(sizes) == 600
    assert len(sizes) <= 40, sizes
    assert sizes == sorted(sizes, reverse=True), "larger first, smaller last"
    assert max(sizes) == int(autochunk.LONGEST / 0.010), "no chunk beyond LONGEST of work"
    assert sizes[-3:] == [1, 1, 1], "the last chunks hold what the target allows: the workers end together"


def test_cheap_items_start_with_a_share_of_the_items_and_end_below_the_target():
    sizes = _plan(Sizer(2, total=600, prior=0.000_1, target=0.005))
    assert sizes[0] == 600 // (autochunk.SPREAD * 2)  # what remains / (SPREAD x workers)
    # About TAIL x TARGET (1.25 ms) of work at the end, in equal rounds (4 x 11): chunks of 150
    # and 113 went out first, two to a worker (its credit), and the end evens them out.
    assert 10 <= min(sizes) <= 13 and sizes[-4:] == [11] * 4, sizes
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) >= 600


def test_the_smaller_end_takes_first_chunks_of_twice_the_target_and_two_workers():
    # 204 items of 0.1 ms on 2 workers: a first chunk of 51, one item over the target (50), keeps
    # the plan of 200 items (a smaller end made it 9 tasks); 400 items: first chunks of 100.
    assert _plan(Sizer(2, total=204, prior=0.000_1, target=0.005)) == [51, 39, 39, 39, 39]
    assert _plan(Sizer(2, total=400, prior=0.000_1, target=0.005))[-4:] == [10] * 4
    # One worker has no one to end with: the plan it had (its last 75 items in 2 rounds of 1).
    assert _plan(Sizer(1, total=600, prior=0.000_1, target=0.005)) == [300, 150, 75, 38, 38]


def test_the_probes_count_in_what_the_last_rounds_share():
    from scoopexec.autochunk import ordered

    sizes = []

    def cheap(x):
        return x

    def submit(args):  # (each chunk done at once, as a worker reports it: 0.1 ms an item)
        chunk = args[0]
        sizes.append(len(chunk))
        done: cf.Future = cf.Future()
        done.set_result((0.000_1 * len(chunk), [cheap(*a) for a in chunk], None))
        return done

    out = list(ordered(cheap, iter([(i,) for i in range(600)]), submit, workers=2, total=600,
                       end_time=None, buffersize=None))  # fmt: skip
    assert out == list(range(600)) and sum(sizes) == 600
    assert sizes[:4] == [1, 1, 1, 1]  # the probes
    # The last round's chunks are equal but for rounding (at most rounds x workers - 1 = 3 items
    # short); with the 4 probes uncounted, the last was 4 items shorter still: [.., 13, 7].
    assert 0 <= sizes[-2] - sizes[-1] <= 3, sizes


def test_a_map_of_equal_chunks_from_the_start_ends_in_chunks_of_the_target():
    # 600 items of 0.1 ms on 8 workers: 7.5 ms a worker, under SPREAD x TARGET: one equal size
    # throughout, no smaller end (more tasks would only cost).
    assert _plan(Sizer(8, total=600, prior=0.000_1, target=0.005)) == [38] * 16


def test_the_end_of_a_map_goes_in_whole_rounds_of_one_chunk_per_worker():
    # DEAP's es/cma_minfct: 600 evaluations of ~25 us on 2 workers. Chunks of the target
    # (200 items) made 3 tasks: one worker ran two while the other waited.
    assert _plan(Sizer(2, total=600, prior=0.000_025, target=0.005)) == [150, 150, 150, 150]
    assert Sizer(2, total=0, prior=0.000_025).next() >= 1  # nothing to send (an empty map): no error
    tail = _plan(Sizer(3, total=600, prior=0.000_1, target=0.005))[-6:]
    assert tail == [11] * 6, tail  # the last 66 items: two rounds of 3 equal chunks


def test_an_unknown_count_keeps_chunks_at_the_target():
    s = Sizer(2, total=None, prior=0.010, target=0.005)
    assert [s.next() for _ in range(3)] == [1, 1, 1]


def test_the_cost_is_remembered_per_function_while_it_lives():
    def f(x):
        return x

    autochunk.remember_cost(f, 0.5)
    assert autochunk.known_cost(f) == 0.5
    assert autochunk.known_cost(inc) is None or autochunk.known_cost(inc) != 0.5
    del f
    assert not [v for v in autochunk._costs.values() if v == 0.5]  # gone with the function

    class Slotted:
        __slots__ = ()

        def __call__(self, x):
            return x

    g = Slotted()  # cannot be weakly referenced: not remembered, and no error
    autochunk.remember_cost(g, 0.5)
    assert autochunk.known_cost(g) is None


# ------------------------------------------------------------------ on a pool
def test_results_in_order_first_map_and_next(executor):
    xs = list(range(2000))
    fn = functools.partial(inc)
    assert list(executor.map(fn, xs, chunksize="auto")) == [x + 1 for x in xs]
    assert autochunk.known_cost(fn) is not None  # measured: the next map sizes at once
    assert list(executor.map(fn, xs, chunksize="auto")) == [x + 1 for x in xs]
    assert list(executor.map(pow, range(50), itertools.repeat(2), chunksize="auto")) == [
        x**2 for x in range(50)
    ]
    assert list(executor.map(inc, [], chunksize="auto")) == []


def test_a_map_of_known_cost_and_length_is_sent_in_few_tasks(executor):
    fn = functools.partial(inc)
    autochunk.remember_cost(fn, 0.010)  # as the previous generation measured
    call = functools.partial(autochunk.run_timed, fn)
    sizes = []

    def submit(args):
        sizes.append(len(args[0]))
        return executor.submit(call, *args)

    with executor:
        items = iter([(x,) for x in range(600)])
        got = list(autochunk.ordered(fn, items, submit, workers=2, total=600, end_time=None, buffersize=None))
    assert got == list(range(1, 601))
    assert sum(sizes) == 600 and len(sizes) <= 40, sizes
    assert sizes[-1] == 1


@pytest.mark.parametrize("bad", [0, 3, 777, 1999])
def test_an_error_surfaces_at_its_item_after_the_items_before_it(executor, bad):
    fn = functools.partial(fail_at, bad)
    for _ in range(2):  # measuring, then sized from the start
        got = []
        with pytest.raises(ValueError, match=f"item {bad} is bad") as info:
            for v in executor.map(fn, range(2000), chunksize="auto"):
                got.append(v)
        assert got == list(range(bad))
        assert f"item {bad} is bad" in str(info.value.__cause__)


def test_a_generator_is_read_as_chunks_are_sent(executor):
    assert list(executor.map(inc, (x for x in range(3000)), chunksize="auto")) == list(range(1, 3001))


def test_buffersize_reads_an_endless_input_lazily(executor):
    for _ in range(2):
        it = executor.map(inc, itertools.count(), chunksize="auto", buffersize=3)
        assert list(itertools.islice(it, 5000)) == list(range(1, 5001))
        it.close()


def test_buffersize_bounds_the_tasks_in_flight(executor):
    read = []

    def source():
        for x in range(10_000):
            read.append(x)
            yield x

    fn = functools.partial(inc)
    autochunk.remember_cost(fn, 0.001)  # 1 ms an item: 5 items a chunk
    it = executor.map(fn, source(), chunksize="auto", buffersize=2)
    assert len(read) == 2 * 5, "two tasks of 5 items in flight, nothing more read"
    assert next(it) == 1
    # One task done: one more sent, at most twice as long (the cost measured is far lower).
    assert len(read) <= 2 * 5 + 10, f"{len(read)} items read"
    assert list(itertools.islice(it, 999)) == list(range(2, 1001))
    it.close()


def test_timeout_comes_after_the_items_done_in_time(executor):
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in executor.map(time.sleep, [0, 0, 3], chunksize="auto", timeout=1.5):
            results.append(r)
    assert results == [None, None]


def test_leaving_early_cancels_the_rest(executor):
    it = executor.map(helpers.sleep_and_return, [0.0] + [0.2] * 200, chunksize="auto")
    assert next(it) is None
    start = time.monotonic()
    it.close()
    executor.submit(abs, -1).result(timeout=30)  # the pool is free again soon
    assert time.monotonic() - start < 30


def test_unordered_auto_runs_one_item_per_task(executor):
    assert sorted(executor.map(inc, range(100), chunksize="auto", unordered=True)) == list(range(1, 101))


def test_a_chunksize_that_is_neither_a_number_nor_auto_is_refused(executor):
    with pytest.raises(TypeError, match='chunksize must be an integer or "auto"'):
        executor.map(inc, [1], chunksize="big")


def test_scoop_map_chunks_automatically_by_default(executor):
    with executor:
        assert scoop_map(inc, range(500)) == list(range(1, 501))
        with pytest.raises(ValueError, match="item 250 is bad"):
            scoop_map(functools.partial(fail_at, 250), range(500))
