"""Reproducible randomness: map(..., seed=S) gives each item streams of its own, whatever runs it."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

import scoopexec
from scoopexec import ScoopExecutor
from scoopexec.seeding import SeededCall, SeedSequence, task_rng
from tests import journal_helpers as jh


def _expected(fn, seed, items):
    """What a seeded map must return: each item's call made here, in any order."""
    entropy = seed if isinstance(seed, tuple) else (seed,)
    out = {i: SeededCall(fn, entropy)(i, *args) for i, args in reversed(list(enumerate(items)))}
    return [out[i] for i in range(len(items))]


def test_the_derivation_is_pinned():
    # Changing these numbers changes every seeded result (and every seeded journal key).
    assert SeedSequence(1234).spawn_child(7).generate_state(4) == SeedSequence(1234, (7,)).generate_state(4)
    words = SeedSequence(1234, (7,)).generate_state(4)
    assert all(0 <= w < 2**32 for w in words)
    assert words == SeedSequence((1234,), [7]).generate_state(4)
    assert SeedSequence(1234, (7,)).generate_state(12)[:4] == words  # a prefix of a longer state
    assert words != SeedSequence(1234, (8,)).generate_state(4)
    assert words != SeedSequence(1235, (7,)).generate_state(4)
    assert SeedSequence((1, 2)).generate_state(2) != SeedSequence((2, 1)).generate_state(2)
    assert SeedSequence((1, 2)).generate_state(2) != SeedSequence(1, (2,)).generate_state(2)
    assert words == [3187010868, 4265439064, 1998244681, 2114627446]


def test_bad_seeds_are_refused(executor):
    for bad, err in (
        (-1, ValueError),
        (True, TypeError),
        (1.5, TypeError),
        ((), TypeError),
        ((1, -2), ValueError),
    ):
        with pytest.raises(err, match="seed"):
            executor.map(abs, [1], seed=bad)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_are_the_same_for_any_number_of_workers(workers):
    items = [(x,) for x in range(24)]
    expected = _expected(jh.draw, 99, items)
    with ScoopExecutor(max_workers=workers) as ex:
        assert list(ex.map(jh.draw, range(24), seed=99)) == expected
        assert list(ex.map(jh.draw, range(24), seed=99, chunksize=5)) == expected
        assert list(ex.map(jh.draw, range(24), seed=99, buffersize=2)) == expected
        assert sorted(ex.map(jh.draw, range(24), seed=99, unordered=True)) == sorted(expected)
        other = list(ex.map(jh.draw, range(24), seed=100))
        assert all(a[1:] != b[1:] for a, b in zip(other, expected, strict=True))
        tupled = list(ex.map(jh.draw, range(24), seed=(99, 1)))
        assert tupled == _expected(jh.draw, (99, 1), items) and tupled != expected
        assert len({r[1:] for r in expected}) == 24  # items differ from each other


def test_the_same_after_a_worker_died_and_its_item_ran_again(tmp_path):
    expected = _expected(jh.draw, 5, [(x,) for x in range(10)])
    with ScoopExecutor(max_workers=2) as ex:
        got = list(ex.map(jh.draw_or_die, range(10), [str(tmp_path)] * 10, seed=5))
    assert (tmp_path / "died").exists()  # item 5's first attempt killed its worker
    assert got == expected


def test_a_task_that_parks_keeps_its_own_random_streams():
    # One worker: the outer tasks park in their nested maps, the worker runs the other outer
    # tasks and the nested ones meanwhile, all drawing from `random` and numpy's generator.
    expected = _expected(jh.draw_around_nothing, 3, [(x,) for x in range(6)])
    with ScoopExecutor(max_workers=1) as ex:
        assert list(ex.map(jh.draw_around_a_nested_map, range(6), seed=3)) == expected
    with ScoopExecutor(max_workers=3) as ex:
        assert list(ex.map(jh.draw_around_a_nested_map, range(6), seed=3)) == expected


def test_a_journal_resume_gives_the_same_values(tmp_path, executor):
    path = tmp_path / "j"
    fresh = list(executor.map(jh.draw, range(12), seed=11))
    assert list(executor.map(jh.draw, range(5), seed=11, journal=path)) == fresh[:5]
    assert list(executor.map(jh.draw, range(12), seed=11, journal=path, chunksize=3)) == fresh


