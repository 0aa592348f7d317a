"""What a compression pass is: a frozen config, a functional transform, and a report of what it did.

A pass takes a model and returns a new model plus a report; it never changes its input. Its
settings are a frozen dataclass (``PassConfig``) that serialises to a plain dict, and that dict is
what the chosen candidate's package manifest carries under ``compression``, so a package says
exactly how its model was made. ``Pass.__call__`` is the same for every pass: check the
preconditions, transform, check the result, then measure it (parameters, size, fidelity against
the pass's own input on held-out data), so no pass can change a model without reporting how much.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnx

from edgefleet.compiler import fidelity, inference, stats
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import CompileError, ModelError, PassError
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassConfig:
    """Settings of one compression scheme. Subclasses are frozen dataclasses with ClassVar metadata."""

    scheme: ClassVar[str]
    """Name in reports and manifests, e.g. ``int8-static``."""
    version: ClassVar[int] = 1
    """Bumped when the same settings would produce a different model, so old manifests stay truthful."""
    number_format: ClassVar[NumberFormat] = NumberFormat.FP32
    """The format the heavy operators compute in, matched against the profile's fast formats."""
    runtime_quantization: ClassVar[bool] = False
    """Whether activations are quantized at inference time, on every call (dynamic quantization)."""

    def to_dict(self) -> dict[str, Any]:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"scheme": self.scheme, "version": self.version, "number_format": self.number_format.value, **fields}


C = TypeVar("C", bound=PassConfig)


@dataclass(frozen=True)
class PassData:
    """The data a pass may use: held-out ``evaluation`` samples, optional ``calibration`` samples,
    and optionally the input model's outputs on ``evaluation`` (so a caller running several passes
    on one model computes them once)."""

    evaluation: Dataset
    calibration: Dataset | None = None
    reference: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True)
class Transformed:
    """What ``Pass.apply`` returns: the new model, whether it differs in substance, and notes for the report."""

    model: onnx.ModelProto
    modified: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassReport:
    pass_name: str
    config: dict[str, Any]
    modified: bool
    params: int
    nonzero_params: int
    size_bytes: int
    input_size_bytes: int
    ram_bytes: int
    fidelity: fidelity.Fidelity
    seconds: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fidelity"] = self.fidelity.to_dict()
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    report: PassReport


# What a transform may raise on a model it cannot handle; anything else is a bug and surfaces as is.
_TRANSFORM_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    NotImplementedError,
    onnx.checker.ValidationError,
    *inference.ORT_ERRORS,
)


class Pass(abc.ABC, Generic[C]):
    """A functional model transform configured by a frozen ``PassConfig``."""

    config_type: ClassVar[type[PassConfig]]

    def __init__(self, config: C | None = None) -> None:
        self.config: C = config if config is not None else self.config_type()  # type: ignore[assignment]

    @property
    def name(self) -> str:
        return self.config.scheme

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        """Raise PassError when the pass cannot run on this model or data. Optional."""

    @abc.abstractmethod
    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        """The transform itself. Must return a new ModelProto and leave ``model`` untouched."""

    def ensures(self, model: onnx.ModelProto) -> None:
        """Every pass must leave a model the ONNX checker accepts."""
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise PassError(f"produced a model the ONNX checker rejects: {exc}", pass_name=self.name) from None

    def __call__(self, model: onnx.ModelProto, data: PassData, *, progress: bool = False) -> PassResult:
        self.requires(model, data)
        start = time.perf_counter()
        try:
            out = self.apply(model, data)
        except CompileError:
            raise
        except _TRANSFORM_ERRORS as exc:
            raise PassError(f"{type(exc).__name__}: {exc}", pass_name=self.name) from exc
        seconds = time.perf_counter() - start
        if out.model is model:
            raise PassError("returned its input model object; passes are functional and must return a copy", pass_name=self.name)
        self.ensures(out.model)
        names = [o.name for o in model.graph.output]
        feeds = list(data.evaluation.feeds())
        reference = list(data.reference) if data.reference is not None else inference.run_model(model, feeds, progress=progress, desc="reference")
        try:
            candidate = inference.run_model(out.model, feeds, progress=progress, desc=self.name)
        except ModelError as exc:
            raise PassError(f"onnxruntime cannot run the result: {exc}", pass_name=self.name) from None
        measured = stats.measure(out.model)
        report = PassReport(
            pass_name=self.name,
            config=self.config.to_dict(),
            modified=out.modified,
            params=measured.params,
            nonzero_params=measured.nonzero_params,
            size_bytes=measured.size_bytes,
            input_size_bytes=model.ByteSize(),
            ram_bytes=measured.ram_bytes,
            fidelity=fidelity.compare(
                names, reference, candidate, synthetic=data.evaluation.synthetic, labels=data.evaluation.labels
            ),
            seconds=round(seconds, 3),
            notes=out.notes,
        )
        log.info("%s: %d -> %d bytes in %.2fs", self.name, report.input_size_bytes, report.size_bytes, seconds)
        return PassResult(model=out.model, report=report)
