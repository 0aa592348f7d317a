"""``compile_model``: from an ONNX file to one signed package per hardware profile.

The steps, each in its own module:

1. resolve the profiles and their runtime targets (fail before any work if one cannot be served),
2. load and check the model, fixing a symbolic batch dimension to 1 (``onnx_model``),
3. load calibration data and split off held-out samples, or fall back to random inputs (``calibration``),
4. build and measure the candidates of each runtime the profiles need (``search``): the format
   stages (fp32, int8 static/dynamic in onnxruntime; the model converted to TFLite and quantized
   with ai-edge-quantizer, measured in LiteRT (``tflite.candidates``); full-integer int8 measured
   in TFLite Micro, with its tensor arena and flash (``tflm.candidates``)), and with search options
   also the structural passes' knobs (pruning, low-rank, clustering, ...) before them,
5. choose a candidate per profile among its runtime's candidates (``planner``: fidelity budget,
   memory, limits, then the objective estimated by ``cost_model``), and fail if any profile has none;
   with an evaluator (the fleet, or this machine), choose again by measured latency, candidates
   within measurement noise of the fastest counting as tied (``noise_aware``),
6. export, attach test vectors, sign and write ``OUT/<name>-<profile>.efpkg`` (``targets``, ``packaging``).

Candidates do not depend on the profile (the same int8 model serves every onnxruntime device), so
they are computed once per runtime and judged per profile. ``candidates`` mixes both families:
ONNX passes (``passes.PASSES``) for onnxruntime, ``LiteRTConfig``s for LiteRT; fp32 is the
reference of both.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import keys
from edgefleet.agent.package import Manifest, file_sha256, write_package
from edgefleet.compiler import calibration, inference, packaging, planner, report
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import CompileError, NoCandidateFits
from edgefleet.compiler.onnx_model import LoadedModel, load_model
from edgefleet.compiler.passes import Fp32Config, PassConfig, PassData
from edgefleet.compiler.passes.quantize import DynamicInt8Config, StaticInt8Config
from edgefleet.compiler.planner import Budget, Candidate, Plan, fidelity_loss
from edgefleet.compiler.search import (
    Evaluator,
    Exploration,
    Measured,
    MeasuredLatency,
    MeasuredPoint,
    SearchOptions,
    explore,
    noise_aware_choice,
    noise_tolerant_front,
    rebuild,
)
from edgefleet.compiler.targets import EXPORTERS, Artifact, Exporter, exporter_for
from edgefleet.compiler.tflite.candidates import (
    DEFAULT_LITERT_CANDIDATES,
    LiteRTCandidate,
)
from edgefleet.compiler.tflite.errors import ConversionError
from edgefleet.compiler.tflm.candidates import TFLMCandidate, quantize_array
from edgefleet.compiler.tflm.target import TFLMTarget as TFLMArtifacts
from edgefleet.compiler.units import human_bytes
from edgefleet.hardware_profiles import HardwareProfile, load_profile
from edgefleet.hardware_profiles.schema import NumberFormat, Runtime

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES: tuple[PassConfig, ...] = (Fp32Config(), StaticInt8Config(), DynamicInt8Config(), *DEFAULT_LITERT_CANDIDATES)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CompileResult:
    """One profile's outcome: the package written, the candidate chosen, and the plan behind it."""

    profile: str
    runtime: str
    choice: str
    package_path: Path
    size_bytes: int
    reference_size_bytes: int
    manifest: Manifest
    plan: Plan
    notes: tuple[str, ...] = field(default=())
    plot_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "runtime": self.runtime,
            "choice": self.choice,
            "package": str(self.package_path),
            "size_bytes": self.size_bytes,
            "reference_size_bytes": self.reference_size_bytes,
            "signer": self.manifest.signer,
            "pareto_plot": str(self.plot_path) if self.plot_path else None,
            **{k: v for k, v in self.manifest.report.items() if k not in ("profile", "runtime", "chosen")},
        }


