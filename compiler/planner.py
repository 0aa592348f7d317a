"""Choosing one candidate per hardware profile: a pure function of measurements, a profile and a budget.

A candidate is feasible for a profile when

1. it changed something (a compression that left the model as it was is not a candidate; the
   fp32 reference is exempt),
2. the profile runs its number format and the runtime target can carry it,
3. it meets the fidelity budget against the original: top-1 agreement >= ``min_agreement``
   (default 99%) when the model has a classifier output, otherwise SQNR >= ``min_sqnr_db``
   (default 30 dB, i.e. noise power 1/1000 of the signal's),
4. its model file fits the profile's storage (flash on a microcontroller), and
5. its rough RAM need (model bytes + the largest activations of one operator) fits the profile's RAM;
   for TFLite Micro it is the tensor arena measured in TFLM (the model itself stays in flash).

and, when the budget sets them, 6. its estimated latency (``cost_model``) is within
``max_latency_ms`` and its model file within ``max_size_bytes``.

Without an ``objective``, the planner prefers among feasible candidates, in order: a number format
the profile marks fast; static over runtime (dynamic) quantization, because dynamic quantization
recomputes activation ranges on every inference and NPUs and DSPs only run static int8; then the
smaller model; then the higher fidelity. With an objective (``latency``, ``size`` or ``energy``) it
takes the feasible candidate that minimises it, latency and energy estimated for this profile by
``cost_model``, the higher fidelity breaking ties. ``best_effort`` picks, when nothing is feasible,
the candidate that misses its limits by the least (it must still run on the device).

The result carries a verdict per candidate (with its cost estimate and whether it lies on the Pareto
front of objective against fidelity loss) and a paragraph saying why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.compiler import cost_model
from edgefleet.compiler.cost_model import Estimate, GraphCost
from edgefleet.compiler.fidelity import Fidelity
from edgefleet.compiler.units import human_bytes, percent
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat

REFERENCE = "fp32"
Objective = Literal["latency", "size", "energy"]
OBJECTIVES: tuple[str, ...] = ("latency", "size", "energy")


@dataclass(frozen=True)
class Budget:
    """How far a compressed model may drift from the original and still ship."""

    min_agreement: float = 0.99
    min_sqnr_db: float = 30.0
    max_drop: float | None = None
    """For classifiers, instead of ``min_agreement``: the largest accuracy drop against the original on
    labelled held-out data (a fraction), or without labels the largest top-1 agreement drop."""
    max_latency_ms: float | None = None
    max_size_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be a fraction between 0 and 1 (0.99 = 99%), got {self.min_agreement}")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 1.0:
            raise ValueError(f"max_drop must be a fraction between 0 and 1 (0.01 = 1%), got {self.max_drop}")
        for name in ("max_latency_ms", "max_size_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def shortfall(self, f: Fidelity) -> str | None:
        """Why ``f`` misses the budget, or None when it meets it."""
        if f.is_classifier and self.max_drop is not None:
            drop, what = fidelity_drop(f)
            if drop > self.max_drop + 1e-12:
                return f"{what} {percent(drop)} > {percent(self.max_drop)} (by {percent(drop - self.max_drop)})"
            return None
        if f.is_classifier:
            agreement = f.top1_agreement
            assert agreement is not None
            if agreement < self.min_agreement:
                return f"top-1 agreement {percent(agreement)} < {percent(self.min_agreement)}"
            return None
        if f.sqnr_db is not None and f.sqnr_db < self.min_sqnr_db:
            return f"SQNR {f.sqnr_db:.1f} dB < {self.min_sqnr_db:g} dB"
        return None

    def describe(self, classifier: bool) -> str:
        if classifier and self.max_drop is not None:
            return f"accuracy (or top-1 agreement) drop <= {percent(self.max_drop)}"
        return f"top-1 agreement >= {percent(self.min_agreement)}" if classifier else f"SQNR >= {self.min_sqnr_db:g} dB"

    def to_dict(self) -> dict[str, float]:
        limits = {"max_drop": self.max_drop, "max_latency_ms": self.max_latency_ms, "max_size_bytes": self.max_size_bytes}
        return {"min_agreement": self.min_agreement, "min_sqnr_db": self.min_sqnr_db, **{k: v for k, v in limits.items() if v is not None}}


def fidelity_drop(f: Fidelity) -> tuple[float, str]:
    """How much a classifier lost: accuracy drop on labelled data, else top-1 disagreement with the original."""
    if f.accuracy is not None and f.reference_accuracy is not None:
        return max(0.0, f.reference_accuracy - f.accuracy), "accuracy drop"
    return 1.0 - (f.top1_agreement or 0.0), "top-1 agreement drop"


def fidelity_loss(f: Fidelity) -> float:
    """One number to minimise, comparable among candidates of one model: the drop for classifiers,
    the noise-to-signal power ratio (10^(-SQNR/10)) otherwise."""
    if f.is_classifier:
        return fidelity_drop(f)[0]
    return 0.0 if f.sqnr_db is None else 10 ** (-f.sqnr_db / 10)


DEFAULT_BUDGET = Budget()


@dataclass(frozen=True)
class Candidate:
    """One compressed model as the planner sees it: its config and what was measured."""

    scheme: str
    config: dict[str, Any]
    number_format: NumberFormat
    runtime_quantization: bool
    modified: bool
    params: int
    nonzero_params: int
    size_bytes: int
    ram_bytes: int
    fidelity: Fidelity
    notes: tuple[str, ...] = ()
    graph: GraphCost | None = field(default=None, compare=False, repr=False)
    """The float graph it computes (after structural passes), for the cost model; None: not estimated."""

    @property
    def is_reference(self) -> bool:
        return self.scheme == REFERENCE

    @property
    def runtime(self) -> str:
        """The runtime its package targets (onnxruntime unless its format stage says otherwise)."""
        return str(self.config.get("runtime", "onnxruntime"))

    @property
    def decodes_weights(self) -> bool:
        """Whether its weights are stored as lookup-table indices, expanded at every inference (TFLM LUT)."""
        final = self.config["pipeline"][-1] if "pipeline" in self.config else self.config
        return bool(final.get("lut", False))


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    problems: tuple[str, ...]
    fast: bool
    estimate: Estimate | None = None
    measured_ms: float | None = None
    """Latency measured on a device of the profile (``--measure-on-fleet``); the objective then uses it."""
    pareto: bool = False
    """On the Pareto front of (objective, fidelity loss) among the candidates that run on the profile."""

    @property
    def feasible(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Plan:
    profile: str
    runtime: str
    budget: Budget
    verdicts: tuple[Verdict, ...]
    chosen: Candidate | None
    reason: str
    objective: str | None = None
    best_effort: bool = False
    """The chosen candidate misses a limit: nothing met them all and the caller asked for the best anyway."""


def check(
    candidate: Candidate, profile: HardwareProfile, budget: Budget, carried: frozenset[NumberFormat], correction: float = 1.0
) -> Verdict:
    """The verdict on one candidate for one profile; ``carried`` are the formats the runtime target supports."""
    problems: list[str] = []
    estimate = (
        cost_model.estimate(candidate.graph, profile, candidate.number_format, runtime=candidate.runtime,
                            runtime_quantization=candidate.runtime_quantization, correction=correction,
                            decoded_weights=candidate.decodes_weights)
        if candidate.graph is not None else None
    )
    c = candidate
    if not c.modified and not c.is_reference:
        problems.append("unchanged by its pass (nothing it could compress)")
    if c.number_format not in profile.formats:
        problems.append(f"{profile.name} does not run {c.number_format.value}")
    elif c.number_format not in carried:
        problems.append(f"the runtime target cannot carry {c.number_format.value}")
    shortfall = budget.shortfall(c.fidelity)
    if shortfall:
        problems.append(shortfall)
    storage = profile.memory.flash if profile.memory.flash is not None else profile.memory.storage
    where = "flash" if profile.memory.flash is not None else "storage"
    if storage is not None and c.size_bytes > storage:
        exact = f" ({c.size_bytes} bytes > {storage} bytes)" if where == "flash" else ""
        problems.append(f"model {human_bytes(c.size_bytes)} > {human_bytes(storage)} {where}{exact}")
    if c.ram_bytes > profile.memory.ram:
        if c.config.get("runtime") == "tflm":
            # Measured, not estimated: the tensor arena TFLite Micro needed (the model stays in flash).
            problems.append(f"TFLM tensor arena {human_bytes(c.ram_bytes)} ({c.ram_bytes} bytes) > "
                            f"{human_bytes(profile.memory.ram)} RAM ({profile.memory.ram} bytes)")
        else:
            problems.append(f"needs ~{human_bytes(c.ram_bytes)} RAM > {human_bytes(profile.memory.ram)}")
    if budget.max_size_bytes is not None and c.size_bytes > budget.max_size_bytes:
        over = c.size_bytes - budget.max_size_bytes
        problems.append(f"model {human_bytes(c.size_bytes)} > --max-size {human_bytes(budget.max_size_bytes)} "
                        f"(by {human_bytes(over)}, {100 * over / budget.max_size_bytes:.0f}%)")
    if budget.max_latency_ms is not None and estimate is not None and estimate.latency_ms > budget.max_latency_ms:
        over_ms = estimate.latency_ms - budget.max_latency_ms
        problems.append(f"estimated latency {estimate.latency_ms:.3g} ms > --max-latency {budget.max_latency_ms:g} ms "
                        f"(by {over_ms:.3g} ms, {100 * over_ms / budget.max_latency_ms:.0f}%)")
    return Verdict(candidate=c, problems=tuple(problems), fast=c.number_format in profile.fast_formats(), estimate=estimate)


def objective_value(v: Verdict, objective: str) -> float:
    """What ``objective`` costs for this verdict's candidate on its profile (inf when not estimated)."""
    if objective == "size":
        return float(v.candidate.size_bytes)
    if v.measured_ms is not None and v.estimate is not None:
        # Measured latency replaces the estimate; energy keeps the estimate's power.
        return v.measured_ms if objective == "latency" else v.measured_ms * v.estimate.energy_mj / v.estimate.latency_ms
    if v.estimate is None:
        return float("inf")
    return v.estimate.latency_ms if objective == "latency" else v.estimate.energy_mj


