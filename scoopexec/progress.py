"""Progress bars for ``map(..., progress=True)``.

The bar counts items whose task has finished (with a result or an error),
which is what "how far along is it" means when results come back out of
order or are consumed lazily: a done-callback on each task's future
advances it, in whichever thread resolves futures (the broker's or the
client's I/O thread), under a lock.  When the consumer has taken every
result the bar is completed and closed from the consumer's thread, so that
its last line comes before whatever the program prints next.

Drawing uses tqdm when it is installed (``pip install 'scoopexec[progress]'``).
tqdm is one small pure-Python package with no dependencies of its own, it is
what scientific Python users already have and recognise, it redraws a
single line that coexists with the task output scoopexec forwards to the
same terminal, and it degrades sensibly when stderr is a file.  rich draws
nicer bars but takes the terminal over with a live display, which
interleaves badly with forwarded worker output, and brings several
dependencies.  Without tqdm a plain line on stderr says the same (count,
total, percentage, rate, time left): redrawn in place on a terminal, and
one line every few seconds when stderr is a file or a pipe.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["PLAIN_LINE_INTERVAL", "MapProgress", "PlainBar"]

PLAIN_LINE_INTERVAL = 5.0  # seconds between lines when stderr is not a terminal


class PlainBar:
    """``desc: 120/1000 (12%) 350.2 tasks/s, 2.5 s left`` on stderr, without any extra package."""

    def __init__(self, desc: str, *, file: TextIO | None = None, unit: str = "task") -> None:
        self.desc = desc
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        try:
            self.tty = bool(self.file.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.start = time.monotonic()
        self.interval = 0.1 if self.tty else PLAIN_LINE_INTERVAL
        self._last = time.monotonic() if not self.tty else -1e9
        self._width = 0

    def show(self, n: int, total: int | None, force: bool = False) -> None:
        """Draw ``n`` of ``total`` if it is time to.

        ``force``: now, if on a terminal, where a redraw costs no extra line.
        """
        now = time.monotonic()
        if (force and self.tty) or now - self._last >= self.interval:
            self._last = now
            self._write(self.line(n, total, now), final=False)

    def close(self, n: int, total: int | None) -> None:
        """Draw the last state and end the line."""
        self._write(self.line(n, total), final=True)

    def line(self, n: int, total: int | None, now: float | None = None) -> str:
        """The text of the bar for ``n`` of ``total`` items done."""
        elapsed = max(1e-9, (now if now is not None else time.monotonic()) - self.start)
        rate = n / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if total:
            text = f"{head}{n}/{total} ({100.0 * n / total:.0f}%) {rate:,.1f} {self.unit}s/s"
            if 0 < n < total:
                text += f", {_clock((total - n) / rate)} left"
            else:
                text += f", {_clock(elapsed)}"
        else:
            text = f"{head}{n} done, {rate:,.1f} {self.unit}s/s, {_clock(elapsed)}"
        return text

    def _write(self, text: str, final: bool) -> None:
        try:
            if self.tty:
                pad = " " * max(0, self._width - len(text))
                self._width = len(text)
                self.file.write(f"\r{text}{pad}" + ("\n" if final else ""))
            else:
                self.file.write(text + "\n")
            self.file.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not break the map


class _TqdmBar:
    def __init__(self, desc: str, *, file: TextIO | None, unit: str, total: int | None) -> None:
        from tqdm import tqdm

        self._bar: Any = tqdm(
            total=total,
            desc=desc or None,
            unit=unit,
            file=file if file is not None else sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
            mininterval=0.2,
        )

    def show(self, n: int, total: int | None, force: bool = False) -> None:
        bar = self._bar
        if total is not None and bar.total != total:
            bar.total = total
            force = True
        bar.update(n - bar.n)
        if force:
            bar.refresh()

    def close(self, n: int, total: int | None) -> None:
        self.show(n, total)
        self._bar.close()


class MapProgress:
    """Counts one map's finished items and draws them (tqdm if installed, else PlainBar).

    ``total`` may be None while the input's length is unknown; set_total()
    gives it once the input is exhausted.  task_done() is called from
    done-callbacks in any thread; finish() by the consumer once it has every
    result, close() when it stops early.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        file: TextIO | None = None,
        unit: str = "task",
        plain: bool = False,
    ) -> None:
        self.total = total
        self.n = 0
        self.closed = False
        self._lock = threading.Lock()
        self.bar: PlainBar | _TqdmBar
        if not plain:
            try:
                self.bar = _TqdmBar(desc, file=file, unit=unit, total=total)
                return
            except ImportError:
                pass
        self.bar = PlainBar(desc, file=file, unit=unit)

    def task_done(self, n: int = 1) -> None:
        """``n`` more items finished."""
        with self._lock:
            if self.closed:
                return
            self.n += n
            self.bar.show(self.n, self.total)

    def set_total(self, total: int) -> None:
        """The input is exhausted: ``total`` items in all."""
        with self._lock:
            if not self.closed and self.total != total:
                self.total = total
                self.bar.show(self.n, total, force=True)

    def finish(self) -> None:
        """The consumer has every result: complete the bar and close it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.total is not None:
                self.n = max(self.n, self.total)  # the last callbacks may still be on their way
            self.bar.close(self.n, self.total)

    def close(self) -> None:
        """Stop drawing, showing the count reached (the consumer stopped early)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.bar.close(self.n, self.total)


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