def compile_model(
    model_path: Path | str,
    profiles: Sequence[str | Path | HardwareProfile],
    *,
    out_dir: Path | str,
    key_path: Path | str,
    calibration: Path | str | None = None,
    evaluation: Path | str | None = None,
    data: Path | str | None = None,
    labels: Path | str | None = None,
    name: str | None = None,
    version: str = "1",
    budget: Budget = planner.DEFAULT_BUDGET,
    candidates: Sequence[PassConfig] = DEFAULT_CANDIDATES,
    search: SearchOptions | None = None,
    objective: str | None = None,
    corrections: Mapping[str, float] | None = None,
    best_effort: bool = False,
    plot: bool = False,
    evaluator: Evaluator | None = None,
    progress: bool = False,
) -> list[CompileResult]:
    """Compile ``model_path`` for each profile and write one signed package per profile into ``out_dir``.

    ``calibration``: samples for static int8 (``.npz``/``.npy``, see ``calibration``); a quarter is held
    out to measure fidelity unless ``evaluation`` names separate held-out data. Without either, fidelity
    is measured on random inputs and static int8 is skipped. ``data`` is held-out data like
    ``evaluation``, but without ``calibration`` a quarter of it calibrates and the rest measures.
    ``labels`` (``.npy``) adds labels to the held-out data when its file has none.

    Without ``search`` the candidates are the format stages of ``candidates`` (fp32, int8 static and
    dynamic, the LiteRT modes, full-int8 TFLM); with it, ``search.explore`` also tries the structural
    passes' knobs within its time budget. ``objective`` (latency, size or energy) makes the planner
    minimise it (cost-model estimates, scaled by ``corrections`` per profile); without it the fixed
    preference rules apply. ``plot`` writes ``<name>-<profile>-pareto.svg`` next to each package.
    ``evaluator`` (``deploy.fleet_evaluator.FleetEvaluator``, ``local_evaluator.LocalEvaluator``) measures
    the ``evaluator.limit`` best feasible candidates of each profile for real, and the choice then uses
    their measured latency, candidates within measurement noise of the fastest counting as tied
    (``search.noise_aware_choice``).

    Raises ``CompileError`` subclasses (and ``ProfileError`` for an unknown profile); writes nothing
    unless every profile gets a package (or, with ``best_effort``, the least-bad candidate).
    """
    model_path = Path(model_path)
    name = _package_name(name if name is not None else model_path.stem, given=name is not None)
    _check_version(version)
    targets = _resolve_targets(profiles)
    key = _load_key(Path(key_path))

    loaded = load_model(model_path)
    for note in loaded.notes:
        log.info("%s: %s", model_path, note)
    if data is not None and evaluation is not None:
        raise CompileError("give held-out data once: --data or --eval, not both")
    calib, held_out, data_notes = _data(loaded, calibration, evaluation if data is None else data, labels, split=data is not None)
    notes = [*loaded.notes, *data_notes]

    reference = tuple(inference.run_model(loaded.model, list(held_out.feeds()), progress=progress, desc="reference"))
    pass_data = PassData(evaluation=held_out, calibration=calib, reference=reference)
    explored = Exploration()
    while True:
        wanted = _served(targets)
        todo = {r: served for r, served in wanted.items() if r not in explored.measured}
        try:
            more = explore(loaded, pass_data, todo, options=search, budget=budget, legacy=candidates,
                           corrections=corrections, progress=progress)
        except ConversionError as exc:
            if Runtime.LITERT not in todo:
                raise
            targets = [_without_litert(t, exc) for t in targets]
            continue
        explored.measured.update(more.measured)
        explored.skipped.update(more.skipped)
        explored.log.update(more.log)
        break
    measured = {r: [m.candidate for m in by_name.values()] for r, by_name in explored.measured.items()}
    reference_sizes = {r: _reference_size(r, by_name) for r, by_name in explored.measured.items()}

    plans = {
        p.name: planner.plan(measured[exporter.runtime], p, budget=budget, runtime=exporter.runtime.value, carried=exporter.formats,
                             objective=objective, corrections=corrections, best_effort=best_effort)
        for p, exporter, _ in targets
    }
    failed = [plan for plan in plans.values() if plan.chosen is None]
    if failed:
        tables = "\n\n".join(
            report.render(plan, reference_size=reference_sizes[Runtime(plan.runtime)]) for plan in failed
        )
        raise NoCandidateFits(f"no candidate fits {', '.join(p.profile for p in failed)}:\n{tables}", plans=list(plans.values()))

    artifacts = {r: {n: m.artifact for n, m in by_name.items()} for r, by_name in explored.measured.items()}
    extra = {
        "model": {"file": model_path.name, "sha256": file_sha256(model_path)},
        # int8 kernels differ by CPU (see packaging), so fidelity figures name where they were measured.
        "measured_on": {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__,
                        **_litert_version(Runtime.LITERT in artifacts, Runtime.TFLM in artifacts)},
        "evaluation": held_out.describe(),
        "calibration": calib.describe() if calib else None,
        "skipped": explored.skipped,
        "search": explored.log,
    }
    def artifact_of(profile: HardwareProfile, exporter: Exporter, scheme: str) -> tuple[Artifact, Dataset, dict[str, Any]]:
        m = explored.measured[exporter.runtime][scheme]
        if m.artifact is None:
            m = rebuild(loaded, pass_data, m)  # the figures came from the cache; the bytes are made again
        if exporter.runtime is Runtime.LITERT:
            # Package the very bytes that were measured in LiteRT.
            return _tflite_artifact(m.artifact), held_out, {}
        if exporter.runtime is Runtime.TFLM:
            tflm: TFLMCandidate = m.artifact
            # Test vectors hold what the firmware feeds: int8 inputs, and TFLM's int8 outputs.
            return TFLMArtifacts().artifact(tflm, package=name), _quantized(held_out, tflm), _tflm_metrics(tflm, profile)
        return exporter.export(m.artifact.model, loaded.inputs, loaded.outputs), held_out, {}

    latencies: dict[str, dict[str, MeasuredLatency]] = {}
    if evaluator is not None:
        for profile, exporter, _ in targets:
            plan = plans[profile.name]
            trial = sorted((v for v in plan.verdicts if v.feasible), key=lambda v: planner.objective_value(v, objective or "latency"))
            with tempfile.TemporaryDirectory(prefix="edgefleet-measure-") as tmp:
                packages = {}
                for i, v in enumerate(trial[:evaluator.limit]):
                    artifact, vectors, metrics = artifact_of(profile, exporter, v.candidate.scheme)
                    written = _write(plan, v.candidate, artifact, exporter=exporter, held_out=vectors, metrics=metrics,
                                     name=name, version=f"{version}.candidate{i}", out_dir=Path(tmp), key=key,
                                     reference_size=reference_sizes[exporter.runtime], extra={**extra, "notes": notes})
                    packages[v.candidate.scheme] = written.package_path.rename(Path(tmp) / f"candidate{i}.efpkg")
                got = evaluator.measure(profile, packages)
            if got:
                latencies[profile.name] = got
                by_median = planner.plan(
                    measured[exporter.runtime], profile, budget=budget, runtime=exporter.runtime.value, carried=exporter.formats,
                    objective=objective or "latency", corrections=corrections, best_effort=best_effort,
                    measured={s: m.median_ms for s, m in got.items()})
                # Ties within noise are judged on latency; energy and size objectives keep the planner's choice.
                plans[profile.name] = noise_aware(by_median, got, where=evaluator.where) if (objective or "latency") == "latency" else by_median

    out = []
    for profile, exporter, target_notes in targets:
        plan = plans[profile.name]
        assert plan.chosen is not None  # checked above
        artifact, vectors, metrics = artifact_of(profile, exporter, plan.chosen.scheme)
        chosen_verdict = next(v for v in plan.verdicts if v.candidate is plan.chosen)
        cost = {"cost_estimate": chosen_verdict.estimate.to_dict() if chosen_verdict.estimate else None,
                "objective": objective}
        if profile.name in latencies:
            cost["measured_latency"] = {"where": evaluator.where if evaluator else None,
                                        "by_scheme": {s: m.to_dict() for s, m in latencies[profile.name].items()}}
        plot_path = None
        if plot:
            plot_path = report.write_pareto_svg(plan, packaging.package_path(Path(out_dir), name, plan.profile).with_suffix("").with_name(
                f"{name}-{plan.profile}-pareto.svg"))
            cost["pareto_plot"] = plot_path.name
        out.append(
            _write(
                plan, plan.chosen, artifact, exporter=exporter, held_out=vectors, metrics=metrics,
                name=name, version=version, out_dir=Path(out_dir), key=key, reference_size=reference_sizes[exporter.runtime],
                extra={**extra, **cost, "notes": [*notes, *target_notes]}, plot=plot_path,
            )
        )
    return out