def _runs_on(v: Verdict) -> bool:
    """Whether the device can run it at all (format, target, memory): what best effort may pick from."""
    hard = (" does not run ", "cannot carry", " RAM", " flash", " storage", "unchanged by its pass")
    return not any(marker in p for p in v.problems for marker in hard)


def pareto(verdicts: Sequence[Verdict], objective: str) -> tuple[Verdict, ...]:
    """Mark each verdict on the front of (objective, fidelity loss) among those that run on the device."""
    runnable = [v for v in verdicts if _runs_on(v)]
    points = {id(v): (objective_value(v, objective), fidelity_loss(v.candidate.fidelity)) for v in runnable}

    def dominated(v: Verdict) -> bool:
        a = points[id(v)]
        return any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in (points[id(w)] for w in runnable))

    front = {id(v) for v in runnable if not dominated(v)}
    return tuple(dataclasses.replace(v, pareto=id(v) in front) for v in verdicts)


def _rank(v: Verdict) -> tuple[bool, bool, int, float]:
    f = v.candidate.fidelity
    closeness = f.top1_agreement if f.is_classifier else (f.sqnr_db if f.sqnr_db is not None else float("inf"))
    return (not v.fast, v.candidate.runtime_quantization, v.candidate.size_bytes, -(closeness or 0.0))


