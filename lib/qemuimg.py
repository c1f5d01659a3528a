"""Running qemu-img: the one runner, its limits, and how failures read.

Every run goes through :func:`run`: a fresh Python trampoline sets the
resource limits and PR_SET_PDEATHSIG, then becomes qemu-img with a clean
environment; stdout is bounded or streamed line by line; a failure is one
line naming the image.  What to run and with which limits is decided by
:mod:`ganeti_ovf.disks`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, NamedTuple

from .errors import DiskImageError

__all__ = ["Limits", "MAX_OUTPUT", "run"]

log = logging.getLogger(__name__)


class Limits(NamedTuple):
    """Resource limits for one qemu-img run (0 = none)."""

    address_space: int = 0  # bytes, RLIMIT_AS
    cpu_seconds: int = 0  # RLIMIT_CPU; SIGXCPU kills qemu-img past it
    wall_seconds: float | None = None  # killed past it


#: Bytes of stdout we keep from any qemu-img run but `map` (which is
#: parsed line by line): real `info`/`check` JSON is a few KiB.
MAX_OUTPUT = 16 << 20
_STDERR_KEPT = 64 << 10


# Runs in a fresh interpreter, sets the limits, then becomes qemu-img: the
# thread-safe equivalent of preexec_fn (cf. oslo_concurrency.prlimit).  The
# CPU hard limit sits above the soft one so the kill is a telling SIGXCPU,
# not the SIGKILL that equal limits give.  PR_SET_PDEATHSIG (1) makes the
# kernel SIGKILL qemu-img when the thread that started it dies, so a
# SIGKILLed ovfconverter leaves no conversion running (it survives execve);
# the getppid test closes the race with a parent that died before prctl.
_TRAMPOLINE = (
    "import ctypes, os, resource, signal, sys\n"
    "a, c, p = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != p: os._exit(137)\n"
    "if a: resource.setrlimit(resource.RLIMIT_AS, (a, a))\n"
    "if c: resource.setrlimit(resource.RLIMIT_CPU, (c, c + 5))\n"
    "os.execv(sys.argv[4], sys.argv[4:])\n"
)

# Nothing from the caller's environment: no QEMU_*/LD_* surprises, C locale
# so messages are the English ones we match and quote.
# MALLOC_ARENA_MAX: glibc reserves 64 MiB of address space per thread
# arena, and qemu-img starts up to 64 I/O threads, so under RLIMIT_AS a
# plain `check` of a qcow2 with small clusters aborted half the time
# ("qemu_thread_create: Resource temporarily unavailable").
_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MALLOC_ARENA_MAX": "2"}


_JSON_NAME = re.compile(r"json:\{[^']*\}")


def _reason(stderr: str, argv: list[str], name: str, prefer: str = "") -> str:
    """The stderr line the operator needs, with json: specs shown as ``name``.

    The last non-empty line, like Ganeti's fail_reason; or the first line
    starting with ``prefer`` (qemu-img check ends with a vaguer summary).
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if prefer:
        lines = [ln for ln in lines if ln.startswith(prefer)][:1] or lines
    if not lines:
        return ""
    line = lines[-1]
    for arg in argv:
        if arg.startswith("json:"):
            line = line.replace(arg, name)
    line = _JSON_NAME.sub(lambda _m: name, line)  # qemu's own spelling of inner nodes
    return line.removeprefix("qemu-img: ").strip()


_PINNED_FD = re.compile(r"/proc/self/fd/(\d+)")


