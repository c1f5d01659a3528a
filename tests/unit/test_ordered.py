"""The one in-order thread pipeline (VMDK writer and reader)."""

from __future__ import annotations

import threading
import time

import pytest

from ganeti_ovf.ordered import run_ordered


def test_results_in_order_whatever_the_finishing_order():
    def job(i):
        def run():
            time.sleep(0.002 * (10 - i % 10))  # later jobs finish first
            return i
        return run

    got: list[int] = []
    run_ordered((job(i) for i in range(50)), got.append, workers=4)
    assert got == list(range(50))


def test_jobs_are_taken_a_bounded_number_ahead():
    taken, ahead = [], []
    consumed = [0]

    def jobs():
        for i in range(100):
            taken.append(i)
            ahead.append(len(taken) - consumed[0])
            yield lambda i=i: i

    def consume(_):
        consumed[0] += 1

    run_ordered(jobs(), consume, workers=2)
    assert consumed[0] == 100 and max(ahead) <= 2 * 2 + 2 + 1


def test_a_failure_stops_the_rest_and_is_raised():
    started = []
    lock = threading.Lock()

    def job(i):
        def run():
            with lock:
                started.append(i)
            time.sleep(0.001)
            return i
        return run

    def consume(i):
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ordered((job(i) for i in range(1000)), consume, workers=2)
    assert len(started) < 20  # not every job ran: the rest were never started