def plan(
    candidates: Sequence[Candidate],
    profile: HardwareProfile,
    *,
    budget: Budget = DEFAULT_BUDGET,
    runtime: str = "onnxruntime",
    carried: frozenset[NumberFormat] = frozenset(NumberFormat),
    objective: str | None = None,
    corrections: Mapping[str, float] | None = None,
    best_effort: bool = False,
    measured: Mapping[str, float] | None = None,
) -> Plan:
    """Judge every candidate for ``profile`` and choose the best feasible one (or none, or with
    ``best_effort`` the one missing its limits by least)."""
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    correction = cost_model.correction_for(profile.name, corrections)
    checked = [check(c, profile, budget, carried, correction) for c in candidates]
    if measured:
        checked = [dataclasses.replace(v, measured_ms=measured.get(v.candidate.scheme)) for v in checked]
    verdicts = pareto(checked, objective or "size")
    if objective is None:
        feasible = sorted((v for v in verdicts if v.feasible), key=_rank)
    else:
        # Measured candidates first: a measurement and an estimate are not comparable figures.
        feasible = sorted((v for v in verdicts if v.feasible),
                          key=lambda v: (bool(measured) and v.measured_ms is None, objective_value(v, objective), _closeness(v)))
    chosen = feasible[0] if feasible else None
    fallback = None
    if chosen is None and best_effort:
        runnable = [v for v in verdicts if _runs_on(v)]
        fallback = min(runnable, key=lambda v: (_miss(v, budget), objective_value(v, objective or "size")), default=None)
    reason = _reason(chosen, feasible[1:], verdicts, profile, budget, objective)
    if fallback is not None:
        reason = (f"Best effort: nothing meets every limit, so {fallback.candidate.scheme} is chosen as the one that "
                  f"misses them by least ({'; '.join(fallback.problems)}). " + reason)
    picked = chosen or fallback
    return Plan(
        profile=profile.name,
        runtime=runtime,
        budget=budget,
        verdicts=verdicts,
        chosen=picked.candidate if picked else None,
        reason=reason,
        objective=objective,
        best_effort=fallback is not None,
    )


