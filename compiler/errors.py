"""The compiler's exceptions, and what a caller should do about each.

    CompileError
    ├── ModelError            the input model cannot be loaded, checked or given static shapes
    ├── CalibrationError      calibration or evaluation data does not fit the model's inputs
    ├── TargetNotImplemented  the profile's runtimes have no exporter yet (TFLite, TFLite Micro)
    ├── PassError             a compression pass failed on this model; names the pass
    └── NoCandidateFits       every candidate misses the fidelity budget or the profile's limits

Every message says what is wrong, where (file, input, profile, pass), and what to try. The CLI
turns these into user-facing errors; library callers (the demo) can catch them by type and read
the structured attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.compiler.planner import Plan


class CompileError(Exception):
    """Base class of everything the compiler raises on purpose."""


class ModelError(CompileError):
    """The model file is missing, is not ONNX, fails the checker, or has shapes we cannot fix."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class CalibrationError(CompileError):
    """Calibration or evaluation data that does not match the model's inputs."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class TargetNotImplemented(CompileError):
    """No exporter exists yet for any runtime the profile lists."""

    def __init__(self, message: str, *, profile: str, runtimes: Sequence[str]) -> None:
        super().__init__(message)
        self.profile = profile
        self.runtimes = tuple(runtimes)


class PassError(CompileError):
    """A pass cannot run on this model or data, or produced something unusable; ``pass_name`` says which."""

    def __init__(self, message: str, *, pass_name: str) -> None:
        super().__init__(f"pass {pass_name!r}: {message}")
        self.pass_name = pass_name


class NoCandidateFits(CompileError):
    """For at least one profile, no candidate met both the fidelity budget and the profile's limits."""

    def __init__(self, message: str, *, plans: Sequence[Plan]) -> None:
        super().__init__(message)
        self.plans = tuple(plans)
