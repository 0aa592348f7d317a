"""``convert``: an ONNX model to a float32 TFLite flatbuffer, without TensorFlow.

    prepared = prepare(model)             static shapes, constant folding, BN -> Conv, MatMul+Add -> Gemm
    for node in prepared graph:          one converter per op type (ops/*.py), layout tracked per tensor
    graph outputs in ONNX layout         a TRANSPOSE back only where an output is NHWC
    builder.finish()                     one subgraph, signature ``serving_default``

Inputs and outputs keep the ONNX model's names, shapes (NCHW for images) and dtypes, so a
package's TensorSpecs are the same for onnxruntime and LiteRT; a TRANSPOSE (or a RESHAPE, when
the channel count is 1) after each image input turns it into NHWC once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.tflite import layout, ops
from edgefleet.compiler.tflite.context import Context
from edgefleet.compiler.tflite.errors import ConversionError, UnsupportedOp
from edgefleet.compiler.tflite.fold import INTERNAL_DOMAIN, prepare

log = logging.getLogger(__name__)

_INPUT_DTYPES = (np.float32,)
# Ops with no converter that preparation may remove: constant folding when their inputs are static
# (shape arithmetic). Whatever is left is reported after preparation.
_FOLDED_AWAY = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Not", "Less",
                "Greater", "Floor", "Ceil"}


@dataclass(frozen=True)
class ConversionReport:
    operators: int
    op_counts: dict[str, int]
    transposes: int
    """TRANSPOSE operators inserted for layout changes (graph inputs, outputs, order-sensitive ops)."""
    size_bytes: int
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "operators": self.operators,
            "op_counts": dict(self.op_counts),
            "transposes": self.transposes,
            "size_bytes": self.size_bytes,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ConversionResult:
    tflite_bytes: bytes
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    report: ConversionReport


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) the converter maps."""
    return sorted(ops.load_all())


def convert(model: onnx.ModelProto, *, input_shapes: dict[str, list[int]] | None = None) -> ConversionResult:
    """Convert ``model`` to TFLite (float32). Raises ``UnsupportedOp`` or ``ConversionError``.

    ``input_shapes`` fixes input shapes by name; without it a symbolic batch dimension becomes 1
    and any other dynamic dimension is an error.
    """
    converters = ops.load_all()
    _check_supported(model, converters, ignore=_FOLDED_AWAY)  # fail fast, before folding
    prepared = prepare(model, input_shapes=input_shapes)
    _check_supported(prepared.model, converters)
    ctx = Context(prepared)
    graph = prepared.model.graph

    inputs: list[int] = []
    input_specs: list[TensorSpec] = []
    for vi in graph.input:
        dtype = prepared.dtypes.get(vi.name)
        if dtype not in _INPUT_DTYPES:
            raise ConversionError(f"input {vi.name!r} is {dtype}; only float32 inputs are supported")
        shape = list(prepared.shapes[vi.name])
        inputs.append(ctx.new(vi.name, layout.ONNX, shape))
        input_specs.append(TensorSpec(name=vi.name, shape=shape, dtype="float32"))

    for node in graph.node:
        if node.name in ctx.skipped:
            continue
        try:
            converters[node.op_type](ctx, node)
        except UnsupportedOp:
            raise
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ConversionError(f"node {node.name!r} ({node.op_type}): {type(exc).__name__}: {exc}") from exc

    outputs, output_specs = _outputs(ctx)
    data = ctx.graph.finish(inputs, outputs, description="edgefleet ONNX->TFLite converter")
    names = ctx.graph.op_names()
    report = ConversionReport(
        operators=len(names),
        op_counts=dict(sorted(Counter(names).items())),
        transposes=names.count("TRANSPOSE"),
        size_bytes=len(data),
        notes=tuple(prepared.notes),
    )
    log.info("converted %s: %d operators, %d bytes", graph.name, report.operators, report.size_bytes)
    return ConversionResult(tflite_bytes=data, inputs=input_specs, outputs=output_specs, report=report)


def _check_supported(model: onnx.ModelProto, converters: dict[str, ops.Converter], ignore: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Raise UnsupportedOp for the first node whose op type has no converter, listing all such types."""
    missing = [
        (i, n) for i, n in enumerate(model.graph.node)
        if n.domain not in ("", "ai.onnx", INTERNAL_DOMAIN) or (n.op_type not in converters and n.op_type not in ignore)
    ]
    if not missing:
        return
    i, node = missing[0]
    others = sorted({n.op_type for _, n in missing[1:]} - {node.op_type})
    domain = f" in domain {node.domain!r}" if node.domain not in ("", "ai.onnx", INTERNAL_DOMAIN) else ""
    reason = f"op type {node.op_type!r}{domain} has no TFLite mapping in this converter"
    if others:
        reason += f" (also unsupported in this model: {', '.join(others)})"
    raise UnsupportedOp(node.name or f"{node.op_type}_{i}", node.op_type, reason)


def _outputs(ctx: Context) -> tuple[list[int], list[TensorSpec]]:
    indices: list[int] = []
    specs: list[TensorSpec] = []
    graph_inputs = {vi.name for vi in ctx.prepared.model.graph.input}
    for vi in ctx.prepared.model.graph.output:
        name = vi.name
        if ctx.is_const(name):
            raise ConversionError(f"output {name!r} is a constant; TFLite outputs must be computed")
        index = ctx.get(name, layout.ONNX)
        if index in indices or name in graph_inputs:
            # The same tensor twice, or an input passed through: give the output its own tensor.
            copy = ctx.graph.tensor(name, ctx.graph.shape(index), ctx.dtype(name))
            ctx.reshape(index, copy)
            index = copy
        tensor = ctx.graph.tensors[index]
        if tensor.name != name:
            for other in ctx.graph.tensors:
                if other.name == name:
                    ctx.graph.rename(ctx.graph.tensors.index(other), f"{name}/internal")
            ctx.graph.rename(index, name)
        indices.append(index)
        specs.append(TensorSpec(name=name, shape=list(ctx.shape(name)), dtype=str(ctx.dtype(name))))
    return indices, specs