def _closeness(v: Verdict) -> float:
    return fidelity_loss(v.candidate.fidelity)


def _miss(v: Verdict, budget: Budget) -> float:
    """How far a runnable candidate misses the soft limits, as a sum of relative excesses."""
    total = 0.0
    f = v.candidate.fidelity
    if budget.shortfall(f):
        if f.is_classifier:
            drop = fidelity_drop(f)[0]
            limit = budget.max_drop if budget.max_drop is not None else 1 - budget.min_agreement
            total += (drop - limit) / max(limit, 1e-3)
        elif f.sqnr_db is not None:
            total += (budget.min_sqnr_db - f.sqnr_db) / max(budget.min_sqnr_db, 1.0)
    if budget.max_size_bytes is not None:
        total += max(0.0, v.candidate.size_bytes / budget.max_size_bytes - 1)
    if budget.max_latency_ms is not None and v.estimate is not None:
        total += max(0.0, v.estimate.latency_ms / budget.max_latency_ms - 1)
    return total


def _reason(
    chosen: Verdict | None, runners_up: Sequence[Verdict], verdicts: Sequence[Verdict], profile: HardwareProfile, budget: Budget,
    objective: str | None = None,
) -> str:
    rejected = [v for v in verdicts if not v.feasible]
    classifier = any(v.candidate.fidelity.is_classifier for v in verdicts)
    synthetic = any(v.candidate.fidelity.synthetic for v in verdicts)
    parts: list[str] = []
    if chosen is None:
        parts.append(f"No candidate fits {profile.name} within the budget ({budget.describe(classifier)}).")
        parts.extend(f"{v.candidate.scheme}: {'; '.join(v.problems)}." for v in rejected)
        parts.extend(_closest(verdicts, budget))
        if any(" RAM" in problem or " flash" in problem or " storage" in problem for v in rejected for problem in v.problems):
            parts.append(
                "To fit the memory, prune channels, cluster weights, or choose a smaller model "
                "(`edgefleet compress` runs pruning and clustering pipelines), or choose a profile with more memory."
            )
        parts.append(
            "Try a looser budget (--min-agreement / --min-sqnr), calibration data that represents real inputs, "
            "or a profile with more memory."
        )
    else:
        c = chosen.candidate
        f = c.fidelity
        on = f"{f.samples} {'random' if f.synthetic else 'held-out'} samples"
        if c.is_reference:
            fidelity_text = "is the original model"
        elif f.is_classifier:
            fidelity_text = f"keeps top-1 agreement at {percent(f.top1_agreement or 0.0)} on {on} (budget {budget.describe(True)})"
        else:
            sqnr = "exact" if f.sqnr_db is None else f"{f.sqnr_db:.1f} dB"
            fidelity_text = f"keeps SQNR at {sqnr} on {on} (budget {budget.describe(False)})"
        storage = profile.memory.flash if profile.memory.flash is not None else profile.memory.storage
        fits = f"{human_bytes(c.size_bytes)} of {human_bytes(storage)} {'flash' if profile.memory.flash is not None else 'storage'}" if storage else human_bytes(c.size_bytes)
        speed = (
            f"{c.number_format.value} is a fast format on {profile.name}"
            if chosen.fast
            else f"no feasible candidate is in a format {profile.name} runs fast"
        )
        if objective is not None:
            speed = f"it has the lowest {_objective_text(chosen, objective)} of the {1 + len(runners_up)} feasible candidates"
        parts.append(
            f"{c.scheme} for {profile.name}: it {fidelity_text}, fits ({fits}, ~{human_bytes(c.ram_bytes)} of "
            f"{human_bytes(profile.memory.ram)} RAM), and {speed}."
        )
        if objective is not None:
            shown = runners_up[:4]
            parts.extend(f"{v.candidate.scheme} also fits but costs more: {_objective_text(v, objective)}." for v in shown)
            if len(runners_up) > len(shown):
                parts.append(f"{len(runners_up) - len(shown)} more feasible candidates cost more.")
            shown_out = [v for v in rejected if _runs_on(v)][:4]
            parts.extend(f"{v.candidate.scheme} is out: {'; '.join(v.problems)}." for v in shown_out)
            if len(rejected) > len(shown_out):
                parts.append(f"{len(rejected) - len(shown_out)} more candidates are out (see the table).")
            rejected = []
        else:
            for v in runners_up:
                parts.append(f"{v.candidate.scheme} also fits but {_why_lower(v, chosen)}.")
        parts.extend(f"{v.candidate.scheme} is out: {'; '.join(v.problems)}." for v in rejected)
    if synthetic:
        parts.append("Fidelity was measured on random inputs, not real data; pass --calibration for figures you can trust.")
    return " ".join(parts)


