"""Which kernel runs, decided from the machine's facts or a calibration.

Every choice picks among kernels that give bit-identical results (task
boundaries and summation order depend on the shape alone), so choices
change speed only: a calibration, another machine or another thread count
never changes a result.

* ``parallel_min_size``: inputs with fewer elements run the serial twin.
* ``fused_max_channel_bytes``: the channel-per-task training kernels (one
  read of x from memory; :func:`fastbn.kernels.forward_cf`) serve a
  channels-first input when the data of the channels in flight (one per
  thread, x and dy for backward) fits in the per-core L2 cache; else each
  channel's second pass would come from memory and the two-pass kernels,
  which stream contiguous memory, win.
  Runs of contiguous values (H*W of them) shorter than
  :data:`fastbn.kernels.RUN_BYTES` always take the two-pass kernels, which
  then walk memory in order (a channel-per-task pass jumps C*H*W values
  after every run; measured: 64x256x14x14 float32, 784-byte runs, fused
  1.98 ms against 1.14 ms two-pass on an AMD EPYC).
  Inputs of any size: above 32 MiB glibc maps every fresh output anew
  and the OS zeroes its pages on first touch, but both paths write each
  page once, so the fused kernels keep their lead (measured, 2-vCPU Xeon,
  fresh outputs of 32-64 MiB: 0.83-0.92 of the two-pass time channels
  first, 0.96-1.01 channels last).

``python -m fastbn tune`` measures the crossover points on this machine and
keeps them in ``tuning.json`` beside the compile cache; without it the
defaults below, derived from the cache sizes, apply.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from ._machine import Machine, detect
from .kernels import RUN_BYTES

@dataclass(frozen=True)
class Choices:
    parallel_min_size: int
    fused_max_channel_bytes: int
    source: str

    def fused(self, channel_bytes: int, run_bytes: int, channels: int) -> bool:
        """Whether the channel-per-task training kernels serve an input of
        ``channels`` channels, each holding ``channel_bytes`` (x, plus dy in
        backward) in runs of ``run_bytes``."""
        return (channels >= 16 and channel_bytes <= self.fused_max_channel_bytes
                and run_bytes >= RUN_BYTES)

    @property
    def fused_max_sample_bytes(self) -> int:
        """The largest channels-last sample the sample-per-task kernels take:
        four times the channel bound (= the L2 by default)."""
        return 4 * self.fused_max_channel_bytes

    def fused_samples(self, sample_bytes: int, samples: int, threads: int) -> bool:
        """Whether the sample-per-task kernels (:mod:`fastbn.kernels.samples`)
        serve channels-last data normalized per sample, ``sample_bytes``
        each: every thread has a sample, and a sample fits in the L2 (four
        times the channel bound: its statistics stream it in order, and its
        second pass gains even where part of it has left for the L3;
        measured against the two-pass kernels, 2-vCPU Xeon, 2 MiB L2,
        float32: 0.73 of their time at 800 KiB samples, 0.74-0.93 at 2 MiB)."""
        return samples >= threads and sample_bytes <= self.fused_max_sample_bytes


def derive(machine: Machine) -> Choices:
    """The default choices for ``machine`` (no calibration)."""
    return Choices(
        # A parallel launch wakes every thread (tens of microseconds on a
        # shared VM): measured crossovers of the eval kernel were 64K-128K
        # values on a 2-core AMD EPYC.
        parallel_min_size=1 << 16,
        # A quarter of the L2: the rest holds the output being written and
        # what other code keeps there (measured on an AMD EPYC, 512 KiB L2:
        # fused ahead up to 128 KiB channels, even at 256 KiB).
        fused_max_channel_bytes=machine.l2 // 4,
        source=f"defaults from the machine's facts (L2 {machine.l2 >> 10} KiB per core)",
    )


def tuning_path() -> str | None:
    """Where ``python -m fastbn tune`` keeps its result: beside the kernels'
    compile cache (None if there is no cache)."""
    from ._warmup import cache_dir

    path = cache_dir()
    return None if path is None else os.path.join(path, "tuning.json")


def load(machine: Machine, path: str | None) -> Choices:
    """The calibrated choices kept at ``path`` if they were made on this
    CPU model, else :func:`derive`'s."""
    base = derive(machine)
    if path is None:
        return base
    try:
        with open(path) as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict) or saved.get("cpu") != machine.cpu:
            return base
        fields = {k: int(saved[k]) for k in ("parallel_min_size", "fused_max_channel_bytes")}
    except (OSError, ValueError, KeyError, TypeError):
        return base
    return replace(base, **fields, source=f"calibrated by python -m fastbn tune ({path})")


def save(choices: Choices, machine: Machine, path: str) -> None:
    data = {**asdict(choices), "cpu": machine.cpu}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


MACHINE = detect()
#: The choices in force (``python -m fastbn info`` prints them).
CHOICES = derive(MACHINE)


def activate() -> Choices:
    """Load the calibrated choices, if any (called on first use, once the
    compile cache's place is known)."""
    global CHOICES
    from . import _jit

    CHOICES = load(MACHINE, tuning_path())
    _jit.PARALLEL_MIN_SIZE = CHOICES.parallel_min_size
    return CHOICES
