"""This machine as the compiler's evaluator: candidates benchmarked here (``edgefleet compile --measure-locally``).

Implements ``compiler.search.Evaluator`` like ``deploy.fleet_evaluator.FleetEvaluator``, for when
this machine is itself a device of the profile (compiling on the Pi, or for generic-linux-x86_64 on
an x86-64 host). Each candidate package is unpacked and benchmarked the way the agent does it
(``agent.install.ModelStore`` unpacks with hash checks, ``agent.runtimes.load`` loads it afresh,
``agent.benchmark.measure`` times it on its first test vector): the host imports the agent's code,
never the other way round.

Candidates are measured in interleaved rounds, each round in a fresh random order, so that load
from other processes and CPU-frequency drift hit every candidate alike; each round's median is one
sample, and ``MeasuredLatency.from_rounds`` gives the median over rounds with a bootstrap 95% CI,
which the choice uses to treat candidates it cannot tell apart as ties.

A profile is refused (``CompileError``) when this machine cannot stand for its devices: its CPU
architecture differs (int8 and float kernels, and so the ranking, differ between x86-64 and Arm),
or its runtime cannot run here (TFLite Micro runs on the microcontroller itself). There is no way
to insist: a figure measured on other hardware would be presented as a device's measurement.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent import runtimes
from edgefleet.agent.benchmark import BenchmarkSettings, measure
from edgefleet.agent.errors import BenchmarkError, PackageError, RuntimeLoadError
from edgefleet.agent.install import InstalledPackage, ModelStore
from edgefleet.agent.package import file_sha256, load_test_vectors, read_manifest
from edgefleet.agent.power import ProfileEstimate
from edgefleet.compiler.errors import CompileError
from edgefleet.compiler.search import MeasuredLatency, measure_in_rounds
from edgefleet.compiler.targets import exporter_for
from edgefleet.hardware_profiles.schema import HardwareProfile

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}  # what Windows and macOS call them


def this_arch() -> str:
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def refusal(profile: HardwareProfile) -> str | None:
    """Why this machine cannot measure for ``profile``, or None when it can."""
    runtime = exporter_for(profile)[0].runtime.value
    if profile.cpu.arch != this_arch():
        return (f"{profile.name} is {profile.cpu.arch} and this machine is {this_arch()}: latency measured here says "
                f"nothing about its devices; measure on a device of the profile (--measure-on-fleet) or compile "
                f"{profile.name} in a run without --measure-locally")
    if runtime not in runtimes.available():
        return (f"{profile.name} runs {runtime}, which is not installed here (installed: "
                f"{', '.join(runtimes.available()) or 'none'}); install it (pip install 'edgefleet[onnx,tflite]') "
                "or compile without --measure-locally")
    return None


class LocalEvaluator:
    """Benchmarks every feasible candidate on this machine, ``rounds`` interleaved rounds of ``runs`` timed runs."""

    where = "on this machine"

    def __init__(self, *, rounds: int = 7, runs: int = 50, warmup: int = 5, max_seconds: float = 0.5,
                 threads: int = 0, limit: int | None = None, seed: int = 0) -> None:
        if rounds < 1 or runs < 1 or warmup < 0:
            raise ValueError(f"rounds and runs must be at least 1 and warmup at least 0, got {rounds}, {runs}, {warmup}")
        self.rounds, self.threads, self.limit, self.seed = rounds, threads, limit, seed
        self.settings = BenchmarkSettings(warmup=warmup, runs=runs, min_runs=min(10, runs), max_seconds=max_seconds,
                                          threads=threads, idle_seconds=0)

    def measure(self, profile: HardwareProfile, packages: Mapping[str, Path]) -> dict[str, MeasuredLatency]:
        problem = refusal(profile)
        if problem is not None:
            raise CompileError(f"--measure-locally: {problem}")
        power = ProfileEstimate(profile)  # energy is not what is asked for; measure() needs a source
        cores = os.cpu_count() or 1
        with tempfile.TemporaryDirectory(prefix="edgefleet-local-") as tmp:
            store = ModelStore(Path(tmp))
            staged: dict[str, InstalledPackage] = {}
            for scheme, path in packages.items():
                try:
                    staged[scheme] = store.stage(path, read_manifest(path), file_sha256(path))
                except PackageError as exc:
                    log.warning("%s: not measured (%s)", scheme, exc)
            out = measure_in_rounds(list(staged), self.rounds, lambda scheme: self._round(staged[scheme], power, cores),
                                    shuffle=random.Random(self.seed))
        for s, m in out.items():
            log.info("%s on this machine (%s): %s", s, profile.name, m.describe())
        return out

    def _round(self, installed: InstalledPackage, power: ProfileEstimate, cores: int) -> float | None:
        """One round's median (ms), loading the model afresh as the agent does: sessions kept open side by
        side would slow each other (onnxruntime's idle threads spin)."""
        manifest = installed.manifest
        try:
            model = runtimes.load(installed.model_path, manifest.target.runtime, threads=self.threads)
            return measure(model, _benchmark_inputs(installed), self.settings, power, cores).latency.p50
        except (RuntimeLoadError, BenchmarkError) as exc:
            log.warning("%s: not measured (%s)", manifest.package_id, exc)
            return None


def _benchmark_inputs(installed: InstalledPackage) -> dict[str, np.ndarray]:
    """The first test vector, what the agent benchmarks on (compile always packs test vectors)."""
    spec = installed.manifest.test_vectors
    if spec is None:
        raise BenchmarkError(f"{installed.manifest.package_id} has no test vectors to benchmark on")
    inputs, _ = load_test_vectors((installed.directory / spec.file).read_bytes())
    return inputs[0]
