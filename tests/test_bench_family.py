"""The family's benchmark cases (fastbn.bench_family) and ``--norm`` of
``python -m fastbn bench``: the peers compute what fastbn computes, the
cases run, the reports name their norm (tiny shapes and rounds: nothing here
times anything meaningful)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from fastbn import bench_family, benchmark, benchmark_report
from fastbn.bench_family import NO_LAYOUT, NORMS, FamilyCase
from fastbn.cli import build_parser

#: A tiny shape per norm, NCHW order (GroupNorm: 32 groups of 2 channels).
TINY = {"layer": (3, 5, 16), "group": (2, 64, 3, 3), "instance": (2, 4, 3, 5)}
COMBOS = [(norm, layout) for norm in bench_family.FAMILY
          for layout in NORMS[norm].layouts]


def _arrays(out, layout: str) -> list[np.ndarray]:
    """A peer's result as arrays in fastbn's layout: y, or (dx, dweight,
    dbias)."""
    out = out if isinstance(out, tuple) else (out,)
    arrays = []
    for a in out:
        if hasattr(a, "detach"):  # a tensor: logical (N, C, ...) order
            a = a.detach().numpy()
            if layout == "NHWC" and a.ndim > 2:
                a = np.moveaxis(a, 1, -1)
        arrays.append(np.asarray(a))
    return arrays


@pytest.mark.parametrize("op", bench_family.FAMILY_OPS)
@pytest.mark.parametrize("norm, layout", COMBOS)
def test_peers_compute_what_fastbn_computes(norm, layout, op):
    case = FamilyCase(norm, TINY[norm], layout, "float64")
    fastbn_out = case.fastbn(op)()
    want = _arrays(fastbn_out[0] if op == "forward" else fastbn_out, layout)
    peers = {"numpy": case.numpy(op)}
    if (torch_fn := case.torch(op)) is not None:
        peers["torch"] = torch_fn
    for name, fn in peers.items():
        got = _arrays(fn(), layout)
        assert [a.shape for a in got] == [a.shape for a in want], name
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9, err_msg=name)


def test_torch_backward_is_the_backward_alone():
    """Repeated calls time the backward only: a LayerNorm or GroupNorm aten
    backward, or InstanceNorm's kept graph, each call the same result."""
    pytest.importorskip("torch")
    for norm, layout in COMBOS:
        fn = FamilyCase(norm, TINY[norm], layout, "float32").torch("backward")
        first, second = _arrays(fn(), layout), _arrays(fn(), layout)
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)


def test_layer_norm_weight_runs_along_the_last_axis():
    case = FamilyCase("layer", (4, 3, 7), NO_LAYOUT, "float32")
    assert case.weight.shape == (7,) and case.x.shape == (4, 3, 7)
    with pytest.raises(ValueError, match="layout"):
        FamilyCase("layer", (4, 7), "NCHW", "float32")
    with pytest.raises(ValueError, match="layout"):
        FamilyCase("group", (2, 64, 3, 3), NO_LAYOUT, "float32")
    with pytest.raises(ValueError, match="op must be one of"):
        case.fastbn("eval")


def test_floors_per_norm():
    row = lambda norm, op: benchmark.Row("s", "NCHW", "float32", op, 1.0, 2.0, 2.0, norm=norm)
    assert row("batch", "forward").floor_copies == 4 / 3  # BatchNorm's, unchanged
    assert row("batch", "backward").floor_copies == 2.0
    for norm in bench_family.FAMILY:
        assert row(norm, "forward").floor_copies == 1.0
        assert row(norm, "backward").floor_copies == 4 / 3
        assert row(norm, "backward").fastbn_over_floor == 1.5


@pytest.fixture
def tiny_norms(monkeypatch):
    """Each family norm with one tiny "large" shape named ``tiny``."""
    for norm, shape in TINY.items():
        monkeypatch.setitem(NORMS, norm, dataclasses.replace(
            NORMS[norm], shapes={"tiny": shape}, groups=(("large", ("tiny",)),)))


def test_family_cases_run(tiny_norms):
    for norm, layout in COMBOS:
        rows = benchmark.run(["tiny"], ["NCHW", "NHWC"], ["float32"], repeat=2,
                             progress=False, norm=norm)
        assert {(r.norm, r.layout, r.op) for r in rows} == {
            (norm, lay, op) for lay in NORMS[norm].layouts for op in ("forward", "backward")}
        for r in rows:
            assert r.fastbn_ms > 0 and r.copy_ms > 0 and r.numpy_ms > 0
            assert r.as_dict()["norm"] == norm
            assert (r.torch_ms is None) == (FamilyCase(norm, TINY[norm], r.layout,
                                                       "float32").torch(r.op) is None)


