"""Progress for long commands: a tqdm bar on a terminal, one plain line per interval in a log or a pipe.

tqdm redraws its bar with carriage returns, which a log file, ``mpirun`` or a CI console shows as one endless line;
so when standard error is not a terminal the same calls print a whole line (count, percent, elapsed, ETA and the
caller's postfix) every ``interval`` seconds and once at the end.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


class LineProgress:
    """The subset of tqdm's interface the commands use, printed as one line per ``interval`` seconds."""

    def __init__(self, total: int, unit: str, desc: str, interval: float = 10.0, file=None, initial: int = 0):
        self.total, self.unit, self.desc, self.interval = int(total), unit, desc, float(interval)
        self.file = file or sys.stderr
        self.n = self.initial = int(initial)
        self.postfix = ""
        self.start = self.last = time.perf_counter()
        self.closed = False
        self.printed: tuple[int, str] | None = None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.printed != (self.n, self.postfix):  # the last line already said it all
                self._print(time.perf_counter())

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        fraction = self.n / self.total if self.total else 1.0
        # The rate of this run's own work: units done before it started (a resumed run's) took no time here.
        done = self.n - self.initial
        eta = elapsed * (self.total - self.n) / done if done > 0 and fraction < 1 else 0.0
        line = (f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * fraction:.0f}%), "
                f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s")
        print(line + (f", {self.postfix}" if self.postfix else ""), file=self.file, flush=True)
        self.printed = (self.n, self.postfix)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NoProgress:
    """``--quiet``: the same interface, printing nothing."""

    def __init__(self, initial: int = 0):
        self.n = int(initial)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def progress_bar(total: int, unit: str, desc: str, quiet: bool = False, interval: float = 10.0, initial: int = 0):
    """A progress reporter on standard error: tqdm on a terminal, :class:`LineProgress` otherwise.

    ``initial``: units already done when it starts (a resumed run), counted in the total but not in the rate
    the ETA comes from."""
    if quiet:
        return NoProgress(initial)
    if sys.stderr.isatty() and _columns(sys.stderr) > 0:
        return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                    initial=initial)
    return LineProgress(total, unit, desc, interval, initial=initial)


def _columns(stream) -> int:
    # A terminal that reports no width (a bare pty under `script`, some CI runners) gets an empty tqdm bar.
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0
