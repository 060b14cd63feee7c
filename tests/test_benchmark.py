"""The timing harness behind benchmarks/compare.py and asv: interleaved
rounds and medians of per-round ratios (not speed claims: those come from
running the comparison)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest

from fastbn import benchmark, benchmark_report


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


def test_spread_is_p90_over_p10_and_ignores_one_slow_round():
    assert benchmark.spread(np.full(9, 2e-3)) == 1.0
    steady = np.array([1.0, 1.0, 1.1, 1.0, 1.05, 1.0, 1.0, 1.0, 1.02, 1.0, 50.0]) * 1e-3
    assert benchmark.spread(steady) < 1.2  # one stall: the median ratio is not at risk either
    noisy = np.array([1.0, 5.0, 1.0, 9.0, 1.0, 4.0, 1.2, 8.0, 1.0, 6.0]) * 1e-3
    assert benchmark.spread(noisy) > 5


def _row(shape="32x64x56x56", op="forward", spread=1.1, launch=0.002):
    return benchmark.Row(shape, "NCHW", "float32", op, 1.0, 1.5, 1.5,
                         copy_spread=spread, launch_ms=launch)


def test_no_busy_warning_for_steady_roofs():
    rows = [_row(), _row(op="eval", spread=1.5), _row(op="backward", spread=None, launch=None)]
    assert benchmark_report.busy_warning(rows) == ""


def test_busy_warning_names_the_cases_whose_roof_varied():
    rows = [_row(), _row("64x64", "eval", spread=3.2), _row("8x16x8x8", "backward", spread=12.0)]
    warning = benchmark_report.busy_warning(rows)
    assert warning.count("\n") == 0 and warning.startswith("warning: the machine looked busy")
    assert "2 of 3 cases" in warning and "unreliable" in warning
    # worst first; the steady case is not named
    assert warning.index("8x16x8x8 NCHW float32 backward (12x)") < warning.index(
        "64x64 NCHW float32 eval (3.2x)")
    assert "32x64x56x56" not in warning


def test_busy_warning_when_threads_wait_for_a_core():
    """A machine busy all along leaves the spread low but stalls every launch."""
    rows = [_row(launch=7.5), _row(op="eval", launch=7.4), _row(op="backward")]
    warning = benchmark_report.busy_warning(rows)
    assert "waited for a core" in warning and "2 of 3 cases" in warning
    assert "(7.5 ms)" in warning and "NUMBA_NUM_THREADS" in warning
    many = [_row(shape=str(i), spread=2.0 + i) for i in range(9)]
    assert "and 3 more" in benchmark_report.busy_warning(many)


def test_run_records_the_signs_of_a_busy_machine():
    rows = benchmark.run(["8x16x8x8"], ["NCHW"], ["float32"], ["eval"], repeat=3, peers=(),
                         progress=False)
    assert rows[0].copy_spread >= 1.0 and rows[0].launch_ms > 0
    assert {"copy_spread", "launch_ms"} <= set(rows[0].as_dict())


def test_bench_report_warns_and_says_where_it_wrote(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    rows = [_row(spread=4.0), _row(op="eval")]
    monkeypatch.setattr(benchmark_report, "run", lambda *args, **kwargs: rows)
    parser = argparse.ArgumentParser()
    benchmark_report.add_arguments(parser)
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(["--no-torch", "--plot", "chart.png", "--json", "rows.json",
                              "--markdown", "table.md"])
    assert benchmark_report.main_from_args(args) == 0
    out = capsys.readouterr().out
    assert "warning: the machine looked busy" in out
    for name in ("chart.png", "rows.json", "table.md"):
        assert str(tmp_path / name) in out
        assert (tmp_path / name).stat().st_size > 0
    assert "looked busy" in (tmp_path / "table.md").read_text()