def noise_aware(plan: Plan, latencies: Mapping[str, MeasuredLatency], *, where: str) -> Plan:
    """``plan`` (chosen by the lowest measured median) with the choice made by ``search.noise_aware_choice``
    among its feasible measured candidates, their ``pareto`` marks on ``search.noise_tolerant_front`` of
    (measured latency, size, fidelity loss), and a reason that names the ties."""
    by_scheme = {v.candidate.scheme: v for v in plan.verdicts}
    points = {s: MeasuredPoint(m, by_scheme[s].candidate.size_bytes, fidelity_loss(by_scheme[s].candidate.fidelity))
              for s, m in latencies.items() if s in by_scheme and by_scheme[s].feasible}
    if not points:
        return plan
    front = noise_tolerant_front(points)
    pick, tied = noise_aware_choice(points)
    verdicts = tuple(dataclasses.replace(v, pareto=v.candidate.scheme in front) if v.candidate.scheme in points else v
                     for v in plan.verdicts)
    chosen = by_scheme[pick].candidate
    if len(tied) == 1:
        ties = (f"Measured {where}: {pick} {points[pick].latency.describe()} is faster than the other "
                f"{len(points) - 1} measured candidates by more than the measurement noise (95% CIs of the medians).")
    else:
        listed = "; ".join(f"{s} {points[s].latency.describe()}, {human_bytes(points[s].size_bytes)}" for s in tied)
        ties = (f"Measured {where}, {len(tied)} of the {len(points)} measured candidates cannot be told apart from the "
                f"fastest within measurement noise (their 95% CIs overlap its): {listed}. They count as tied, and the "
                f"smallest model, then the lowest fidelity loss, wins: {pick}.")
    reason = (plan.reason + " " + ties if plan.chosen is chosen
              else f"{pick} for {plan.profile}: {ties} By the lowest median alone: {plan.reason}")
    return dataclasses.replace(plan, verdicts=verdicts, chosen=chosen, reason=reason)


