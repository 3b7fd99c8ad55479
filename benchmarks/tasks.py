"""Task functions for the benchmarks (a module, so every contender imports them by name)."""

from __future__ import annotations

import time


def noop(x=None):
    return x


def echo(x):
    return x


def burn(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n
