"""``compile_model``: from an ONNX file to one signed package per hardware profile.

The steps, each in its own module:

1. resolve the profiles and their runtime targets (fail before any work if one cannot be served),
2. load and check the model, fixing a symbolic batch dimension to 1 (``onnx_model``),
3. load calibration data and split off held-out samples, or fall back to random inputs (``calibration``),
4. run every candidate pass on the original model and measure it (``passes``); when a profile is
   served by LiteRT, also convert the model to TFLite, quantize it with ai-edge-quantizer and
   measure each TFLite candidate in LiteRT (``tflite.candidates``); when a profile is a
   microcontroller (TFLite Micro), make the full-integer int8 TFLite model and measure its
   fidelity, tensor arena and flash in TFLM (``tflm.candidates``),
5. choose a candidate per profile among its runtime's candidates (``planner``), and fail if any
   profile has none,
6. export, attach test vectors, sign and write ``OUT/<name>-<profile>.efpkg`` (``targets``, ``packaging``).

Candidates do not depend on the profile (the same int8 model serves every onnxruntime device), so
they are computed once per runtime and judged per profile. ``candidates`` mixes both families:
ONNX passes (``passes.PASSES``) for onnxruntime, ``LiteRTConfig``s for LiteRT; fp32 is the
reference of both.
"""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import keys
from edgefleet.agent.package import Manifest, file_sha256, write_package
from edgefleet.compiler import calibration, inference, packaging, planner, report
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import CompileError, NoCandidateFits, PassError
from edgefleet.compiler.onnx_model import LoadedModel, load_model
from edgefleet.compiler.passes import PASSES, Fp32Config, PassConfig, PassData, PassResult
from edgefleet.compiler.passes.quantize import DynamicInt8Config, StaticInt8Config
from edgefleet.compiler.planner import Budget, Candidate, Plan
from edgefleet.compiler.targets import EXPORTERS, Artifact, Exporter, exporter_for
from edgefleet.compiler.tflite.candidates import DEFAULT_LITERT_CANDIDATES, LiteRTCandidate, litert_candidates
from edgefleet.compiler.tflite.errors import ConversionError
from edgefleet.compiler.tflm.candidates import TFLMCandidate, quantize_array, tflm_candidate
from edgefleet.compiler.tflm.target import TFLMTarget as TFLMArtifacts
from edgefleet.hardware_profiles import HardwareProfile, load_profile
from edgefleet.hardware_profiles.schema import Runtime

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "runtime": self.runtime,
            "choice": self.choice,
            "package": str(self.package_path),
            "size_bytes": self.size_bytes,
            "reference_size_bytes": self.reference_size_bytes,
            "signer": self.manifest.signer,
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
    name: str | None = None,
    version: str = "1",
    budget: Budget = planner.DEFAULT_BUDGET,
    candidates: Sequence[PassConfig] = DEFAULT_CANDIDATES,
    progress: bool = False,
) -> list[CompileResult]:
    """Compile ``model_path`` for each profile and write one signed package per profile into ``out_dir``.

    ``calibration``: samples for static int8 (``.npz``/``.npy``, see ``calibration``); a quarter is held
    out to measure fidelity unless ``evaluation`` names separate held-out data. Without either, fidelity
    is measured on random inputs and static int8 is skipped. Raises ``CompileError`` subclasses (and
    ``ProfileError`` for an unknown profile); writes nothing unless every profile gets a package.
    """
    model_path = Path(model_path)
    name = _package_name(name if name is not None else model_path.stem, given=name is not None)
    _check_version(version)
    targets = _resolve_targets(profiles)
    key = _load_key(Path(key_path))

    loaded = load_model(model_path)
    for note in loaded.notes:
        log.info("%s: %s", model_path, note)
    calib, held_out, data_notes = _data(loaded, calibration, evaluation)
    notes = [*loaded.notes, *data_notes]

    reference = tuple(inference.run_model(loaded.model, list(held_out.feeds()), progress=progress, desc="reference"))
    data = PassData(evaluation=held_out, calibration=calib, reference=reference)
    onnx_configs = [c for c in candidates if c.scheme in PASSES]
    results, skipped = _run_candidates(loaded, data, onnx_configs, progress=progress)
    measured = {Runtime.ONNXRUNTIME: [_candidate(r) for r in results.values()]}
    reference_sizes = {Runtime.ONNXRUNTIME: results[planner.REFERENCE].report.size_bytes}
    tflite: dict[str, LiteRTCandidate] = {}
    if any(exporter.runtime is Runtime.LITERT for _, exporter, _ in targets):
        fp32 = _candidate(results[planner.REFERENCE])
        try:
            tflite, litert_skipped = litert_candidates(fp32, loaded.model, loaded.inputs, data, candidates)
        except ConversionError as exc:
            targets = [_without_litert(t, exc) for t in targets]
        else:
            skipped.update(litert_skipped)
            measured[Runtime.LITERT] = [c.candidate for c in tflite.values()]
            reference_sizes[Runtime.LITERT] = tflite[planner.REFERENCE].candidate.size_bytes
    tflm: TFLMCandidate | None = None
    if any(exporter.runtime is Runtime.TFLM for _, exporter, _ in targets):
        tflm = tflm_candidate(_candidate(results[planner.REFERENCE]), loaded.model, loaded.inputs, data)
        measured[Runtime.TFLM] = [tflm.candidate]
        reference_sizes[Runtime.TFLM] = tflm.float_size_bytes

    plans = {
        p.name: planner.plan(measured[exporter.runtime], p, budget=budget, runtime=exporter.runtime.value, carried=exporter.formats)
        for p, exporter, _ in targets
    }
    failed = [plan for plan in plans.values() if plan.chosen is None]
    if failed:
        tables = "\n\n".join(
            report.render(plan, reference_size=reference_sizes[Runtime(plan.runtime)]) for plan in failed
        )
        raise NoCandidateFits(f"no candidate fits {', '.join(p.profile for p in failed)}:\n{tables}", plans=list(plans.values()))

    extra = {
        "model": {"file": model_path.name, "sha256": file_sha256(model_path)},
        # int8 kernels differ by CPU (see packaging), so fidelity figures name where they were measured.
        "measured_on": {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__, **_litert_version(tflite, tflm)},
        "evaluation": held_out.describe(),
        "calibration": calib.describe() if calib else None,
        "skipped": skipped,
    }
    out = []
    for profile, exporter, target_notes in targets:
        plan = plans[profile.name]
        assert plan.chosen is not None  # checked above
        vectors, metrics = held_out, {}
        if exporter.runtime is Runtime.LITERT:
            # Package the very bytes that were measured in LiteRT.
            chosen = tflite[plan.chosen.scheme]
            artifact = _tflite_artifact(chosen)
        elif exporter.runtime is Runtime.TFLM:
            assert tflm is not None
            artifact = TFLMArtifacts().artifact(tflm, package=name)
            # Test vectors hold what the firmware feeds: int8 inputs, and TFLM's int8 outputs.
            vectors = _quantized(held_out, tflm)
            metrics = _tflm_metrics(tflm, profile)
        else:
            artifact = exporter.export(results[plan.chosen.scheme].model, loaded.inputs, loaded.outputs)
        out.append(
            _write(
                plan, plan.chosen, artifact, exporter=exporter, held_out=vectors, metrics=metrics,
                name=name, version=version, out_dir=Path(out_dir), key=key, reference_size=reference_sizes[exporter.runtime],
                extra={**extra, "notes": [*notes, *target_notes]},
            )
        )
    return out


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


