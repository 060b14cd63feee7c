"""``python -m fastbn``: info, bench, and argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fastbn


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastbn", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "info" in proc.stdout and "bench" in proc.stdout


def test_info_reports_versions_threads_and_cache():
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert fastbn.__version__ in out
    for key in ("numpy", "numba", "python", "threading layer", "threads", "cpu", "caches",
                "kernel choices", "parallel from", "channel per task", "sample per task",
                "compile cache",
                "cache state"):
        assert key in out, out


def test_missing_command_is_a_usage_error():
    proc = _run()
    assert proc.returncode == 2
    assert "required" in proc.stderr


def test_bad_bench_arguments_are_usage_errors():
    proc = _run("bench", "--shapes", "1x2x3")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "1x2x3" in proc.stderr
    proc = _run("bench", "--repeat", "0")
    assert proc.returncode == 2
    assert "expected an integer >= 1, got 0" in proc.stderr


def test_bench_writes_table_and_json(tmp_path):
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    proc = _run("bench", "--shapes", "8x16x8x8", "--ops", "eval", "backward", "--repeat", "2",
                "--no-torch", "--json", str(out_json), "--markdown", str(out_md))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert {(r["layout"], r["op"]) for r in rows} == {
        (layout, op) for layout in ("NCHW", "NHWC") for op in ("eval", "backward")}
    for r in rows:
        assert r["fastbn_ms"] > 0 and r["copy_ms"] > 0 and r["numpy_ms"] > 0
        assert r["torch_ms"] is None
    table = out_md.read_text()
    assert "| shape | layout |" in table and "8x16x8x8" in table
    assert "| 8x16x8x8 | NHWC | float32 | backward |" in proc.stdout


def test_tune_keeps_its_calibration_beside_the_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "fastbn", "tune", "--repeat", "1"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fused / two-pass" in proc.stdout
    saved = list(tmp_path.rglob("tuning.json"))
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    assert data["parallel_min_size"] >= 1 and data["fused_max_channel_bytes"] >= 0
    info = subprocess.run([sys.executable, "-m", "fastbn", "info"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert "calibrated by python -m fastbn tune" in info.stdout, info.stdout
