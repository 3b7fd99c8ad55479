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