def _litert_version(tflite: dict[str, LiteRTCandidate], tflm: TFLMCandidate | None = None) -> dict[str, str]:
    if not tflite and tflm is None:
        return {}
    import importlib.metadata

    versions = {"ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
                "ai_edge_quantizer": importlib.metadata.version("ai-edge-quantizer")}
    if tflm is not None:
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
    loaded: LoadedModel, calibration_path: Path | str | None, evaluation_path: Path | str | None
) -> tuple[Dataset | None, Dataset, list[str]]:
    """(calibration samples or None, held-out samples, notes for the report)."""
    notes: list[str] = []
    calib = calibration.load_dataset(calibration_path, loaded.inputs) if calibration_path is not None else None
    if evaluation_path is not None:
        held_out = calibration.load_dataset(evaluation_path, loaded.inputs)
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


def _run_candidates(
    loaded: LoadedModel, data: PassData, configs: Sequence[PassConfig], *, progress: bool
) -> tuple[dict[str, PassResult], dict[str, str]]:
    """Every candidate's PassResult by scheme, and the schemes skipped with the reason."""
    from tqdm import tqdm

    if not any(isinstance(c, Fp32Config) for c in configs):
        configs = (Fp32Config(), *configs)  # the reference every ratio and choice is measured against
    results: dict[str, PassResult] = {}
    skipped: dict[str, str] = {}
    for config in tqdm(configs, desc="candidates", unit="pass", disable=not progress):
        pass_ = PASSES[config.scheme](config)
        if isinstance(config, StaticInt8Config) and data.calibration is None:
            skipped[config.scheme] = "no calibration data"
            continue
        try:
            results[config.scheme] = pass_(loaded.model, data, progress=progress)
        except PassError as exc:
            if isinstance(config, Fp32Config):
                raise
            # One technique failing on this model should not stop the others; the report says why.
            log.warning("%s", exc)
            skipped[config.scheme] = str(exc)
    return results, skipped


def _candidate(result: PassResult) -> Candidate:
    r = result.report
    config_type = PASSES[r.pass_name].config_type
    return Candidate(
        scheme=r.pass_name,
        config=r.config,
        number_format=config_type.number_format,
        runtime_quantization=config_type.runtime_quantization,
        modified=r.modified,
        params=r.params,
        nonzero_params=r.nonzero_params,
        size_bytes=r.size_bytes,
        ram_bytes=r.ram_bytes,
        fidelity=r.fidelity,
        notes=r.notes,
    )


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
    )