def test_task_rng_outside_a_seeded_map():
    rng = task_rng()
    assert isinstance(rng, random.Random) and task_rng() is rng and scoopexec.task_rng is task_rng
    assert rng is not getattr(random, "_inst", None)
    state = random.getstate()
    rng.random()
    assert random.getstate() == state  # its own generator, not the random module's
    assert np.random.random() is not None


def test_a_function_that_cannot_be_sent_is_named_as_without_a_seed(executor):
    import threading

    from scoopexec import SerializationError

    lock = threading.Lock()
    for options in ({"seed": 1}, {"seed": 1, "chunksize": 2}):
        with pytest.raises(SerializationError, match=r"cannot send the function .*<lambda> \(defined at "):
            list(executor.map(lambda x, held=lock: held, [1, 2], **options))


def _two(a, b):
    return a


@pytest.mark.parametrize("chunksize", [1, 2])
def test_an_item_that_cannot_be_sent_is_named_as_without_a_seed(executor, chunksize):
    import re
    import threading

    from scoopexec import SerializationError

    def message(fn, *iterables, **options):
        with pytest.raises(SerializationError) as info:
            list(executor.map(fn, *iterables, chunksize=chunksize, **options))
        return re.sub(r"submitted at [^:]+:\d+", "submitted at X", str(info.value))

    lock = threading.Lock()
    two = message(_two, [1, 2, 3], [1, 2, lock], seed=1)
    assert two == message(_two, [1, 2, 3], [1, 2, lock])
    assert two.startswith(
        f"cannot send item 2 of map({__name__}._two, ...) to a worker, submitted at X: its part "
        "items[2][1] (a _thread.lock) cannot be pickled: TypeError: cannot pickle '_thread.lock' object"
    )
    one = message(abs, [1, 2, lock], seed=1)
    assert one == message(abs, [1, 2, lock])
    assert one.startswith(
        "cannot send item 2 (a _thread.lock) of map(abs, ...) to a worker, submitted at X: TypeError: "
    )


def test_the_random_modules_own_generators_are_the_workers_not_copies_of_the_clients(executor):
    # random.random and numpy.random.random are methods of their module's global generator:
    # pickled by value, every task drew the client's next numbers (ProcessPoolExecutor's do).
    import functools

    with executor:
        assert len({executor.submit(random.random).result() for _ in range(6)}) == 6
        assert len({executor.submit(np.random.random).result() for _ in range(6)}) == 6
        uniform = functools.partial(random.uniform, 0.0)  # (a DEAP ephemeral constant's kind)
        seeded = [list(executor.map(uniform, [1.0] * 8, seed=11, chunksize=c)) for c in (1, 3)]
        assert seeded[0] == seeded[1] == _expected(uniform, 11, [(1.0,)] * 8) and len(set(seeded[0])) == 8


def pid_and_draw(_):
    return os.getpid(), float(np.random.random())


def test_forked_workers_do_not_share_numpys_global_generator():
    # random reseeds itself in a fork's child; numpy's legacy global generator does not, and
    # workers forked from one template drew the same sequences (as ProcessPoolExecutor's do).
    np.random.random()  # (numpy.random loaded before the workers are forked: they inherit it)
    import multiprocessing
    import warnings

    with warnings.catch_warnings():  # (forks whatever threads an earlier test left: see the warning)
        warnings.simplefilter("ignore", DeprecationWarning)
        ex = ScoopExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
    with ex:
        assert ex._session.workers.local.template.origin == "client"
        ex.submit(pid_and_draw, 0).result()
        draws = list(ex.map(pid_and_draw, range(200), chunksize=5))
    by_pid = {}
    for pid, value in draws:
        by_pid.setdefault(pid, set()).add(value)
    assert len(by_pid) == 2, "both workers ran some of the map"
    first, second = by_pid.values()
    assert not first & second


def test_a_worker_forked_while_another_thread_holds_numpys_generator_still_starts():
    # The reseed takes the generator's lock; a fork made while another thread held it (a
    # fork context beside a thread that draws) left it held for a thread that is not there.
    import multiprocessing
    import threading
    import warnings

    lock = np.random.mtrand._rand._bit_generator.lock
    held, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ex = ScoopExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        with ex:
            assert ex.submit(abs, -3).result(timeout=30) == 3
    finally:
        done.set()
        thread.join()
