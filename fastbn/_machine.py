"""Facts about the machine that kernel choices depend on.

Read once at import, from Linux sysfs and procfs where they exist, else from
``os.sysconf`` (glibc), else from conservative defaults, so that a fact we
cannot read leads to a safe choice rather than a crash. Nothing here changes
results: the facts only pick among kernels that give bit-identical output.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass

#: Used when a cache size cannot be read: small enough to be true of any
#: server or laptop CPU made in the last decade.
DEFAULT_L1D = 32 << 10
DEFAULT_L2 = 256 << 10
DEFAULT_L3 = 4 << 20

_SYS_CPU = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class Machine:
    """What the kernel choices are derived from.

    Attributes
    ----------
    cpu : str
        Model name, for reports.
    l1d, l2 : int
        Bytes of data cache private to one core at levels 1 and 2.
    l3 : int
        Bytes of last-level cache shared by the cores (0 if none).
    simd_bytes : int
        Widest float vector register: 16 (SSE, NEON), 32 (AVX2), 64 (AVX-512).
    cpus : int
        Cores this process may use: its CPU affinity, bounded by a cgroup
        CPU quota (a container limited to 2 CPUs on a 64-core host: 2).
    """

    cpu: str
    l1d: int
    l2: int
    l3: int
    simd_bytes: int
    cpus: int


def _size(text: str) -> int:
    """``"512K"`` / ``"32M"`` / ``"1024"`` (sysfs cache sizes) in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _sysfs_caches(root: str = _SYS_CPU) -> dict[int, int]:
    """Data or unified cache size by level, as seen by cpu0 (sysfs)."""
    sizes: dict[int, int] = {}
    base = os.path.join(root, "cpu0", "cache")
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("index"))
    except OSError:
        return sizes
    for name in names:
        level = _read(os.path.join(base, name, "level"))
        kind = _read(os.path.join(base, name, "type"))
        size = _read(os.path.join(base, name, "size"))
        if level and size and kind in ("Data", "Unified"):
            try:
                sizes[int(level)] = _size(size)
            except ValueError:
                continue
    return sizes


def _sysconf_caches() -> dict[int, int]:
    sizes = {}
    for level, key in ((1, "SC_LEVEL1_DCACHE_SIZE"), (2, "SC_LEVEL2_CACHE_SIZE"),
                       (3, "SC_LEVEL3_CACHE_SIZE")):
        try:
            value = os.sysconf(key)
        except (ValueError, OSError, AttributeError):
            continue
        if value and value > 0:
            sizes[level] = int(value)
    return sizes


def _simd_bytes() -> int:
    """Vector width from LLVM's view of the host (what Numba compiles for)."""
    try:
        from llvmlite import binding

        features = binding.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - any failure means: assume the narrowest
        return 16
    if features.get("avx512f"):
        return 64
    if features.get("avx2") or features.get("avx"):
        return 32
    return 16


def _cgroup_cpus(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 CFS), None if
    unlimited or unknown."""
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max":
            try:
                return int(quota) / int(period or 100000)
            except ValueError:
                return None
        return None
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    try:
        if quota and period and int(quota) > 0:
            return int(quota) / int(period)
    except ValueError:
        pass
    return None


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """Cores this process can keep busy: its affinity mask, bounded by the
    cgroup quota rounded up (a quota of 1.5 CPUs lets 2 threads share it)."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    if quota is None:
        quota = _cgroup_cpus()
    n = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, n)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what Python knows)."""
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("model name", "Model Name", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def detect() -> Machine:
    """The facts of the machine this process runs on."""
    sizes = _sysconf_caches()
    sizes.update(_sysfs_caches())
    return Machine(
        cpu=cpu_model(),
        l1d=sizes.get(1) or DEFAULT_L1D,
        l2=sizes.get(2) or DEFAULT_L2,
        l3=sizes.get(3, DEFAULT_L3 if 2 not in sizes else 0),
        simd_bytes=_simd_bytes(),
        cpus=usable_cpus(),
    )
