"""The on-disk compile cache (SPEC "Concurrency and processes"):

* a second process's first call compiles nothing;
* the cache works when the package directory is read-only (also with an
  unwritable HOME), and fastbn computes correctly there;
* several processes cold-starting at once on the same empty cache all
  succeed.

Every scenario runs tests/scripts/workload.py in fresh interpreters: (a) in
the compile cache the test session shares (warmed by conftest), the others
with a NUMBA_CACHE_DIR (or HOME/TMPDIR) of their own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fastbn
import reference as ref

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX processes/permissions")

SCRIPTS = Path(__file__).resolve().parent / "scripts"
WORKLOAD = SCRIPTS / "workload.py"
PKG_DIR = Path(fastbn.__file__).resolve().parent
NOBODY = 65534
COLD_TIMEOUT = 600


# ----------------------------------------------------------------------------
# helpers


def _base_env(**extra):
    """os.environ without anything that would choose a cache location."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH",
                        "NUMBA_DISABLE_JIT")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _workload_module():
    spec = importlib.util.spec_from_file_location("fastbn_test_workload", WORKLOAD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd, env, cwd, timeout, **kw):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)
    assert proc.returncode == 0, (
        f"{cmd} exited with {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
        f"stderr:\n{proc.stderr[-6000:]}")
    return proc


def _run_workload(outdir: Path, kind: str, env, *, script=WORKLOAD, prefix=(),
                  timeout=COLD_TIMEOUT, **kw):
    outdir.mkdir(parents=True, exist_ok=True)
    _run([*prefix, sys.executable, str(script), str(outdir), kind], env,
         cwd=str(outdir), timeout=timeout, **kw)
    with open(outdir / "result.json") as f:
        return json.load(f)


def _misses(info):
    return {d["name"]: d["misses"] for d in info["dispatchers"] if d["misses"]}


def _hits(info):
    return sum(d["hits"] for d in info["dispatchers"])


def _assert_compiled_nothing(info):
    assert info["dispatchers"], "fastbn.kernels.dispatchers() is empty"
    assert not _misses(info), f"compiled in a process with a warm cache: {_misses(info)}"
    assert _hits(info) > 0, "no kernel was loaded from the cache"


def _check_results(info, kind):
    """The workload's results against the float64 reference."""
    wl = _workload_module()
    cases = wl.cases(kind)
    assert set(info["results"]) == {name for name, _, _ in cases}
    eps = 1e-5
    for name, x, layout in cases:
        r = info["results"][name]
        f32 = x.dtype == np.float32
        rt = 1e-5 if f32 else 1e-9
        C = ref.num_channels(x.shape, layout)
        m = x.size // C
        w, b = wl.params_for(C, x.dtype)
        dy = wl.dy_for(x)
        mean, var = ref.stats(x, layout)
        y, _, _ = ref.forward_train(x, w, b, eps, layout)
        dx, dw, db = ref.backward_train(dy, x, w, eps, layout)
        rm, rv = ref.update_running(np.zeros(C), np.ones(C), mean, var, m, 0.1)
        ye = ref.forward_eval(x, w, b, rm, rv, eps, layout)
        dxe, dwe, dbe = ref.backward_eval(dy, x, w, rm, rv, eps, layout)
        yl, _, _ = ref.forward_train(x, None, None, eps, layout)
        dxl, dwl, dbl = ref.backward_train(dy, x, None, eps, layout)
        expected = dict(mean=mean, var=var, rm=rm, rv=rv, db=db, dbe=dbe, gb=dbl,
                        y=wl.sample(y), ye=wl.sample(ye), yl=wl.sample(yl),
                        dx=wl.sample(dx), dxe=wl.sample(dxe), dxl=wl.sample(dxl),
                        dw=dw, dwe=dwe, gw=dwl)
        for key, want in expected.items():
            want = np.asarray(want, np.float64)
            got = np.asarray(r[key], np.float64)
            if key in ("dw", "dwe", "gw", "db", "dbe", "gb"):
                atol = rt * np.abs(dy).sum() / C * 4
            else:
                atol = rt * max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=rt * 10, atol=atol,
                                       err_msg=f"{name} {key}")


