"""The timing harness behind benchmarks/compare.py and asv: interleaved
rounds and medians of per-round ratios (not speed claims: those come from
running the comparison)."""

from __future__ import annotations

import time

import numpy as np

from fastbn import benchmark


def test_rounds_time_every_function_each_round_in_rotating_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = benchmark.rounds(fns, 4)
    assert set(times) == {"a", "b", "c"} and all(t.shape == (4,) for t in times.values())
    assert all((t > 0).all() for t in times.values())
    # after 2 warm-up calls each, each round calls all three, starting one further along
    timed = calls[6:]
    number = len(timed) // 12
    firsts = [timed[r * 3 * number] for r in range(4)]
    assert firsts == ["a", "b", "c", "a"]


def test_ratio_is_the_median_of_per_round_ratios():
    times = {"x": np.array([1.0, 2.0, 10.0]), "y": np.array([1.0, 1.0, 1.0])}
    assert benchmark.ratio(times, "x", "y") == 2.0
    # a round that slows both sides alike leaves the ratio alone
    times = {"x": np.array([2.0, 20.0, 2.0]), "y": np.array([1.0, 10.0, 1.0])}
    assert benchmark.ratio(times, "x", "y") == 2.0


def test_short_calls_are_repeated_within_a_sample():
    n = [0]

    def fast():
        n[0] += 1

    def slow():
        time.sleep(0.002)

    benchmark.rounds({"fast": fast}, 2)
    assert n[0] > 2 + 2 * 10  # many calls per sample
    n[0] = 0
    benchmark.rounds({"fast": fast, "slow": slow}, 2)
    assert n[0] >= 2 + 2  # the same count for both; at least one per round


def test_busy_rows_compare_all_threads_with_one():
    rows = benchmark.run_busy(["8x16x8x8"], ["NCHW"], ["float32"], ["eval"], repeat=3,
                              progress=False)
    assert len(rows) == 1
    r = rows[0]
    assert r.all_ms > 0 and r.one_ms > 0 and r.all_over_one > 0
