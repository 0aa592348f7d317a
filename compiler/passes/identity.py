"""The fp32 candidate: the original model, unchanged, measured like every other candidate.

It is a pass so that the baseline goes through the same report, planner and packaging as the
compressed candidates; it also checks that onnxruntime reproduces the model's outputs exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import onnx

from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed
from edgefleet.hardware_profiles.schema import NumberFormat


@dataclass(frozen=True)
class Fp32Config(PassConfig):
    scheme: ClassVar[str] = "fp32"
    number_format: ClassVar[NumberFormat] = NumberFormat.FP32


class KeepFp32(Pass[Fp32Config]):
    config_type = Fp32Config

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        return Transformed(model=copy.deepcopy(model), modified=False, notes=("the original model, as loaded",))
