"""Progress output that fits where it goes: a tqdm bar when stderr is a terminal; otherwise (CI, a log file, a
pipe) one plain line every few seconds and a last one at the end, instead of thousands of carriage-return frames.
Every loop of pfpld that reports progress (synth, prepare-data, train, eval) goes through progress()."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

INTERVAL_ENV = "PFPLD_PROGRESS_SECONDS"     # seconds between lines when stderr is not a terminal
DEFAULT_INTERVAL_S = 5.0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True):
    """A progress reporter over `iterable` (or updated by hand with update(n)): tqdm on a terminal, LineProgress
    elsewhere. Both iterate, update(n), set_description(_str), set_postfix(_str), write(msg), close() and work as a
    context manager. enabled=False reports nothing (write() still prints)."""
    if enabled and _stderr_is_terminal():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, leave=leave,
                        interval_s=interval_from_env() if enabled else None)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):         # replaced by an object without isatty, or closed
        return False


def interval_from_env() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(text)) if text.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


class LineProgress:
    """Writes `desc: 120/1000 face (12%), 35.1 face/s, 25 s left` to stderr at most once per interval_s, and a
    last line with the total time when closed (if leave, or if any line was written). The last line names the
    desc given at creation: a loop may rename the bar per stage on the way. interval_s None: silent."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", leave: bool = True, interval_s: float | None = DEFAULT_INTERVAL_S):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.first_desc, self.unit, self.leave = total, desc, desc, unit, leave
        self.interval_s = interval_s
        self.n = 0
        self.postfix = ""
        self.lines_written = 0
        self.closed = False
        self.start = self.last_line = time.monotonic()

    # --- what tqdm offers and pfpld uses ---
    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.interval_s is not None and not self.closed:
            now = time.monotonic()
            if now - self.last_line >= self.interval_s:
                self._line(now)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    set_description_str = set_description

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    @staticmethod
    def write(msg: str, file=None) -> None:
        """Print a line of the program's output (stdout by default, as tqdm.write does)."""
        print(msg, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.interval_s is not None and (self.leave or self.lines_written):
            self._line(time.monotonic(), final=True)

    # --- the line ---
    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [count + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if final:
            parts.append(f"done in {elapsed:.1f} s")
        if rate > 0:
            parts.append(f"{rate:.1f} {self.unit}/s")
        if not final and self.total and rate > 0 and self.n < self.total:
            parts.append(f"{(self.total - self.n) / rate:.0f} s left")
        if self.postfix and not final:
            parts.append(self.postfix)
        desc = self.first_desc if final else self.desc
        prefix = f"{desc}: " if desc else ""
        print(prefix + ", ".join(parts), file=sys.stderr, flush=True)
        self.lines_written += 1
        self.last_line = now
