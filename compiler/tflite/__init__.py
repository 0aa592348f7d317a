"""ONNX -> TFLite (float32) without TensorFlow, through the official LiteRT schema bindings.

This package's ``__init__`` is the public face; the converter's parts, one concept each:

    convert.py      convert(model) -> ConversionResult(tflite_bytes, inputs, outputs, report)
    fold.py         static shapes, constant folding, BatchNormalization -> Conv, MatMul+Add -> Gemm
    layout.py       NCHW -> NHWC once per tensor: permutations and axis arithmetic
    context.py      which TFLite tensor holds each ONNX value, in which layout; fused activations
    ops/            the op-type -> converter registry; ops/{nn,elementwise,shape}.py the converters
    builder.py      the TFLite flatbuffer: tensors, aligned buffers, op codes, signature
    verify.py       run LiteRT next to onnxruntime and measure the relative error
    exporter.py     LiteRTExporter: what targets.LiteRTTarget packages and runs
    quantize.py     fp16, dynamic, int8, int16x8 and int4 TFLite with ai-edge-quantizer
    flatbuffer.py   whole-file passes: unshare constants, compact buffers, size breakdown
    candidates.py   the TFLite candidates compile measures for LiteRT profiles
    errors.py       ConversionError, UnsupportedOp

docs/converter.md lists the supported ops, the layout strategy and measured errors.
"""

from edgefleet.compiler.tflite.convert import (
    ConversionReport,
    ConversionResult,
    convert,
    supported_ops,
)
from edgefleet.compiler.tflite.errors import ConversionError, UnsupportedOp

__all__ = ["ConversionError", "ConversionReport", "ConversionResult", "UnsupportedOp", "convert", "supported_ops"]