def _objective_text(v: Verdict, objective: str) -> str:
    e = v.estimate
    if v.measured_ms is not None and objective != "size":
        return f"measured latency ({v.measured_ms:.3g} ms)"
    if objective == "size" or e is None:
        return f"model size ({human_bytes(v.candidate.size_bytes)})"
    if objective == "latency":
        on = "" if e.unit == "CPU" else f" on the {e.unit}"
        return f"estimated latency ({e.latency_ms:.3g} ms{on})"
    return f"estimated energy per inference ({e.energy_mj:.3g} mJ)"


def _closest(verdicts: Sequence[Verdict], budget: Budget) -> list[str]:
    """For each limit that no candidate meets, the candidate that comes closest and by how much it misses."""
    runnable = [v for v in verdicts if _runs_on(v)]
    out: list[str] = []
    fid = [v for v in runnable if budget.shortfall(v.candidate.fidelity)]
    if fid and len(fid) == len(runnable):
        best = min(fid, key=lambda v: fidelity_loss(v.candidate.fidelity))
        out.append(f"Closest on fidelity: {best.candidate.scheme} ({budget.shortfall(best.candidate.fidelity)}).")
    if budget.max_size_bytes is not None and runnable and all(v.candidate.size_bytes > budget.max_size_bytes for v in runnable):
        best = min(runnable, key=lambda v: v.candidate.size_bytes)
        out.append(f"Smallest: {best.candidate.scheme} at {human_bytes(best.candidate.size_bytes)}, "
                   f"{human_bytes(best.candidate.size_bytes - budget.max_size_bytes)} over --max-size-kb.")
    timed = [v for v in runnable if v.estimate is not None]
    if budget.max_latency_ms is not None and timed and all(v.estimate.latency_ms > budget.max_latency_ms for v in timed):  # type: ignore[union-attr]
        best = min(timed, key=lambda v: v.estimate.latency_ms)  # type: ignore[union-attr]
        assert best.estimate is not None
        out.append(f"Fastest: {best.candidate.scheme} at an estimated {best.estimate.latency_ms:.3g} ms, "
                   f"{best.estimate.latency_ms - budget.max_latency_ms:.3g} ms over --max-latency-ms.")
    return out


def _why_lower(v: Verdict, chosen: Verdict) -> str:
    c, w = v.candidate, chosen.candidate
    if chosen.fast and not v.fast:
        return f"{c.number_format.value} is not a fast format here"
    if c.runtime_quantization and not w.runtime_quantization:
        return f"quantizes activations on every inference ({human_bytes(c.size_bytes)})"
    if c.size_bytes > w.size_bytes:
        return f"is larger ({human_bytes(c.size_bytes)})"
    return "ranks lower on fidelity"
