"""The search over compression schemes: which candidates to build for a runtime, built and measured for real.

A candidate is a ``Point``: zero or more *structural* ONNX passes (pruning, channel pruning,
low-rank, clustering, and any float-to-float pass registered in ``passes.PASSES`` later), then one
*format* stage for the runtime that will run it:

    onnxruntime  fp32, int8-static (calibration method, per-channel, which op types stay float), int8-dynamic
    litert       fp32, litert-fp16, litert-int8-dynamic, litert-int8-static (``tflite.candidates``)
    tflm         tflm-int8, full-integer (``tflm.candidates``)

Which runtimes, and so which format stages, come from the profiles being compiled for; formats a
profile does not run are judged out by the planner. Each point is built and measured on the
held-out data (fidelity against the original model, size, RAM, the float graph for the cost model).

How the space is explored:

- the format stages alone (no structural pass) always run first: they are the reference and
  what ``compile`` did before the search existed;
- then the structural knobs: a grid when the space is small (``grid_limit`` points per runtime),
  otherwise optuna's TPE sampler over continuous knob ranges, as many trials as the time budget allows;
- a point is skipped before it is built when a measured candidate already meets the budget on
  every profile of its runtime and is no worse on estimated latency, energy and size (estimated as
  the planner will, in the point's runtime and on the unit it would run on, e.g. fp16 on a phone's
  GPU): it could be no more than a higher-fidelity twin, and the choice would not change;
- results are cached on disk, keyed by the model's bytes, the data, the point and the tool versions,
  so a second compile of the same model measures nothing again (artifacts are rebuilt only for the
  chosen candidates);
- ``time_budget_s`` bounds the exploration (the format stages always run).

Measured latency: an ``Evaluator`` (the fleet, or this machine) measures candidates in interleaved
rounds and returns each one's median with a 95% CI (``MeasuredLatency``); ``noise_aware_choice``
then treats candidates within that noise of the fastest as tied (see there why).

Knobs: ``KNOBS`` gives the grid values and ranges of the passes known here. A pass registered
later appears without changes here: a config class may declare ``search_space`` (a ClassVar
mapping field -> grid values); otherwise its default config is one point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from edgefleet.compiler import cost_model, planner, stats
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import CompileError, PassError
from edgefleet.compiler.fidelity import Fidelity, OutputFidelity
from edgefleet.compiler.onnx_model import LoadedModel
from edgefleet.compiler.passes import (
    PASSES,
    Fp32Config,
    PassConfig,
    PassData,
    PassResult,
)
from edgefleet.compiler.passes.quantize import DynamicInt8Config, StaticInt8Config
from edgefleet.compiler.planner import Budget, Candidate
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat, Runtime

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 120.0
GRID_LIMIT = 40
"""Up to this many points per runtime the knobs are searched by grid; beyond, by optuna."""


@dataclass(frozen=True)
class Knob:
    """One setting of a structural pass: grid values, and the range optuna samples from."""

    name: str
    grid: tuple[float | int, ...]
    low: float
    high: float
    integer: bool = False
    log_scale: bool = False


KNOBS: dict[str, Knob] = {
    "lowrank": Knob("energy", (0.95, 0.9, 0.8), 0.6, 0.95),
    "channel-prune": Knob("ratio", (0.25, 0.5), 0.1, 0.6),
    "prune": Knob("sparsity", (0.5, 0.75), 0.3, 0.9),
    "cluster": Knob("clusters", (16, 32), 4, 64, integer=True, log_scale=True),
}


@dataclass(frozen=True)
class Point:
    """One candidate scheme: structural passes in order, then the format stage."""

    steps: tuple[PassConfig, ...]
    final: PassConfig

    @property
    def name(self) -> str:
        return "+".join([*(_label(s) for s in self.steps), _label(self.final)])

    def to_dict(self) -> dict[str, Any]:
        """What the manifest records under ``compression``: the format config alone, or the whole pipeline."""
        if not self.steps:
            return self.final.to_dict()
        final = self.final.to_dict()
        return {"scheme": self.name, "number_format": final["number_format"], "runtime": final.get("runtime", "onnxruntime"),
                "pipeline": [*(s.to_dict() for s in self.steps), final]}


def _label(config: PassConfig) -> str:
    """``scheme`` plus the settings that differ from the defaults, e.g. ``lowrank(energy=0.8)``."""
    default = type(config)()
    knob = KNOBS.get(config.scheme)
    changed = [f"{f.name}={_short(getattr(config, f.name))}" for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(default, f.name) or (knob is not None and f.name == knob.name)]
    return f"{config.scheme}({','.join(changed)})" if changed else config.scheme


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return "+".join(map(str, value)) or "none"
    return str(value)


@dataclass(frozen=True)
class SearchOptions:
    """How far to search. ``None`` in ``compile_model`` means: the format stages only, no cache."""

    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    cache_dir: Path | None = None
    grid_limit: int = GRID_LIMIT
    objective: str = "latency"
    seed: int = 0


@dataclass
class Measured:
    """A built and measured point. ``artifact`` is what packaging needs (a ``PassResult`` for
    onnxruntime, a ``LiteRTCandidate`` or ``TFLMCandidate``), None when the figures came from the cache."""

    point: Point
    runtime: Runtime
    candidate: Candidate
    artifact: Any = None
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Exploration:
    measured: dict[Runtime, dict[str, Measured]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasuredLatency:
    """A candidate's latency measured on a device: the median of per-round medians and its 95% CI.

    A round is one benchmark of the candidate (warm-up, then timed runs); candidates are measured in
    interleaved rounds, so the spread between rounds is what load and drift do to one figure.
    """

    median_ms: float
    low_ms: float
    high_ms: float
    rounds: int

    @classmethod
    def from_rounds(cls, medians: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> MeasuredLatency:
        """Percentile bootstrap of the median over rounds. Hand-written (a few lines of numpy) because
        scipy.stats.bootstrap would make scipy a dependency of the compiler for this alone."""
        if not medians:
            raise ValueError("no rounds measured")
        x = np.asarray(medians, dtype=np.float64)
        boot = np.median(np.random.default_rng(seed).choice(x, size=(resamples, len(x))), axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        return cls(float(np.median(x)), float(low), float(high), len(x))

    def faster_than(self, other: MeasuredLatency) -> bool:
        """Faster beyond measurement noise: the two 95% intervals do not overlap."""
        return self.high_ms < other.low_ms

    def describe(self) -> str:
        return f"{self.median_ms:.4g} ms (95% CI {self.low_ms:.4g}-{self.high_ms:.4g}, {self.rounds} rounds)"

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def measure_in_rounds(names: Sequence[str], rounds: int, measure_once: Callable[[str], float | None], *,
                      shuffle: random.Random | None = None) -> dict[str, MeasuredLatency]:
    """Each of ``names`` measured once per round (``measure_once``: ms, or None when it failed), for
    ``rounds`` rounds, in a fresh random order per round with ``shuffle``; a name that fails is
    dropped from then on. The evaluators' common loop: interleaving rounds lets load on the device
    hit every candidate alike, and the spread between rounds is the noise ``MeasuredLatency`` reports."""
    samples: dict[str, list[float]] = {}
    active = list(names)
    for _ in range(rounds):
        if shuffle is not None:
            shuffle.shuffle(active)
        for name in list(active):
            got = measure_once(name)
            if got is None:
                active.remove(name)
                samples.pop(name, None)
            else:
                samples.setdefault(name, []).append(got)
    return {n: MeasuredLatency.from_rounds(v) for n, v in samples.items()}


class Evaluator(Protocol):
    """Measures candidates' latency somewhere real instead of estimating it (``compile --measure-on-fleet``,
    ``--measure-locally``).

    ``measure`` gets a profile and signed packages of some of its candidates, by scheme, and returns
    the measured latency of those it could run; an empty result leaves the estimates in charge.
    ``limit`` is how many of a profile's best feasible candidates (by estimate) it measures, None for
    all of them; ``where`` says where, for the report ("on the fleet", "on this machine").
    """

    limit: int | None
    where: str

    def measure(self, profile: HardwareProfile, packages: Mapping[str, Path]) -> dict[str, MeasuredLatency]: ...


@dataclass(frozen=True)
class MeasuredPoint:
    """What the noise-aware choice compares: measured latency, model size, fidelity loss."""

    latency: MeasuredLatency
    size_bytes: int
    fidelity_loss: float


def dominates(a: MeasuredPoint, b: MeasuredPoint) -> bool:
    """``a`` is faster than ``b`` by more than the measurement noise, and no larger and no less faithful.

    A latency difference within the noise makes no candidate better than another: that is what
    lets measured candidates be compared at all when they differ by microseconds.
    """
    return a.latency.faster_than(b.latency) and a.size_bytes <= b.size_bytes and a.fidelity_loss <= b.fidelity_loss


def noise_tolerant_front(points: Mapping[str, MeasuredPoint]) -> set[str]:
    """The names no other point dominates (``dominates``) on (measured latency, size, fidelity loss)."""
    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


def noise_aware_choice(points: Mapping[str, MeasuredPoint]) -> tuple[str, list[str]]:
    """(the choice, the names tied with the fastest, fastest first) among measured candidates that all meet the budget.

    Why: on a small model the candidates differ by microseconds, below the noise of one device's
    measurement, and the lowest median then picks by chance. So candidates whose 95% CI overlaps
    the fastest one's count as tied, and the smaller model wins, then the lower fidelity loss, then
    the lower median. The choice is on ``noise_tolerant_front``: a candidate faster than it beyond
    noise would overlap the fastest too, so it would be among the ties, and win them if no larger
    and no less faithful.
    """
    if not points:
        raise ValueError("no measured candidates to choose from")
    fastest = min(points.values(), key=lambda p: p.latency.median_ms).latency
    tied = sorted((n for n, p in points.items() if not fastest.faster_than(p.latency)), key=lambda n: points[n].latency.median_ms)
    pick = min(tied, key=lambda n: (points[n].size_bytes, points[n].fidelity_loss, points[n].latency.median_ms, n))
    return pick, tied


def format_stages(runtime: Runtime, *, has_calibration: bool, search: bool,
                  legacy: Sequence[PassConfig] = ()) -> list[PassConfig]:
    """The format stages a runtime gets. Without ``search`` they are the ``legacy`` configs of that runtime."""
    from edgefleet.compiler.tflite.candidates import (
        DEFAULT_LITERT_CANDIDATES,
        LiteRTConfig,
    )
    from edgefleet.compiler.tflm.candidates import TFLMInt8Config

    if runtime is Runtime.TFLM:
        return [TFLMInt8Config(), TFLMInt8Config(lut=True)] if search else [TFLMInt8Config()]
    if runtime is Runtime.LITERT:
        configs = [c for c in legacy if isinstance(c, LiteRTConfig)] if not search else list(DEFAULT_LITERT_CANDIDATES)
        return [Fp32Config(), *configs]
    if not search:
        onnx_configs = [c for c in legacy if c.scheme in PASSES]
        return onnx_configs if any(isinstance(c, Fp32Config) for c in onnx_configs) else [Fp32Config(), *onnx_configs]
    stages: list[PassConfig] = [Fp32Config(), DynamicInt8Config()]
    if has_calibration:
        stages += [StaticInt8Config(calibrate_method=m, per_channel=pc)
                   for m in ("minmax", "percentile") for pc in (True, False)]
    # Format passes registered after this module was written (number format other than fp32).
    known = {"fp32", "int8-static", "int8-dynamic"}
    stages += [p.config_type() for s, p in PASSES.items() if s not in known and p.config_type.number_format is not NumberFormat.FP32]
    return stages


def structural_grid() -> list[tuple[PassConfig, ...]]:
    """Every structural step the grid tries (one pass each), from the registry."""
    out: list[tuple[PassConfig, ...]] = []
    for scheme, pass_type in PASSES.items():
        config_type = pass_type.config_type
        if scheme == "fp32" or config_type.number_format is not NumberFormat.FP32:
            continue
        space = getattr(config_type, "search_space", None)
        knob = KNOBS.get(scheme)
        if isinstance(space, Mapping) and space:
            name, values = next(iter(space.items()))
            out += [(config_type(**{name: v}),) for v in values]
        elif knob is not None:
            out += [(config_type(**{knob.name: v}),) for v in knob.grid]
        else:
            out.append((config_type(),))
    return out


def explore(
    loaded: LoadedModel,
    data: PassData,
    runtimes: Mapping[Runtime, Sequence[tuple[HardwareProfile, frozenset[NumberFormat]]]],
    *,
    options: SearchOptions | None,
    budget: Budget,
    legacy: Sequence[PassConfig] = (),
    corrections: Mapping[str, float] | None = None,
    progress: bool = False,
) -> Exploration:
    """Build and measure candidates for each runtime (see the module docstring).

    ``runtimes`` maps each runtime to the profiles it serves, with the formats its target carries.
    Errors of the format stages alone surface (they are what every compile needs); a structural
    point that fails is recorded in ``skipped`` with the reason.
    """
    start = time.monotonic()
    deadline = start + options.time_budget_s if options is not None else math.inf
    cache = _Cache(options.cache_dir, loaded.model, data) if options is not None and options.cache_dir is not None else None
    builder = _Builder(loaded, data, cache, progress=progress)
    result = Exploration()
    modes: dict[str, str] = {}
    has_calibration = data.calibration is not None and not data.calibration.synthetic
    stages = {r: format_stages(r, has_calibration=has_calibration, search=options is not None, legacy=legacy) for r in runtimes}
    for runtime in runtimes:
        got = result.measured.setdefault(runtime, {})
        for m in builder.group(runtime, (), stages[runtime], result.skipped, strict=True):
            got[m.point.name] = m
    if options is not None:
        # Runtimes share what is left of the budget: each gets an equal part of the remainder. Those with
        # a profile that no format stage alone satisfies (a model too big for a microcontroller's flash)
        # go first: they need the structural passes most.
        def satisfied(item: tuple[Runtime, Sequence[tuple[HardwareProfile, frozenset[NumberFormat]]]]) -> bool:
            runtime, served = item
            return all(any(planner.check(m.candidate, p, budget, f).feasible for m in result.measured[runtime].values())
                       for p, f in served)

        ordered = sorted(runtimes.items(), key=satisfied)
        for i, (runtime, served) in enumerate(ordered):
            until = time.monotonic() + (deadline - time.monotonic()) / (len(runtimes) - i)
            modes[runtime.value] = _structural(builder, _Judge(served, budget, corrections, options.objective), runtime,
                                               stages[runtime], result, until=until, options=options)
    result.log = {"seconds": round(time.monotonic() - start, 2), "modes": modes,
                  "cache_hits": builder.cache_hits, "built": builder.built,
                  "time_budget_s": options.time_budget_s if options is not None else None}
    return result


def _structural(builder: _Builder, judge: _Judge, runtime: Runtime, stages: Sequence[PassConfig], result: Exploration,
                *, until: float, options: SearchOptions) -> str:
    """Explore the structural knobs for one runtime until ``until``; returns how (for the report)."""
    got = result.measured[runtime]
    grid = structural_grid()
    if len(grid) * len(stages) > options.grid_limit:
        trials = _optuna(builder, judge, runtime, stages, got, result.skipped, deadline=until, seed=options.seed)
        return f"optuna TPE: {trials} trials over the structural knobs, each with {len(stages)} format stages"
    for done, steps in enumerate(grid):
        if time.monotonic() > until:
            result.skipped[f"{runtime.value}: {len(grid) - done} of {len(grid)} structural grid points"] = "time budget spent"
            break
        _try(builder, judge, runtime, steps, stages, got, result.skipped)
    return f"grid: {len(grid)} structural points x {len(stages)} format stages"


def rebuild(loaded: LoadedModel, data: PassData, m: Measured) -> Measured:
    """Build a point measured earlier (from the cache) again, for its artifact."""
    builder = _Builder(loaded, data, None, progress=False)
    (again,) = builder.group(m.runtime, m.point.steps, [m.point.final], {}, strict=True)
    return again


# --- building and measuring ---------------------------------------------------------------------


class _Builder:
    """Runs structural passes (memoised by steps) and format stages, consulting the cache."""

    def __init__(self, loaded: LoadedModel, data: PassData, cache: _Cache | None, *, progress: bool) -> None:
        self.loaded, self.data, self.cache, self.progress = loaded, data, cache, progress
        self._models: dict[tuple[PassConfig, ...], onnx.ModelProto] = {(): loaded.model}
        self.cache_hits = 0
        self.built = 0

    def structural(self, steps: tuple[PassConfig, ...]) -> onnx.ModelProto:
        if steps not in self._models:
            model = self.structural(steps[:-1])
            step = PASSES[steps[-1].scheme](steps[-1])
            result: PassResult = step(model, dataclasses.replace(self.data, reference=None))
            if not result.report.modified:
                raise PassError("changed nothing on this model", pass_name=step.name)
            self._models[steps] = result.model
        return self._models[steps]

    def group(self, runtime: Runtime, steps: tuple[PassConfig, ...], stages: Sequence[PassConfig],
              skipped: dict[str, str], *, strict: bool) -> list[Measured]:
        points = [Point(steps, s) for s in stages]
        out: list[Measured] = []
        todo: list[Point] = []
        for p in points:
            hit = self.cache.get(runtime, p) if self.cache is not None else None
            if hit is not None:
                self.cache_hits += 1
                out.append(Measured(p, runtime, hit, cached=True))
            else:
                todo.append(p)
        if not todo:
            return out
        start = time.monotonic()
        try:
            model = self.structural(steps)
            built = self._build(runtime, model, todo, skipped)
        except CompileError as exc:
            if strict:
                raise
            for p in todo:
                skipped[f"{runtime.value}: {p.name}"] = str(exc)
            log.info("%s: %s", runtime.value, exc)
            return out
        seconds = (time.monotonic() - start) / max(1, len(built))
        for m in built:
            m.seconds = round(seconds, 3)
            self.built += 1
            if self.cache is not None:
                self.cache.put(runtime, m.point, m.candidate)
        return out + built

    def _build(self, runtime: Runtime, model: onnx.ModelProto, points: Sequence[Point], skipped: dict[str, str]) -> list[Measured]:
        graph = cost_model.analyse(model)
        data = self.data
        if runtime is Runtime.ONNXRUNTIME:
            out = []
            for p in points:
                if isinstance(p.final, StaticInt8Config) and data.calibration is None:
                    skipped[p.name] = "no calibration data"
                    continue
                try:
                    # onnxruntime's calibrators print progress to stdout, which belongs to --json.
                    with contextlib.redirect_stdout(sys.stderr):
                        r = PASSES[p.final.scheme](p.final)(model, data, progress=self.progress)
                except PassError as exc:
                    if isinstance(p.final, Fp32Config) and not p.steps:
                        raise
                    # One technique failing on this model should not stop the others; the report says why.
                    log.warning("%s", exc)
                    skipped[p.name] = str(exc)
                    continue
                out.append(Measured(p, runtime, _candidate(r, p, graph, modified=r.report.modified or bool(p.steps)), r))
            return out
        fp32 = _float_candidate(model, graph)
        if runtime is Runtime.LITERT:
            from edgefleet.compiler.tflite.candidates import litert_candidates

            by_scheme = {p.final.scheme: p for p in points}
            made, why = litert_candidates(fp32, model, self.loaded.inputs, data, [p.final for p in points])
            for scheme, reason in why.items():
                if scheme in by_scheme:
                    skipped[by_scheme[scheme].name] = reason
            return [Measured(by_scheme[s], runtime, _renamed(c.candidate, by_scheme[s], graph), c)
                    for s, c in made.items() if s in by_scheme]
        from edgefleet.compiler.tflm.candidates import tflm_candidate
        from edgefleet.compiler.tflm.compression import compress_candidate

        plain = tflm_candidate(fp32, model, self.loaded.inputs, data)
        out = []
        for p in points:
            c = plain
            if _is_lut(p):
                if not any(step.scheme == "cluster" for step in p.steps):
                    continue  # only clustered weights have few enough values per channel for a table
                c = compress_candidate(plain, [plain.quantize_feed(f) for f in data.evaluation.feeds()])
                if c is plain:
                    skipped[p.name] = "no weight tensor has few enough distinct values per channel for a lookup table"
                    continue
            out.append(Measured(p, runtime, _renamed(c.candidate, p, graph), c))
        return out


def _candidate(r: PassResult, p: Point, graph: cost_model.GraphCost, *, modified: bool) -> Candidate:
    rep = r.report
    return Candidate(
        scheme=p.name, config=p.to_dict(), number_format=p.final.number_format,
        runtime_quantization=p.final.runtime_quantization, modified=modified, params=rep.params,
        nonzero_params=rep.nonzero_params, size_bytes=rep.size_bytes, ram_bytes=rep.ram_bytes,
        fidelity=rep.fidelity, notes=rep.notes, graph=graph,
    )


def _renamed(c: Candidate, p: Point, graph: cost_model.GraphCost) -> Candidate:
    return dataclasses.replace(c, scheme=p.name, config=p.to_dict(), graph=graph, modified=c.modified or bool(p.steps))


def _float_candidate(model: onnx.ModelProto, graph: cost_model.GraphCost) -> Candidate:
    """The float model as the TFLite builders need it: parameters and the activation-memory estimate."""
    s = stats.measure(model)
    none = Fidelity(samples=0, synthetic=False, outputs=(OutputFidelity("", None, 1.0, 0.0),))
    return Candidate(scheme="fp32", config=Fp32Config().to_dict(), number_format=NumberFormat.FP32, runtime_quantization=False,
                     modified=False, params=s.params, nonzero_params=s.nonzero_params, size_bytes=s.size_bytes,
                     ram_bytes=s.ram_bytes, fidelity=none, graph=graph)


# --- judging and pruning --------------------------------------------------------------------------


class _Judge:
    """Scores points for the profiles of one runtime: feasibility, the objective, and domination."""

    def __init__(self, served: Sequence[tuple[HardwareProfile, frozenset[NumberFormat]]], budget: Budget,
                 corrections: Mapping[str, float] | None, objective: str) -> None:
        self.served, self.budget, self.corrections, self.objective = served, budget, corrections, objective

    def costs(self, c: Candidate, profile: HardwareProfile, size: float | None = None) -> tuple[float, float, float]:
        assert c.graph is not None
        e = cost_model.estimate(c.graph, profile, c.number_format, runtime=c.runtime, runtime_quantization=c.runtime_quantization,
                                correction=cost_model.correction_for(profile.name, self.corrections),
                                decoded_weights=c.decodes_weights)
        return e.latency_ms, e.energy_mj, float(c.size_bytes if size is None else size)

    def feasible(self, c: Candidate, profile: HardwareProfile, carried: frozenset[NumberFormat]) -> bool:
        corr = cost_model.correction_for(profile.name, self.corrections)
        return planner.check(c, profile, self.budget, carried, corr).feasible

    def dominated(self, probe: Candidate, predicted_size: float, measured: Iterable[Measured]) -> str | None:
        """The name of a measured candidate feasible everywhere that costs no more than ``probe`` anywhere."""
        pool = list(measured)
        for m in pool:
            if m.candidate.graph is None or not all(self.feasible(m.candidate, p, f) for p, f in self.served):
                continue
            if all(all(a <= b for a, b in zip(self.costs(m.candidate, p, _predicted_size(m.candidate)),
                                              self.costs(probe, p, predicted_size), strict=True))
                   for p, _ in self.served):
                return m.point.name
        return None

    def score(self, built: Sequence[Measured]) -> float:
        """Lower is better: the best objective (relative to fp32 on the same profile) among feasible ones, or a penalty."""
        best = math.inf
        for m in built:
            for p, f in self.served:
                if self.feasible(m.candidate, p, f):
                    lat, energy, size = self.costs(m.candidate, p)
                    best = min(best, {"latency": lat, "energy": energy, "size": size}.get(self.objective, lat))
        return best if best < math.inf else 1e12


def _is_lut(p: Point) -> bool:
    return bool(getattr(p.final, "lut", False))


def _room(profile: HardwareProfile) -> float:
    """Where the model file must fit: flash on a microcontroller, else storage (unlimited if unknown)."""
    m = profile.memory
    room = m.flash if m.flash is not None else m.storage
    return float(room) if room is not None else math.inf


def _predicted_size(c: Candidate) -> float:
    """Weights times bytes per weight: comparable across points before they are built."""
    assert c.graph is not None
    per = {NumberFormat.INT8: 1.0, NumberFormat.FP16: 2.0}.get(c.number_format, 4.0)
    return per * sum(o.weight_elements for o in c.graph.ops)


def _try(builder: _Builder, judge: _Judge, runtime: Runtime, steps: tuple[PassConfig, ...], stages: Sequence[PassConfig],
         got: dict[str, Measured], skipped: dict[str, str]) -> list[Measured]:
    """Build the format stages after ``steps``, skipping those a measured candidate dominates already."""
    try:
        model = builder.structural(steps)
    except CompileError as exc:
        for s in stages:
            skipped[Point(steps, s).name] = str(exc)
        return []
    graph = cost_model.analyse(model)
    params = sum(o.weight_elements for o in graph.ops)
    keep: list[PassConfig] = []
    for s in stages:
        if Point(steps, s).name in got or Point(steps, s).name in skipped:
            continue  # measured (or refused) in an earlier trial
        lut = bool(getattr(s, "lut", False))
        # The probe carries the point's whole config, runtime included: the cost model places a LiteRT
        # fp16 candidate on a counted GPU only when it knows the runtime. Without it every probe was
        # estimated as onnxruntime on the CPU, so a pruned fp16 point looked slower than the unpruned
        # int8 one and was skipped as dominated, on exactly the phones where fp16 on the GPU is fastest.
        probe = Candidate(scheme="probe", config=Point(steps, s).to_dict(), number_format=s.number_format,
                          runtime_quantization=s.runtime_quantization, modified=True, params=params, nonzero_params=params,
                          size_bytes=0, ram_bytes=0, fidelity=Fidelity(0, False, ()), graph=graph)
        predicted = _predicted_size(probe)
        clusters = next((int(getattr(c, "clusters", 0)) for c in steps if c.scheme == "cluster"), 0)
        if lut and clusters > 1:
            predicted *= math.ceil(math.log2(clusters)) / 8  # table indices instead of int8 weights
        room = max(_room(p) for p, _ in judge.served)
        if predicted > room:
            skipped[Point(steps, s).name] = (f"cannot fit before building: its weights alone take {predicted / 2**20:.2f} MiB, "
                                             f"more than {room / 2**20:.2f} MiB of storage or flash")
            continue
        by = judge.dominated(probe, predicted, got.values())
        if by is not None:
            skipped[Point(steps, s).name] = f"dominated before building: {by} meets the budget and costs no more (estimated)"
        else:
            keep.append(s)
    built = builder.group(runtime, steps, keep, skipped, strict=False) if keep else []
    for m in built:
        got[m.point.name] = m
    return [got[n] for n in (Point(steps, s).name for s in stages) if n in got]


def _optuna(builder: _Builder, judge: _Judge, runtime: Runtime, stages: Sequence[PassConfig], got: dict[str, Measured],
            skipped: dict[str, str], *, deadline: float, seed: int) -> int:
    """TPE over (structural pass, its knob) with every format stage built for each structure."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    schemes = ["none", *[s for s in PASSES if s in KNOBS or hasattr(PASSES[s].config_type, "search_space")]]
    schemes = [s for s in schemes if s == "none" or PASSES[s].config_type.number_format is NumberFormat.FP32]

    def objective(trial: optuna.Trial) -> float:
        scheme = trial.suggest_categorical("pass", schemes)
        if scheme == "none":
            return judge.score([m for m in got.values() if not m.point.steps])
        config_type = PASSES[scheme].config_type
        knob = KNOBS.get(scheme)
        if knob is None:
            space = config_type.search_space  # type: ignore[attr-defined]
            name, values = next(iter(space.items()))
            value: Any = trial.suggest_categorical(f"{scheme}.{name}", list(values))
        elif knob.integer:
            name, value = knob.name, trial.suggest_int(f"{scheme}.{knob.name}", int(knob.low), int(knob.high), log=knob.log_scale)
        else:
            # Steps of 0.05: finer differences are within what the fidelity measurement can tell apart.
            name, value = knob.name, round(trial.suggest_float(f"{scheme}.{knob.name}", knob.low, knob.high, step=0.05), 2)
        built = _try(builder, judge, runtime, (config_type(**{name: value}),), stages, got, skipped)
        return judge.score(built)

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    trials = stale = 0
    # Stop at the deadline, or when trials keep landing on points measured already (the space is covered).
    while time.monotonic() < deadline and stale < 10:
        before = len(got) + len(skipped)
        study.optimize(objective, n_trials=1)
        trials += 1
        stale = stale + 1 if len(got) + len(skipped) == before else 0
    return trials


