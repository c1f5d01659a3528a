"""What an operator sees while a conversion runs, and the line at its end.

The workflows report through one hook, ``progress(message)``; a
``Progress`` object is such a hook that can also meter a disk while it is
converted.  ``meter(progress, ...)`` is what the workflows call around one
disk's conversion: with a plain callable hook it does nothing.

Bytes are counted, not guessed from a tool's output: what the converting
thread has read (``/proc/self/task/TID/io``) plus what the ``qemu-img``
children whose command line names the disk's output have read
(``/proc/PID/io``).  So a disk is metered the same way whether qemu-img
or our own code moves its bytes, and disks converted in parallel threads
are told apart.  Where ``/proc`` does not say, the meter shows no bytes and
the end still shows the summary.

The status line is drawn only on a terminal (stderr) and never with
``quiet``; it is cleared before any other line is written to the stream.
What is said at the end (summary line, ``--json``) is in ``outcome``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Progress", "DiskStat", "meter", "human_size", "human_time", "clear_status"]

# Seconds between redraws (the environment variable is for tests).
INTERVAL = float(os.environ.get("GANETI_OVF_PROGRESS_INTERVAL", "0.5"))


def human_size(n: float) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} B"


def human_time(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _rchar(io_path: str) -> int | None:
    try:
        with open(io_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _children() -> list[int]:
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", encoding="ascii") as f:
                pids += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
    return pids


def _cmdline_names(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


@dataclass
class DiskStat:
    """One disk's conversion: what the summary and ``--json`` report."""

    index: int
    label: str
    total: int | None  # bytes expected to be read; None: not known
    watch: str | None = None  # a path the converting child process names
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    done: int = 0
    _tid: int = field(default_factory=threading.get_native_id)
    _base: int | None = None
    _kids: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._base = _rchar(f"/proc/self/task/{self._tid}/io")

    def sample(self) -> int:
        """Bytes read so far for this disk (never goes down)."""
        own = _rchar(f"/proc/self/task/{self._tid}/io")
        n = own - self._base if own is not None and self._base is not None else 0
        if self.watch:
            needle = os.fsencode(self.watch)
            for pid in _children():
                if pid in self._kids or _cmdline_names(pid, needle):
                    got = _rchar(f"/proc/{pid}/io")
                    if got is not None:
                        self._kids[pid] = max(got, self._kids.get(pid, 0))
            n += sum(self._kids.values())
        self.done = max(self.done, n)
        return self.done

    def status(self, now: float) -> str:
        done = self.sample()
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        text = f"disk {self.index} {self.label}:"
        if self.total and done < self.total:
            pct = 100.0 * done / self.total
            text += f" {pct:3.0f}% {human_size(done)}/{human_size(self.total)}"
            # No rate or time left from the first moments (qemu-img starting).
            if rate > 0 and (elapsed >= 1.0 or done >= self.total / 20):
                text += f" {human_size(rate)}/s ETA {human_time((self.total - done) / rate)}"
        elif self.total:
            text += f"  99% {human_size(done)}"
        else:
            text += f" {human_size(done)}" + (f" {human_size(rate)}/s" if elapsed >= 1.0 else "")
        return text

    def finish(self, ok: bool) -> None:
        self.sample()
        self.seconds = time.monotonic() - self.started
        if ok and self.total:
            # Counts sampled from a child that has exited lag its last reads.
            self.done = max(self.done, self.total)


class Progress:
    """The ``progress`` hook of the workflows, with disk meters.

    ``say`` receives the workflows' messages (logging at INFO for
    ovfconverter, Ganeti's ToStdout for gnt-backup).  ``stream`` gets the
    status line when it is a terminal and ``quiet`` is off.
    """

    def __init__(self, say: Callable[[str], None] | None = None, *,
                 stream: TextIO | None = None, quiet: bool = False,
                 interval: float | None = None) -> None:
        self.say = say
        self.stream = stream if stream is not None else sys.stderr
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.live = tty and not quiet
        self.interval = INTERVAL if interval is None else interval
        self.disks: list[DiskStat] = []
        self.started = time.monotonic()
        self._active: list[DiskStat] = []
        self._lock = threading.RLock()
        self._drawn = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the hook -------------------------------------------------------
    def __call__(self, message: str) -> None:
        if self.say is not None:
            with self._lock:
                self.clear()
                self.say(message)

    @contextlib.contextmanager
    def disk(self, index: int, label: str, total: int | None, *,
             watch: str | None = None) -> Iterator[DiskStat]:
        stat = DiskStat(index, label, total if total and total > 0 else None, watch)
        with self._lock:
            self._active.append(stat)
            self._start()
            if self.live:
                self._draw()
        ok = False
        try:
            yield stat
            ok = True
        finally:
            with self._lock:  # the drawing thread samples the same stat
                stat.finish(ok)
                self._active.remove(stat)
                self.disks.append(stat)
                if self.live:
                    self.clear()
                    if ok:
                        rate = stat.done / stat.seconds if stat.seconds > 0 else 0
                        self._write(f"disk {index} {label}: {human_size(stat.done)} in "
                                    f"{stat.seconds:.1f} s ({human_size(rate)}/s)\n")
                    self._draw()

    # -- the terminal ---------------------------------------------------
    def clear(self) -> None:
        """Take the status line off the terminal (before other output)."""
        with self._lock:
            if self._drawn:
                self._write("\r\x1b[K")
                self._drawn = False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            _LIVE.remove(self)
        self.clear()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def _draw(self) -> None:
        with self._lock:
            if not self._active:
                self.clear()
                return
            now = time.monotonic()
            line = " | ".join(s.status(now) for s in self._active)
            # One row only: a wrapped line could not be taken back with \r.
            self._write("\r\x1b[K" + line[:max(self._width() - 1, 20)])
            self._drawn = True

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            return 80  # unknown (a pty nobody sized says 0)

    def _start(self) -> None:
        if not self.live or self._thread is not None:
            return
        self._stop.clear()
        _LIVE.append(self)
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIVE: list[Progress] = []  # the Progress objects drawing on a terminal now


def clear_status() -> None:
    """Clear any status line before writing another line to the terminal
    (ovfconverter's log handler calls this)."""
    for p in list(_LIVE):
        p.clear()


def meter(progress: Callable[[str], None], index: int, label: str, total: int | None, *,
          watch: str | None = None) -> contextlib.AbstractContextManager[DiskStat | None]:
    """Meter one disk's conversion if ``progress`` can (a ``Progress``)."""
    if isinstance(progress, Progress):
        return progress.disk(index, label, total, watch=watch)
    return contextlib.nullcontext()
