"""Work on a pool of threads, results taken in order, a bounded number ahead.

Why: our VMDK writer and reader deflate and inflate grains on every core
(zlib releases the GIL) while the file is written or read strictly in
order, and memory must stay flat however large the disk; this is the one
place that keeps that pipeline.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["run_ordered"]

T = TypeVar("T")


def run_ordered(jobs: Iterable[Callable[[], T]], consume: Callable[[T], None], *,
                workers: int | None = None, name: str = "work") -> None:
    """Run each job of ``jobs`` on a pool of ``workers`` threads and pass
    its result to ``consume`` in the order of ``jobs``.

    ``jobs`` is iterated in the calling thread (it may read the input), at
    most ``2 * workers + 2`` jobs ahead of ``consume``.  Any exception --
    from a job, ``consume`` or ``jobs`` itself, KeyboardInterrupt included
    -- cancels the jobs not yet started and is raised once the running
    ones have ended.
    """
    workers = workers or max(1, os.cpu_count() or 1)
    ahead: collections.deque[Future[T]] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for job in jobs:
                ahead.append(pool.submit(job))
                while len(ahead) > 2 * workers + 2:
                    consume(ahead.popleft().result())
            while ahead:
                consume(ahead.popleft().result())
        except BaseException:
            for f in ahead:
                f.cancel()
            raise
