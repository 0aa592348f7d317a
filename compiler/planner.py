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

Among feasible candidates the planner prefers, in order: a number format the profile marks fast;
static over runtime (dynamic) quantization, because dynamic quantization recomputes activation
ranges on every inference and NPUs and DSPs only run static int8; then the smaller model; then the
higher fidelity. The result carries a verdict per candidate and a paragraph saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.compiler.fidelity import Fidelity
from edgefleet.compiler.units import human_bytes, percent
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat

REFERENCE = "fp32"


@dataclass(frozen=True)
class Budget:
    """How far a compressed model may drift from the original and still ship."""

    min_agreement: float = 0.99
    min_sqnr_db: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be a fraction between 0 and 1 (0.99 = 99%), got {self.min_agreement}")

    def shortfall(self, f: Fidelity) -> str | None:
        """Why ``f`` misses the budget, or None when it meets it."""
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
        return f"top-1 agreement >= {percent(self.min_agreement)}" if classifier else f"SQNR >= {self.min_sqnr_db:g} dB"

    def to_dict(self) -> dict[str, float]:
        return {"min_agreement": self.min_agreement, "min_sqnr_db": self.min_sqnr_db}


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

    @property
    def is_reference(self) -> bool:
        return self.scheme == REFERENCE


@dataclass(frozen=True)
class Verdict:
    candidate: Candidate
    problems: tuple[str, ...]
    fast: bool

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


def check(candidate: Candidate, profile: HardwareProfile, budget: Budget, carried: frozenset[NumberFormat]) -> Verdict:
    """The verdict on one candidate for one profile; ``carried`` are the formats the runtime target supports."""
    problems: list[str] = []
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
    return Verdict(candidate=c, problems=tuple(problems), fast=c.number_format in profile.fast_formats())


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
) -> Plan:
    """Judge every candidate for ``profile`` and choose the best feasible one (or none)."""
    verdicts = tuple(check(c, profile, budget, carried) for c in candidates)
    feasible = sorted((v for v in verdicts if v.feasible), key=_rank)
    chosen = feasible[0] if feasible else None
    return Plan(
        profile=profile.name,
        runtime=runtime,
        budget=budget,
        verdicts=verdicts,
        chosen=chosen.candidate if chosen else None,
        reason=_reason(chosen, feasible[1:], verdicts, profile, budget),
    )


def _reason(
    chosen: Verdict | None, runners_up: Sequence[Verdict], verdicts: Sequence[Verdict], profile: HardwareProfile, budget: Budget
) -> str:
    rejected = [v for v in verdicts if not v.feasible]
    classifier = any(v.candidate.fidelity.is_classifier for v in verdicts)
    synthetic = any(v.candidate.fidelity.synthetic for v in verdicts)
    parts: list[str] = []
    if chosen is None:
        parts.append(f"No candidate fits {profile.name} within the budget ({budget.describe(classifier)}).")
        parts.extend(f"{v.candidate.scheme}: {'; '.join(v.problems)}." for v in rejected)
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
        parts.append(
            f"{c.scheme} for {profile.name}: it {fidelity_text}, fits ({fits}, ~{human_bytes(c.ram_bytes)} of "
            f"{human_bytes(profile.memory.ram)} RAM), and {speed}."
        )
        for v in runners_up:
            parts.append(f"{v.candidate.scheme} also fits but {_why_lower(v, chosen)}.")
        parts.extend(f"{v.candidate.scheme} is out: {'; '.join(v.problems)}." for v in rejected)
    if synthetic:
        parts.append("Fidelity was measured on random inputs, not real data; pass --calibration for figures you can trust.")
    return " ".join(parts)


def _why_lower(v: Verdict, chosen: Verdict) -> str:
    c, w = v.candidate, chosen.candidate
    if chosen.fast and not v.fast:
        return f"{c.number_format.value} is not a fast format here"
    if c.runtime_quantization and not w.runtime_quantization:
        return f"quantizes activations on every inference ({human_bytes(c.size_bytes)})"
    if c.size_bytes > w.size_bytes:
        return f"is larger ({human_bytes(c.size_bytes)})"
    return "ranks lower on fidelity"