def _bench_args(*argv):
    return build_parser().parse_args(["bench", *argv])


def test_cli_norm_is_repeatable_or_all_and_defaults_to_batch():
    assert benchmark_report.norms(_bench_args().norm) == ["batch"]
    assert benchmark_report.norms(_bench_args("--norm", "group", "--norm", "layer").norm) == [
        "layer", "group"]
    assert benchmark_report.norms(_bench_args("--norm", "instance", "layer").norm) == [
        "layer", "instance"]
    assert benchmark_report.norms(_bench_args("--norm", "all").norm) == list(NORMS)
    plan = benchmark_report.plan(_bench_args("--norm", "all", "--shapes", "32x64x56x56",
                                             "--ops", "eval", "backward"))
    assert plan == [("batch", ["32x64x56x56"], ["eval", "backward"]),
                    ("group", ["32x64x56x56"], ["backward"]),
                    ("instance", ["32x64x56x56"], ["backward"])]
    quick = benchmark_report.plan(_bench_args("--norm", "layer", "--quick"))
    assert quick == [("layer", ["4096x768", "8192x1024", "64x197x768"], ["forward", "backward"])]


@pytest.mark.parametrize("argv, message", [
    (("--norm", "layer", "--ops", "eval"), "--ops eval: not of --norm layer"),
    (("--norm", "layer", "--shapes", "64x64"), "--shapes 64x64: not of --norm layer"),
    (("--norm", "batch", "layer", "--shapes", "4096x768", "--ops", "eval"), "nothing to run"),
])
def test_cli_says_what_a_norm_lacks(argv, message, capsys):
    assert benchmark_report.main_from_args(_bench_args(*argv)) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_an_unknown_norm():
    proc = subprocess.run([sys.executable, "-m", "fastbn", "bench", "--norm", "batchy"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "invalid choice: 'batchy'" in proc.stderr


def test_bench_reports_each_norm(tiny_norms, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--norm", "layer", "group", "--repeat", "2", "--no-torch", "--dtypes", "float64",
            "--json", "rows.json"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        argv += ["--plot", "chart.png"]
    assert benchmark_report.main_from_args(_bench_args(*argv)) == 0
    out = capsys.readouterr().out
    assert "| norm | shape | layout |" in out
    assert "| layer | tiny | - | float64 | backward |" in out
    assert "| group | tiny | NHWC | float64 | forward |" in out
    for norm in ("layer", "group"):
        for op in ("forward", "backward"):
            assert f"\n{norm} large float64 {op}: fastbn/floor geomean" in out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert sorted({(r["norm"], r["layout"]) for r in rows}) == [
        ("group", "NCHW"), ("group", "NHWC"), ("layer", "-")]


def _row(norm, shape, layout, op, torch_over_fastbn):
    return benchmark.Row(shape, layout, "float32", op, 1.0, 1.5, 1.5, 1.5 * torch_over_fastbn,
                         torch_over_fastbn, copy_spread=1.1, launch_ms=0.002, norm=norm)


def test_batch_norm_report_is_unchanged_beside_the_family():
    batch = [_row("batch", "32x64x56x56", "NCHW", "forward", 2.0),
             _row("batch", "64x64", "NHWC", "forward", 1.0)]
    table = benchmark_report.markdown(batch)
    assert table.startswith("| shape | layout |") and "| 32x64x56x56 | NCHW |" in table
    assert benchmark_report.summary(batch).splitlines() == [
        "large float32 forward: torch/fastbn geomean 2.00, min 2.00 (32x64x56x56 NCHW); "
        "fastbn/floor geomean 1.12, max 1.12",
        "small float32 forward: torch/fastbn geomean 1.00, min 1.00 (64x64 NHWC)"]
    layer = [_row("layer", "4096x768", NO_LAYOUT, "forward", 4.0),
             _row("layer", "8192x1024", NO_LAYOUT, "forward", 1.0),
             _row("layer", "65536x16", NO_LAYOUT, "backward", 0.5)]
    both = benchmark_report.summary(batch + layer).splitlines()
    assert both[0].startswith("batch large float32 forward: torch/fastbn geomean 2.00")
    assert both[2:] == [
        "layer large float32 forward: torch/fastbn geomean 2.00, min 1.00 (8192x1024); "
        "fastbn/floor geomean 1.50, max 1.50",
        "layer short rows float32 backward: torch/fastbn geomean 0.50, min 0.50 (65536x16)"]
    assert "| norm | shape |" in benchmark_report.markdown(batch + layer)
    assert "| layer | 65536x16 | - | float32 | backward |" in benchmark_report.markdown(layer)