def _assert_same_results(a, b):
    """Two processes' results agree to the last few bits. (Not bit-identity:
    freshly compiled kernels and the same kernels loaded from the cache have
    been seen to round differently.)"""
    assert set(a) == set(b)
    for name in a:
        for key in a[name]:
            x, y = np.asarray(a[name][key]), np.asarray(b[name][key])
            scale = max(1.0, float(np.abs(y).max())) if y.size else 1.0
            np.testing.assert_allclose(x, y, rtol=2e-6, atol=2e-6 * scale,
                                       err_msg=f"{name} {key}")


def _pkg_root_env(**extra):
    return _base_env(PYTHONPATH=PKG_DIR.parent, **extra)


# ----------------------------------------------------------------------------
# (a) a second process compiles nothing


def test_second_process_compiles_nothing(tmp_path):
    """The full workload (every layout, dtype, kernel family and kind of
    strides) twice, in the cache this test session shares (warmed by
    conftest: the first process may still compile what warmup does not
    cover); the second process compiles nothing."""
    shared = os.environ.get("NUMBA_CACHE_DIR")
    env = _pkg_root_env(**({"NUMBA_CACHE_DIR": shared} if shared else {}))
    first = _run_workload(tmp_path / "first", "full", env)
    assert Path(first["fastbn_file"]).resolve().parent == PKG_DIR
    assert _hits(first), "the session's warm cache was not found"

    second = _run_workload(tmp_path / "second", "full", env, timeout=300)
    _assert_compiled_nothing(second)
    _assert_same_results(second["results"], first["results"])
    _check_results(second, "full")


# ----------------------------------------------------------------------------
# (b) read-only package directory