def _served(targets: Sequence[tuple[HardwareProfile, Exporter, tuple[str, ...]]]) -> dict[Runtime, list[tuple[HardwareProfile, frozenset[NumberFormat]]]]:
    served: dict[Runtime, list[tuple[HardwareProfile, frozenset[NumberFormat]]]] = {}
    for profile, exporter, _ in targets:
        served.setdefault(exporter.runtime, []).append((profile, exporter.formats))
    return served


def _reference_size(runtime: Runtime, by_name: Mapping[str, Measured]) -> int:
    """The float model's size in the runtime's own format: what 'smaller by' is measured against."""
    if runtime is Runtime.TFLM:
        m = next(iter(by_name.values()))
        return m.artifact.float_size_bytes if m.artifact is not None else m.candidate.size_bytes
    return by_name[planner.REFERENCE].candidate.size_bytes


def _without_litert(
    target: tuple[HardwareProfile, Exporter, tuple[str, ...]], exc: ConversionError
) -> tuple[HardwareProfile, Exporter, tuple[str, ...]]:
    """A LiteRT target whose model does not convert moves to the profile's next runtime, or the error surfaces."""
    profile, exporter, notes = target
    if exporter.runtime is not Runtime.LITERT:
        return target
    for runtime in profile.runtimes:
        fallback = EXPORTERS.get(runtime)
        if runtime is not Runtime.LITERT and fallback is not None:
            note = f"{profile.name} prefers litert, but the model does not convert to TFLite ({exc}); packaging for {runtime.value}"
            log.warning("%s", note)
            return profile, fallback, (*notes, note)
    raise ConversionError(f"{profile.name} runs only {[r.value for r in profile.runtimes]} and the model does not convert to TFLite: {exc}") from exc


def _tflite_artifact(c: LiteRTCandidate) -> Artifact:
    from edgefleet.compiler.tflite.exporter import MODEL_FILE

    return Artifact(runtime=Runtime.LITERT, model_file=MODEL_FILE, files={MODEL_FILE: c.tflite_bytes},
                    inputs=c.inputs, outputs=c.outputs)


def _litert_version(litert: bool, tflm: bool) -> dict[str, str]:
    if not litert and not tflm:
        return {}
    import importlib.metadata

    versions = {"ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
                "ai_edge_quantizer": importlib.metadata.version("ai-edge-quantizer")}
    if tflm:
        versions["tflite_micro"] = importlib.metadata.version("tflite-micro")
    return versions


def _quantized(held_out: Dataset, c: TFLMCandidate) -> Dataset:
    """The held-out samples as the int8 inputs a TFLM model takes (its input specs' scale and zero point)."""
    arrays = {s.name: quantize_array(held_out.arrays[s.name], s) for s in c.inputs}
    return Dataset(arrays=arrays, labels=held_out.labels, synthetic=held_out.synthetic, source=held_out.source)


def _tflm_metrics(c: TFLMCandidate, profile: HardwareProfile) -> dict[str, Any]:
    """What a firmware build needs to know: the arena to reserve and the flash the model takes, against the profile's."""
    return {
        "tflm_arena_bytes": c.arena_bytes,
        "flash_bytes": len(c.tflite_bytes),
        "ram_available_bytes": profile.memory.ram,
        "flash_available_bytes": profile.memory.flash,
        "tflm_max_steps_from_litert": c.max_steps_from_litert,
    }


