"""What the ONNX -> TFLite converter raises.

    CompileError (edgefleet.compiler.errors)
    └── ConversionError      the model as a whole cannot be converted (dynamic shapes, non-float inputs)
        └── UnsupportedOp    one node has an op type or attribute value the converter does not map

Both say where (node name, op type, attribute) and what to try. ``UnsupportedOp`` carries them as
attributes so a caller can list everything a model would need.
"""

from __future__ import annotations

from edgefleet.compiler.errors import CompileError


class ConversionError(CompileError):
    """The model cannot be converted to TFLite as a whole."""


class UnsupportedOp(ConversionError):
    """A node the converter has no mapping for: ``node``, ``op_type`` and, if one is to blame, ``attribute``."""

    def __init__(self, node: str, op_type: str, reason: str = "", *, attribute: str = "") -> None:
        where = f"node {node!r} ({op_type})"
        if attribute:
            where += f", attribute {attribute!r}"
        detail = reason or f"op type {op_type!r} has no TFLite mapping in this converter"
        super().__init__(f"{where}: {detail}; see docs/converter.md for what is supported")
        self.node = node
        self.op_type = op_type
        self.attribute = attribute
