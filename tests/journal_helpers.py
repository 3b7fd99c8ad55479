"""Functions the journal and seeding tests map (importable, so workers find them by name)."""

from __future__ import annotations

import os
import random
import uuid

import numpy as np

import scoopexec


def square(x):
    return x * x


def cube(x):
    return x * x * x


def _mark(x, d):
    with open(os.path.join(d, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass


def counted(x, d):
    """x * x, leaving a file in d for each time it ran."""
    _mark(x, d)
    return x * x


def counted_cube(x, d):
    _mark(x, d)
    return x * x * x


def counted_fails_on_3(x, d):
    _mark(x, d)
    if x == 3:
        raise ValueError("three")
    return x * x


def draw(x):
    """What a seeded item draws: random, task_rng() and numpy's global generator."""
    rng = scoopexec.task_rng()
    return (x, random.random(), random.getrandbits(64), rng.random(), float(np.random.random()))


def draw_or_die(x, marker_dir):
    """draw(x); but item 5 first kills its own worker (SIGKILL), once: the item runs again elsewhere."""
    if x == 5:
        try:
            fd = os.open(os.path.join(marker_dir, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            random.random()  # draw first: the retry must not see this
            os.kill(os.getpid(), 9)
    return draw(x)


def disturb(_):
    """A task that draws a lot from the shared generators."""
    for _ in range(50):
        random.random()
        np.random.random()


def draw_around_a_nested_map(x):
    """Draw, wait for a nested map (the task parks; others run and draw), draw again."""
    rng = scoopexec.task_rng()
    first = (random.random(), float(np.random.random()), rng.random())
    list(scoopexec.map(disturb, range(3)))
    inner = list(scoopexec.map(draw, range(2), seed=rng.getrandbits(64)))
    second = (random.random(), float(np.random.random()), rng.random())
    return x, first, second, inner


def draw_around_nothing(x):
    """draw_around_a_nested_map's draws, without the nested maps (the expected values)."""
    rng = scoopexec.task_rng()
    first = (random.random(), float(np.random.random()), rng.random())
    seed = rng.getrandbits(64)
    saved = random.getstate(), np.random.get_state()  # the inner items run elsewhere, not here
    inner = [scoopexec.seeding.SeededCall(draw, (seed,))(i, i) for i in range(2)]
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    second = (random.random(), float(np.random.random()), rng.random())
    return x, first, second, inner