def _try(cmd, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    except (OSError, subprocess.SubprocessError):
        return None


def _pick_readonly_strategy():
    """How to run a process for which a chmod a-w directory is read-only.

    Non-root: as is. Root: as user nobody if nobody can run this Python, else
    as root without CAP_DAC_OVERRIDE (setpriv), which makes permission bits
    bind root too."""
    if os.geteuid() != 0:
        return "self"
    probe = _try([sys.executable, "-c", "import numpy, numba"], cwd="/",
                 user=NOBODY, group=NOBODY, extra_groups=[], env=_base_env())
    if probe is not None and probe.returncode == 0:
        return "nobody"
    setpriv = shutil.which("setpriv")
    if setpriv:
        d = tempfile.mkdtemp(prefix="fastbn-probe-")
        try:
            os.chmod(d, 0o555)
            probe = _try([setpriv, "--bounding-set", "-dac_override", sys.executable,
                          "-c", f"open({os.path.join(d, 'x')!r}, 'w')"])
            denied = probe is not None and "PermissionError" in probe.stderr
        finally:
            os.chmod(d, 0o755)
            shutil.rmtree(d, ignore_errors=True)
        if denied:
            return "nodac"
    return None


class ReadOnlyInstall:
    """A copy of the package in a read-only directory, plus writable/unwritable
    HOMEs and a private TMPDIR, all reachable by the user that runs it."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.base = Path(tempfile.mkdtemp(prefix="fastbn-ro-"))
        os.chmod(self.base, 0o755)
        self.site = self.base / "site"
        shutil.copytree(PKG_DIR, self.site / "fastbn",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
        self.script_dir = self.base / "scripts"
        self.script_dir.mkdir()
        shutil.copy2(WORKLOAD, self.script_dir / "workload.py")
        for d in (self.site, self.script_dir):
            self._read_only(d)
        self.home_ro = self.base / "home_ro"
        self.home_ro.mkdir()
        os.chmod(self.home_ro, 0o555)
        self.home_rw = self._writable("home_rw")
        self.listing = self.snapshot()

    def _read_only(self, top: Path):
        for p in sorted(top.rglob("*"), reverse=True):
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        os.chmod(top, 0o555)

    def _writable(self, name) -> Path:
        p = self.base / name
        p.mkdir()
        os.chmod(p, 0o755)
        if self.strategy == "nobody":
            os.chown(p, NOBODY, NOBODY)
        return p

    def snapshot(self):
        return sorted((str(p.relative_to(self.site)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in self.site.rglob("*"))

    def run(self, name, home: Path, tmpdir: Path):
        out = self._writable(name)
        env = _base_env(PYTHONPATH=self.site, HOME=home, TMPDIR=tmpdir)
        kw, prefix = {}, ()
        if self.strategy == "nobody":
            kw = dict(user=NOBODY, group=NOBODY, extra_groups=[])
        elif self.strategy == "nodac":
            prefix = (shutil.which("setpriv"), "--bounding-set", "-dac_override")
        info = _run_workload(out, "tiny", env, script=self.script_dir / "workload.py",
                             prefix=prefix, **kw)
        assert Path(info["fastbn_file"]).resolve().parent == (self.site / "fastbn").resolve()
        return info

    def cleanup(self):
        for p in [self.base, *self.base.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                try:
                    os.chmod(p, 0o755)
                except OSError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def readonly_install():
    strategy = _pick_readonly_strategy()
    if strategy is None:
        pytest.skip("running as root and cannot drop privileges: a read-only "
                    "directory cannot be simulated")
    inst = ReadOnlyInstall(strategy)
    try:
        yield inst
    finally:
        inst.cleanup()


def test_readonly_install_is_really_readonly(readonly_install):
    """Guard for the scenario itself: the runner cannot write the package."""
    inst = readonly_install
    kw, prefix = {}, []
    if inst.strategy == "nobody":
        kw = dict(user=NOBODY, group=NOBODY, extra_groups=[])
    elif inst.strategy == "nodac":
        prefix = [shutil.which("setpriv"), "--bounding-set", "-dac_override"]
    target = inst.site / "fastbn" / "kernels" / "__pycache__"
    code = f"import os; os.makedirs({str(target)!r})"
    proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, cwd="/", env=_base_env(), **kw)
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, proc.stderr
    assert not target.exists()


@pytest.mark.parametrize("home", ["unwritable_home", "writable_home"])
def test_readonly_package_dir(readonly_install, home):
    inst = readonly_install
    home_dir = inst.home_ro if home == "unwritable_home" else inst.home_rw
    tmpdir = inst._writable(f"tmp_{home}")
    first = inst.run(f"out_{home}_1", home_dir, tmpdir)
    _check_results(first, "tiny")
    second = inst.run(f"out_{home}_2", home_dir, tmpdir)
    _check_results(second, "tiny")
    _assert_same_results(second["results"], first["results"])
    # the cache works there too: the second process compiles nothing
    _assert_compiled_nothing(second)
    # and nothing was written into the package directory
    assert inst.snapshot() == inst.listing


# ----------------------------------------------------------------------------
# (c) several processes cold-starting at once


def test_concurrent_cold_start(tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = _pkg_root_env(NUMBA_CACHE_DIR=cache)
    procs = []
    for i in range(2):
        out = tmp_path / f"p{i}"
        out.mkdir()
        procs.append((out, subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(out), "small"], env=env, cwd=str(out),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    infos = []
    try:
        for out, p in procs:
            stdout, stderr = p.communicate(timeout=COLD_TIMEOUT)
            assert p.returncode == 0, (p.returncode, stdout[-2000:], stderr[-6000:])
            with open(out / "result.json") as f:
                infos.append(json.load(f))
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for info in infos:
        _check_results(info, "small")
        _assert_same_results(info["results"], infos[0]["results"])
    # the cache the three wrote together is sound: a fourth process loads it
    after = _run_workload(tmp_path / "after", "small", env, timeout=300)
    _assert_compiled_nothing(after)
    _assert_same_results(after["results"], infos[0]["results"])
