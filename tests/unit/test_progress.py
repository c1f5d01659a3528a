"""The disk meter counts real bytes: what the converting thread read and
what the child process converting the disk read (/proc), disks in
parallel threads apart.  The terminal itself is tested on a pty in
tests/cli/test_operator.py."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ganeti_ovf import progress

MIB = 1 << 20
needs_proc = pytest.mark.skipif(not os.path.exists(f"/proc/self/task/{threading.get_native_id()}"
                                                   "/io"), reason="no per-thread /proc io")


def _read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(MIB):
            pass


@needs_proc
def test_parallel_disks_are_counted_apart(tmp_path):
    sizes = {0: 12 * MIB, 1: 3 * MIB}
    for i, n in sizes.items():
        (tmp_path / f"d{i}").write_bytes(os.urandom(n))
    shown = progress.Progress(None, stream=io.StringIO())
    barrier = threading.Barrier(2)

    def convert(i: int) -> None:
        with shown.disk(i, f"d{i}", sizes[i]):
            barrier.wait()
            _read_all(tmp_path / f"d{i}")

    threads = [threading.Thread(target=convert, args=(i,)) for i in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {s.index: s.done for s in shown.disks}
    for i, n in sizes.items():
        assert n <= got[i] < n + MIB, (i, got)


@needs_proc
def test_child_reads_are_counted_by_the_path_it_names(tmp_path):
    """A child naming the disk's path on its command line (as qemu-img names
    its output) is counted; other children are not.  Sampled from another
    thread, as the status line does."""
    src = tmp_path / "disk.img"
    src.write_bytes(os.urandom(5 * MIB))
    shown = progress.Progress(None, stream=io.StringIO())
    with shown.disk(0, "disk.img", None, watch=str(src)) as stat:
        # cat reads the file, then waits on its stdin until we close it.
        child = subprocess.Popen(["cat", str(src), "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
        other = subprocess.Popen(["cat", "/etc/hostname", "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
        seen: list[int] = []
        sampler = threading.Thread(target=lambda: seen.append(stat.sample()))
        deadline = time.monotonic() + 30
        while not seen or seen[-1] < 5 * MIB and time.monotonic() < deadline:
            sampler = threading.Thread(target=lambda: seen.append(stat.sample()))
            sampler.start()
            sampler.join()
        for p in (child, other):
            p.stdin.close()
            p.wait()
    assert 5 * MIB <= seen[-1] < 5 * MIB + 64 * 1024
    assert 5 * MIB <= stat.done < 5 * MIB + 64 * 1024


def test_not_a_terminal_draws_nothing_and_ends_at_the_total():
    out = io.StringIO()
    shown = progress.Progress(None, stream=out)
    assert shown.live is False
    with shown.disk(0, "x", 4 * MIB):
        pass
    assert out.getvalue() == ""
    assert shown.disks[0].done == 4 * MIB  # a disk that finished counts as whole


def test_messages_go_to_say_and_plain_hooks_are_not_metered():
    said: list[str] = []
    shown = progress.Progress(said.append, stream=io.StringIO())
    shown("disk 0: a -> b")
    assert said == ["disk 0: a -> b"]
    with progress.meter(said.append, 0, "x", 10) as stat:
        assert stat is None  # a plain callable gets no meter
    with progress.meter(shown, 0, "x", 10) as stat:
        assert isinstance(stat, progress.DiskStat)


def test_status_text():
    stat = progress.DiskStat(2, "web.vmdk", 100 * MIB)
    stat.started -= 10
    stat.sample = lambda: 40 * MIB  # type: ignore[method-assign]
    text = stat.status(stat.started + 10)
    assert text == "disk 2 web.vmdk:  40% 40.0 MiB/100.0 MiB 4.0 MiB/s ETA 0:15"
    assert progress.human_time(3725) == "1:02:05"
    assert progress.human_size(1536) == "1.5 KiB"
