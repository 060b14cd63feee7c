"""Machine facts and the kernel choices derived from them (issue: right on
any CPU). A fake machine description must give the expected choices; the
calibration file is used only on the CPU model that wrote it; the choice of
kernel never changes results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastbn import _choices, _machine
from fastbn._choices import Choices
from fastbn._machine import Machine

XEON = Machine("Intel Xeon", l1d=48 << 10, l2=2 << 20, l3=260 << 20, simd_bytes=64, cpus=2)
EPYC = Machine("AMD EPYC", l1d=32 << 10, l2=512 << 10, l3=32 << 20, simd_bytes=32, cpus=2)


def test_sizes_from_sysfs_text():
    assert _machine._size("512K") == 512 << 10
    assert _machine._size("32M") == 32 << 20
    assert _machine._size("1024\n") == 1024


def _fake_sysfs(root, caches):
    for i, (level, kind, size) in enumerate(caches):
        d = root / "cpu0" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")


def test_cache_sizes_read_from_a_sysfs_tree(tmp_path):
    _fake_sysfs(tmp_path, [(1, "Data", "32K"), (1, "Instruction", "32K"),
                           (2, "Unified", "512K"), (3, "Unified", "32768K")])
    assert _machine._sysfs_caches(str(tmp_path)) == {1: 32 << 10, 2: 512 << 10, 3: 32 << 20}


def test_missing_sysfs_gives_no_sizes(tmp_path):
    assert _machine._sysfs_caches(str(tmp_path / "absent")) == {}


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000"}, 1.5),
    ({"cpu.max": "max 100000"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
])
def test_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _machine._cgroup_cpus(str(tmp_path)) == expected


@pytest.mark.parametrize("affinity, quota, expected", [
    (64, 1.0, 1), (64, 1.5, 2), (2, 8.0, 2), (16, None, 16), (4, 0.1, 1)])
def test_usable_cpus_is_affinity_bounded_by_quota(affinity, quota, expected):
    assert _machine.usable_cpus(affinity, quota) == expected


def test_detect_reads_this_machine():
    m = _machine.detect()
    assert m.l1d > 0 and m.l2 > 0 and m.simd_bytes in (16, 32, 64) and m.cpus >= 1
    assert m.cpus <= (os.cpu_count() or 1)


def test_defaults_follow_the_cache_sizes():
    xeon, epyc = _choices.derive(XEON), _choices.derive(EPYC)
    assert xeon.fused_max_channel_bytes == (2 << 20) // 4
    assert epyc.fused_max_channel_bytes == (512 << 10) // 4
    # 32x64x56x56 float32: 392 KiB channels, 12.25 KiB runs.
    args = (32 * 56 * 56 * 4, 56 * 56 * 4, 64)
    assert xeon.fused(*args) and not epyc.fused(*args)
    # Short runs (14x14 float32) stream poorly channel by channel: never fused.
    assert not xeon.fused(64 * 196 * 4, 196 * 4, 256)
    assert not Choices(1, 1 << 40, "any").fused(64 * 196 * 4, 196 * 4, 256)
    # Too few channels to share out.
    assert not xeon.fused(4096 * 4, 4096 * 4, 8)
    # Whatever the input's size (here 64 MiB, fresh outputs mmap'd anew).
    assert xeon.fused(1 << 18, 1 << 14, 256)


def test_calibration_is_kept_per_cpu_model(tmp_path):
    path = str(tmp_path / "tuning.json")
    tuned = Choices(parallel_min_size=1 << 17, fused_max_channel_bytes=0, source="test")
    _choices.save(tuned, EPYC, path)
    loaded = _choices.load(EPYC, path)
    assert (loaded.parallel_min_size, loaded.fused_max_channel_bytes) == (1 << 17, 0)
    assert "calibrated" in loaded.source
    assert _choices.load(XEON, path) == _choices.derive(XEON)  # another CPU: defaults


def test_calibration_of_an_older_release_still_loads(tmp_path):
    # Older tuning files also kept a bound on the input's size (since dropped).
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"parallel_min_size": 1 << 17, "fused_max_channel_bytes": 1 << 20,
                                "fused_max_total": 32 << 20, "source": "old", "cpu": EPYC.cpu}))
    loaded = _choices.load(EPYC, str(path))
    assert (loaded.parallel_min_size, loaded.fused_max_channel_bytes) == (1 << 17, 1 << 20)


@pytest.mark.parametrize("text", ["", "{", "[]", json.dumps({"cpu": "AMD EPYC"}),
                                  json.dumps({"cpu": "AMD EPYC", "parallel_min_size": "x"})])
def test_a_damaged_calibration_falls_back_to_defaults(tmp_path, text):
    path = tmp_path / "tuning.json"
    path.write_text(text)
    assert _choices.load(EPYC, str(path)) == _choices.derive(EPYC)


def test_every_kernel_choice_gives_the_same_bits():
    """Fused or two-pass, serial or parallel: the same bits (in a fresh
    process that loads every kernel from the session's warm cache; see the
    script)."""
    script = Path(__file__).resolve().parent / "scripts" / "choice_bits.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["compiled"], "python -m fastbn warmup missed signatures the choices use"
    assert result["NCHW"]["fused"] == [False, True, True, False]  # both kinds ran
    for key in ("NCHW", "NHWC", "group NCHW", "group NHWC"):
        assert all(equal for _, equal in result[key]["equal"]), result[key]


def test_thread_count_follows_the_usable_cpus(monkeypatch):
    import sys

    import numba

    from fastbn import _threads

    monkeypatch.setattr(_threads, "usable_cpus", lambda: 1)
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    saved_env = os.environ.pop("NUMBA_NUM_THREADS", None)
    before = numba.get_num_threads()
    try:
        # Before Numba is imported: the environment sets the pool's size.
        del sys.modules["numba"]
        try:
            assert _threads.limit_to_usable_cpus() == 1
            assert os.environ.pop("NUMBA_NUM_THREADS") == "1"
        finally:
            sys.modules["numba"] = numba
        # A user's NUMBA_NUM_THREADS is left alone.
        os.environ["NUMBA_NUM_THREADS"] = "3"
        assert _threads.limit_to_usable_cpus() is None
        del os.environ["NUMBA_NUM_THREADS"]
        # Numba already imported: the importing thread's count is lowered.
        assert _threads.limit_to_usable_cpus() == (1 if before > 1 else None)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
        os.environ.pop("NUMBA_NUM_THREADS", None)
        if saved_env is not None:
            os.environ["NUMBA_NUM_THREADS"] = saved_env


def test_sample_per_task_kernels_need_a_sample_per_thread_that_fits_in_l2():
    xeon = _choices.derive(XEON)
    sample = 56 * 56 * 64 * 4  # 32x64x56x56 float32 channels last: 784 KiB a sample
    assert xeon.fused_samples(sample, 32, 2)
    assert xeon.fused_samples(sample, 84, 2)                  # 64 MiB in all: size is no bar
    assert xeon.fused_samples(2 << 20, 8, 2)                  # a sample as large as the L2
    assert not xeon.fused_samples((2 << 20) + 1, 8, 2)
    assert not xeon.fused_samples(sample, 8, 16)              # threads left without a sample
    assert not _choices.derive(EPYC).fused_samples(sample, 32, 2)  # 512 KiB L2
