"""Compression pipelines: a sequence of pass configs, run in order, measured after every step.

A pipeline is data: a list of frozen ``PassConfig``s, written as a spec string or a YAML file.

    prune:0.5,cluster:16,int8,entropy        Deep Compression (Han et al., 2016) without retraining
    channels:0.375:criterion=variance        structured pruning, 37.5% of channels per layer
    lowrank:0.9,int8                         SVD at 90% energy, then static int8

Each item is ``name[:value...][:key=value...]``: positional values fill the alias's fields in
order, ``key=value`` sets any field of the config. Aliases (``ALIASES``) and the full scheme
names of ``edgefleet.compiler.passes.PASSES`` both work. ``entropy`` is an artifact-level step,
not a model pass, and must come last. A YAML file holds a list whose items are either such
strings or mappings as ``PassConfig.to_dict`` writes them (``{scheme: prune, sparsity: 0.5}``).

``run_pipeline`` runs the passes in order, each measured by ``Pass.__call__`` against its own
input, and adds what a pass report lacks: MACs, and fidelity of the final model against the
original. A failing pass is re-raised as ``PipelineError`` naming the pass, the passes that ran
before it, the node when the pass knows it, and what to try.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edgefleet.compiler import entropy, fidelity, inference, stats
from edgefleet.compiler.entropy import EntropyConfig, EntropyReport
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import (
    PASSES,
    ChannelPruneConfig,
    ClusterConfig,
    DynamicInt8Config,
    LowRankConfig,
    MixedPrecisionConfig,
    PassConfig,
    PassData,
    PassReport,
    PruneConfig,
    StaticInt8Config,
    build_pass,
)
from edgefleet.compiler.passes._graph import NodeError


@dataclass(frozen=True)
class Alias:
    config_type: type[PassConfig]
    positional: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


ALIASES: dict[str, Alias] = {
    "prune": Alias(PruneConfig, ("sparsity",)),
    "nm": Alias(PruneConfig, ("n", "m"), {"n": 2, "m": 4}),
    "channels": Alias(ChannelPruneConfig, ("ratio",)),
    "lowrank": Alias(LowRankConfig, ("energy",)),
    "cluster": Alias(ClusterConfig, ("clusters",)),
    # Per-tensor scales: after clustering, each layer's k centroids then stay k int8 values (per-channel
    # scales would map them to up to k distinct values per channel, which entropy coding pays for).
    "int8": Alias(StaticInt8Config, (), {"per_channel": False}),
    "int8-dynamic": Alias(DynamicInt8Config),
    "mixed": Alias(MixedPrecisionConfig, ("budget",)),
    "entropy": Alias(EntropyConfig, ("level",)),
}

# Why a pass might fail, and what to try, by scheme.
_HINTS = {
    "int8-static": "pass --data with real samples (static int8 calibrates on them), or use int8-dynamic",
    "prune": "lower the sparsity, or set min_params to leave small layers alone",
    "channel-prune": "lower the ratio, or list the layers to prune with layers=NAME",
    "lowrank": "raise energy, or set min_params so small layers are left alone",
    "cluster": "raise clusters",
    "mixed-int8": "pass --data with real samples, lower the budget, or raise max_float_fraction",
}


class PipelineError(PassError):
    """A pass of a pipeline failed: which pass (``pass_name``), after which (``ran``), on which ``node``."""

    def __init__(self, message: str, *, pass_name: str, ran: Sequence[str], node: str | None = None) -> None:
        before = f"after {', '.join(ran)}" if ran else "as the first pass"
        where = f" at node {node!r}" if node else ""
        message = message.replace(f"node {node!r}: ", "") if node else message
        hint = _HINTS.get(pass_name)
        super().__init__(f"failed {before}{where}: {message}" + (f"; try: {hint}" if hint else ""), pass_name=pass_name)
        self.ran = tuple(ran)
        self.node = node


@dataclass(frozen=True)
class StepReport:
    """One pass in a pipeline: its own report (fidelity against its input) plus MACs."""

    report: PassReport
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.report.to_dict(), "macs": self.macs}


@dataclass(frozen=True)
class Baseline:
    params: int
    nonzero_params: int
    macs: int
    size_bytes: int

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Baseline:
        params, nonzero = stats.count_params(model)
        return cls(params=params, nonzero_params=nonzero, macs=stats.count_macs(model), size_bytes=model.ByteSize())


@dataclass(frozen=True)
class PipelineResult:
    model: onnx.ModelProto
    original: Baseline
    steps: tuple[StepReport, ...]
    final: Baseline
    fidelity: fidelity.Fidelity
    """The final model against the original, on the evaluation data."""
    entropy: EntropyReport | None
    configs: tuple[dict[str, Any], ...]

    @property
    def final_bytes(self) -> int:
        """What the artifact costs to ship: entropy-coded when the pipeline ends with ``entropy``."""
        return self.entropy.transfer_bytes if self.entropy is not None else self.final.size_bytes

    @property
    def compression_ratio(self) -> float:
        return self.original.size_bytes / max(1, self.final_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": list(self.configs),
            "original": dataclasses.asdict(self.original),
            "steps": [s.to_dict() for s in self.steps],
            "final": dataclasses.asdict(self.final),
            "fidelity": self.fidelity.to_dict(),
            "entropy": self.entropy.to_dict() if self.entropy is not None else None,
            "final_bytes": self.final_bytes,
            "compression_ratio": round(self.compression_ratio, 2),
        }


def parse_pipeline(spec: str | Path) -> list[PassConfig]:
    """Configs from a spec string (``prune:0.5,cluster:16,int8,entropy``) or a ``.yaml``/``.yml`` file."""
    if isinstance(spec, Path) or str(spec).endswith((".yaml", ".yml")):
        return _from_yaml(Path(spec))
    items = [item.strip() for item in str(spec).split(",") if item.strip()]
    if not items:
        raise ValueError("empty pipeline; write passes separated by commas, e.g. prune:0.5,cluster:16,int8,entropy")
    return _checked([parse_item(item) for item in items])


def parse_item(item: str) -> PassConfig:
    name, *args = item.split(":")
    alias = ALIASES.get(name)
    if alias is None and name in PASSES:
        alias = Alias(PASSES[name].config_type)
    if alias is None:
        known = sorted(set(ALIASES) | set(PASSES))
        raise ValueError(f"unknown pass {name!r} in {item!r}; known: {', '.join(known)}")
    kwargs: dict[str, Any] = dict(alias.fixed)
    positional = [a for a in args if "=" not in a]
    if len(positional) > len(alias.positional):
        raise ValueError(f"{item!r}: {name} takes at most {len(alias.positional)} plain values "
                         f"({', '.join(alias.positional) or 'none'}); set others as key=value")
    kwargs.update(zip(alias.positional, positional, strict=False))
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            kwargs[key] = value
    return _build(alias.config_type, kwargs, where=item)


def _build(config_type: type[PassConfig], kwargs: Mapping[str, Any], *, where: str) -> PassConfig:
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"{where!r}: unknown settings {unknown}; {config_type.scheme} takes {sorted(fields)}")
    values = {k: _coerce(v, fields[k], where=where) for k, v in kwargs.items()}
    try:
        return config_type(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where!r}: {exc}") from None


def _coerce(value: Any, field: dataclasses.Field[Any], *, where: str) -> Any:
    default = field.default
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(v for v in value.split("+") if v)
    except ValueError:
        raise ValueError(f"{where!r}: {field.name}={value!r} is not a {type(default).__name__}") from None
    return value


def _from_yaml(path: Path) -> list[PassConfig]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the pipeline ({exc})") from None
    if not isinstance(loaded, list) or not loaded:
        raise ValueError(f"{path}: a pipeline file is a YAML list of passes, e.g. ['prune:0.5', {{scheme: cluster, clusters: 16}}]")
    configs: list[PassConfig] = []
    for item in loaded:
        if isinstance(item, str):
            configs.append(parse_item(item))
        elif isinstance(item, dict) and "scheme" in item:
            scheme = item["scheme"]
            if scheme == EntropyConfig.scheme:
                config_type: type[PassConfig] = EntropyConfig
            elif scheme in PASSES:
                config_type = PASSES[scheme].config_type
            else:
                raise ValueError(f"{path}: unknown scheme {scheme!r}; known: {sorted({*PASSES, 'entropy'})}")
            rest = {k: v for k, v in item.items() if k not in ("scheme", "version", "number_format")}
            configs.append(_build(config_type, rest, where=f"{path}: {scheme}"))
        else:
            raise ValueError(f"{path}: each item is a spec string or a mapping with a 'scheme', got {item!r}")
    return _checked(configs)


def _checked(configs: list[PassConfig]) -> list[PassConfig]:
    for i, config in enumerate(configs):
        if isinstance(config, EntropyConfig) and i != len(configs) - 1:
            raise ValueError("'entropy' codes the final artifact and must be the last step of the pipeline")
    return configs


def run_pipeline(model: onnx.ModelProto, configs: Sequence[PassConfig], data: PassData) -> PipelineResult:
    """Run ``configs`` in order on ``model``; every step is measured, the end compared with the original."""
    names = [o.name for o in model.graph.output]
    feeds = list(data.evaluation.feeds())
    original = inference.run_model(model, feeds)
    current = model
    reference = tuple(original)
    steps: list[StepReport] = []
    ran: list[str] = []
    coding: EntropyConfig | None = None
    for config in configs:
        if isinstance(config, EntropyConfig):
            coding = config
            continue
        pass_ = build_pass(config.to_dict())
        try:
            result = pass_(current, dataclasses.replace(data, reference=reference))
        except PassError as exc:
            node = next((e.node for e in _causes(exc) if isinstance(e, NodeError)), None)
            reason = str(exc).removeprefix(f"pass {pass_.name!r}: ")
            raise PipelineError(reason, pass_name=pass_.name, ran=ran, node=node) from exc
        ran.append(pass_.name)
        steps.append(StepReport(report=result.report, macs=stats.count_macs(result.model)))
        current = result.model
        reference = tuple(inference.run_model(current, feeds))
    final_fidelity = fidelity.compare(names, original, list(reference), synthetic=data.evaluation.synthetic,
                                      labels=data.evaluation.labels)
    return PipelineResult(
        model=current,
        original=Baseline.of(model),
        steps=tuple(steps),
        final=Baseline.of(current),
        fidelity=final_fidelity,
        entropy=entropy.measure(current, coding) if coding is not None else None,
        configs=tuple(c.to_dict() for c in configs),
    )


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in found:
        found.append(cur)
        cur = cur.__cause__ or cur.__context__
    return found


def compress_file(
    model_path: Path | str,
    spec: str | Path,
    *,
    data: Path | str | None = None,
    calibration: Path | str | None = None,
    out: Path | str | None = None,
) -> PipelineResult:
    """Load a model and data, run the pipeline ``spec``, and write the result to ``out``.

    With ``data`` only, it is split deterministically into calibration and held-out evaluation
    samples (see ``calibration.split``); with ``calibration`` too, ``data`` is all evaluation.
    Without data, fidelity is measured on random inputs and passes that need calibration skip
    their data-driven steps (or fail, for static int8, saying so).
    """
    from edgefleet.compiler import calibration as calib
    from edgefleet.compiler.onnx_model import load_model

    configs = parse_pipeline(Path(spec) if str(spec).endswith((".yaml", ".yml")) else spec)
    loaded = load_model(model_path)
    if data is None:
        evaluation, calibration_data = calib.synthetic(loaded.inputs), None
    elif calibration is None:
        calibration_data, evaluation = calib.split(calib.load_dataset(data, loaded.inputs))
    else:
        evaluation = calib.load_dataset(data, loaded.inputs)
        calibration_data = calib.load_dataset(calibration, loaded.inputs)
    result = run_pipeline(loaded.model, configs, PassData(evaluation=evaluation, calibration=calibration_data))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(result.model, str(out))
    return result