def _package_name(name: str, *, given: bool) -> str:
    if _NAME.match(name):
        return name
    if given:
        raise CompileError(f"package name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)")
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")[:64] or "model"
    log.info("package name %r derived from the model file name %r", cleaned, name)
    return cleaned


def _check_version(version: str) -> None:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$", version):
        raise CompileError(f"version {version!r} is not allowed: use letters, digits and '.', '_', '+', '-' (e.g. '1' or '2.0.1')")


def _resolve_targets(profiles: Sequence[str | Path | HardwareProfile]) -> list[tuple[HardwareProfile, Exporter, tuple[str, ...]]]:
    """Each distinct profile with its exporter; ProfileError and TargetNotImplemented surface here, before any work."""
    if not profiles:
        raise CompileError("no hardware profile given; name at least one with --profile (`edgefleet profiles` lists them)")
    resolved: dict[str, HardwareProfile] = {}
    for p in profiles:
        profile = p if isinstance(p, HardwareProfile) else load_profile(p)
        resolved.setdefault(profile.name, profile)
    return [(profile, *exporter_for(profile)) for profile in resolved.values()]


def _load_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        raise CompileError(f"{path}: no such signing key; make one with `edgefleet keys generate {path}`")
    try:
        return keys.load_private(path)
    except ValueError as exc:
        raise CompileError(str(exc)) from None


def _data(
    loaded: LoadedModel, calibration_path: Path | str | None, evaluation_path: Path | str | None,
    labels_path: Path | str | None = None,
    *,
    split: bool = False,
) -> tuple[Dataset | None, Dataset, list[str]]:
    """(calibration samples or None, held-out samples, notes for the report)."""
    notes: list[str] = []
    calib = calibration.load_dataset(calibration_path, loaded.inputs) if calibration_path is not None else None
    if evaluation_path is not None:
        held_out = calibration.load_dataset(evaluation_path, loaded.inputs)
        if labels_path is not None:
            held_out = dataclasses.replace(held_out, labels=_labels(Path(labels_path), len(held_out)))
        if calib is None and split:
            calib, held_out = calibration.split(held_out)
            notes.append(f"calibrated on {len(calib)} of the {len(calib) + len(held_out)} --data samples; "
                         f"fidelity measured on the other {len(held_out)}")
    elif labels_path is not None:
        raise CompileError(f"{labels_path}: --labels label the held-out samples; pass them with --data VAL.npz")
    elif calib is not None:
        calib, held_out = calibration.split(calib)
        notes.append(f"held out {len(held_out)} of {len(calib) + len(held_out)} calibration samples to measure fidelity")
    else:
        held_out = calibration.synthetic(loaded.inputs)
    if calib is None:
        message = (
            "no calibration data: static int8 is skipped, and fidelity is measured on random inputs, "
            "which says little about real ones; pass --calibration DATA (an .npz of real input samples)"
            if held_out.synthetic
            else "no calibration data: static int8 is skipped; pass --calibration DATA to try it"
        )
        log.warning("%s", message)
        notes.append(message)
    return calib, held_out, notes


def _labels(path: Path, count: int) -> np.ndarray:
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CompileError(f"{path}: cannot read labels ({exc}); write them with numpy.save as one integer per sample") from None
    if labels.ndim != 1 or len(labels) != count or labels.dtype.kind not in "iu":
        raise CompileError(f"{path}: labels must be {count} integers (one per held-out sample), got {labels.dtype} of shape {list(labels.shape)}")
    return labels


def _write(
    plan: Plan,
    chosen: Candidate,
    artifact: Artifact,
    *,
    exporter: Exporter,
    held_out: Dataset,
    name: str,
    version: str,
    out_dir: Path,
    key: Ed25519PrivateKey,
    reference_size: int,
    extra: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    plot: Path | None = None,
) -> CompileResult:
    manifest, files = packaging.build(
        name=name, version=version, plan=plan, candidate=chosen, artifact=artifact, exporter=exporter,
        held_out=held_out, reference_size=reference_size, extra_report=extra,
    )
    if metrics:
        manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    path = packaging.package_path(out_dir, name, plan.profile)
    signed = write_package(path, manifest, files, key)
    log.info("%s: wrote %s (%s, %d bytes)", plan.profile, path, chosen.scheme, chosen.size_bytes)
    return CompileResult(
        profile=plan.profile,
        runtime=plan.runtime,
        choice=chosen.scheme,
        package_path=path,
        size_bytes=len(artifact.model_bytes),
        reference_size_bytes=reference_size,
        manifest=signed,
        plan=plan,
        notes=tuple(extra["notes"]),
        plot_path=plot,
    )