# --- the disk cache -------------------------------------------------------------------------------


class _Cache:
    """Measured candidates as JSON files, keyed by model bytes, data, runtime, point and tool versions."""

    def __init__(self, root: Path, model: onnx.ModelProto, data: PassData) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256(model.SerializeToString())
        for ds in (data.evaluation, data.calibration):
            _hash_dataset(h, ds)
        for package in ("onnxruntime", "ai-edge-litert", "ai-edge-quantizer", "tflite-micro", "edgefleet"):
            h.update(_version(package).encode())
        self.prefix = h.hexdigest()

    def _path(self, runtime: Runtime, p: Point) -> Path:
        key = hashlib.sha256(f"{self.prefix}/{runtime.value}/{json.dumps(p.to_dict(), sort_keys=True)}".encode()).hexdigest()
        return self.root / f"{key}.json"

    def get(self, runtime: Runtime, p: Point) -> Candidate | None:
        path = self._path(runtime, p)
        try:
            return _candidate_from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable cache entry (%s); measuring again", path, exc)
            return None

    def put(self, runtime: Runtime, p: Point, c: Candidate) -> None:
        path = self._path(runtime, p)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_candidate_to_json(c)))
        tmp.replace(path)


def _hash_dataset(h: Any, ds: Dataset | None) -> None:
    if ds is None:
        h.update(b"none")
        return
    for name in sorted(ds.arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ds.arrays[name]).tobytes())
    if ds.labels is not None:
        h.update(np.ascontiguousarray(ds.labels).tobytes())
    h.update(b"synthetic" if ds.synthetic else b"real")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _candidate_to_json(c: Candidate) -> dict[str, Any]:
    d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in ("fidelity", "graph", "number_format")}
    d["number_format"] = c.number_format.value
    d["notes"] = list(c.notes)
    d["fidelity"] = {**{k: getattr(c.fidelity, k) for k in ("samples", "synthetic", "accuracy", "reference_accuracy")},
                     "outputs": [dataclasses.asdict(o) for o in c.fidelity.outputs]}
    d["graph"] = [dataclasses.astuple(o) for o in c.graph.ops] if c.graph is not None else None
    return d


def _candidate_from_json(d: dict[str, Any]) -> Candidate:
    f = d["fidelity"]
    fid = Fidelity(samples=f["samples"], synthetic=f["synthetic"], accuracy=f["accuracy"], reference_accuracy=f["reference_accuracy"],
                   outputs=tuple(OutputFidelity(**o) for o in f["outputs"]))
    graph = cost_model.GraphCost(tuple(cost_model.OpCost(*o) for o in d["graph"])) if d["graph"] is not None else None
    rest = {k: v for k, v in d.items() if k not in ("fidelity", "graph", "number_format", "notes")}
    return Candidate(**rest, number_format=NumberFormat(d["number_format"]), notes=tuple(d["notes"]), fidelity=fid, graph=graph)