class _Stderr(threading.Thread):
    """Drains qemu-img's stderr as it comes, keeping its first and last
    :data:`_STDERR_KEPT` bytes: the lines we quote, in bounded memory and
    no file, however much a crafted image makes ``check`` complain."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True, name="qemu-img-stderr")
        self._pipe = pipe
        self._head = b""
        self._tail = b""
        self._cut = False

    def run(self) -> None:
        while block := self._pipe.read1(_STDERR_KEPT):
            if len(self._head) < _STDERR_KEPT:
                self._head += block
            else:
                self._cut = self._cut or len(self._tail) + len(block) > _STDERR_KEPT
                self._tail = (self._tail + block)[-_STDERR_KEPT:]

    def text(self) -> str:
        self.join()
        gap = b"\n...\n" if self._cut else b""
        return (self._head + gap + self._tail).decode("utf-8", "replace")


def run(
    qemu: str,
    argv: list[str],
    *,
    name: str,
    limits: Limits,
    ok: tuple[int, ...] = (0,),
    prefer: str = "",
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run ``qemu argv`` (the qemu-img binary) under ``limits`` and return its stdout.

    Raises DiskImageError naming ``name`` and saying why: exit code or
    signal plus qemu-img's last stderr line, timeout, too much output, or
    qemu-img missing.  Exit codes in ``ok`` count as success; ``prefer``
    picks the first stderr line with that prefix over the last line.  With
    ``on_line`` stdout is handed over line by line as it comes (and ''
    returned), so its size does not matter; otherwise it is bounded by
    :data:`MAX_OUTPUT`.
    """
    sub = argv[0] if argv else "?"
    cmd = [sys.executable or "/usr/bin/python3", "-I", "-S", "-c", _TRAMPOLINE,
           str(limits.address_space), str(limits.cpu_seconds), str(os.getpid()), qemu, *argv]
    log.debug("running %s", " ".join([qemu, *argv]))
    # Files a package holds open are named /proc/self/fd/N; qemu-img gets
    # the same descriptors, so it reads the very file that was checked.
    fds = tuple(sorted({int(n) for a in argv for n in _PINNED_FD.findall(a)}))
    try:
        proc = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV,
                                cwd="/")
    except OSError as e:
        raise DiskImageError(f"cannot run qemu-img: {e.strerror or e}", name) from e
    err = _Stderr(proc.stderr)
    err.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(limits.wall_seconds, expire) if limits.wall_seconds else None
    try:
        if timer is not None:
            timer.start()
        stdout = _read_stdout(proc, sub, name, on_line)
        proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:  # our error or Ctrl-C: it must not outlive the call
            proc.kill()
            proc.wait()
        stderr = err.text()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if expired.is_set():
        raise DiskImageError(f"qemu-img {sub} did not finish within {limits.wall_seconds:g} s",
                             name)
    if proc.returncode in ok:
        return stdout
    log.debug("qemu-img %s exited %d, stderr:\n%s", sub, proc.returncode, stderr)
    raise DiskImageError(_failure(proc.returncode, stderr, argv, name, prefer, limits), name)


def _read_stdout(proc: subprocess.Popen[bytes], sub: str, name: str,
                 on_line: Callable[[str], None] | None) -> str:
    """All of a bounded stdout, or each line to ``on_line``."""
    assert proc.stdout is not None
    if on_line is None:
        out = proc.stdout.read(MAX_OUTPUT + 1)
        if len(out) > MAX_OUTPUT:
            raise DiskImageError(f"qemu-img {sub} printed more than {MAX_OUTPUT} bytes", name)
        return out.decode("utf-8", "replace")
    while line := proc.stdout.readline(_STDERR_KEPT):
        if not line.endswith(b"\n") and len(line) == _STDERR_KEPT:
            raise DiskImageError(f"qemu-img {sub} printed a line of more than "
                                 f"{_STDERR_KEPT} bytes", name)
        on_line(line.decode("utf-8", "replace"))
    return ""


def _failure(code: int, stderr: str, argv: list[str], name: str, prefer: str,
             limits: Limits) -> str:
    sub = argv[0] if argv else "?"
    last = _reason(stderr, argv, name, prefer)
    if code < 0:
        signum = -code
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = "unknown"
        problem = f"qemu-img {sub} was killed by signal {signum} ({signame})"
        if signum == signal.SIGXCPU:
            problem += f": CPU time limit of {limits.cpu_seconds} s exceeded"
        elif last:
            problem += f": {last}"
    else:
        problem = f"qemu-img {sub} exited with code {code}"
        if last:
            problem += f": {last}"
    return problem
