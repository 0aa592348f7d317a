"""Folding an inference-mode BatchNormalization into the Conv before it, on an ONNX graph.

Shared by the TFLite converter's graph preparation (``compiler.tflite.fold``) and the int8
quantization passes (``compiler.passes.quantize``): a BatchNormalization left standing after a
Conv is an extra float operator in both, and in a QDQ graph it sits between its own
DequantizeLinear/QuantizeLinear pair, so onnxruntime cannot fuse the Conv into an int8 kernel.
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np
import onnx


def single_consumer(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    """The one node that reads tensor ``name``, or None if several do or it is a graph output."""
    users = [n for n in model.graph.node if name in n.input]
    if len(users) != 1 or name in {o.name for o in model.graph.output}:
        return None
    return users[0]


def foldable_batchnorm(model: onnx.ModelProto, conv: onnx.NodeProto, constants: Container[str]) -> onnx.NodeProto | None:
    """The BatchNormalization ``fold_batchnorm`` folds into ``conv``, or None: it alone reads the
    output of a Conv (or group-1 ConvTranspose) with constant weights, and its parameters are constant."""
    if conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) < 2 or conv.input[1] not in constants:
        return None
    if conv.op_type == "ConvTranspose" and any(a.name == "group" and a.i != 1 for a in conv.attribute):
        return None
    bn = single_consumer(model, conv.output[0])
    if bn is None or bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
        return None
    return bn if all(i in constants for i in bn.input[1:5]) else None


def fold_batchnorm(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> list[str]:
    """Fold each BatchNormalization that alone consumes a Conv (or group-1 ConvTranspose) with constant weights.

    ``constants`` maps initializer names to values; the folded weight and bias are added to it
    (the caller writes them back as initializers) and the Conv node is rewired to them in place.
    Returns one note per fold.
    """
    notes = []
    for conv in list(model.graph.node):
        bn = foldable_batchnorm(model, conv, constants)
        if bn is None:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (constants[i].astype(np.float64) for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + eps)
        w = constants[conv.input[1]].astype(np.float64)
        if conv.op_type == "Conv":
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        else:  # ConvTranspose weights are [C_in, C_out/group, ...]; only group 1 is folded
            w = w * scale.reshape(1, -1, *([1] * (w.ndim - 2)))
        b = constants[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
        b = (b - mean) * scale + beta
        # Exporters may leave nodes unnamed; the output tensor name is unique either way.
        prefix = conv.name or conv.output[0]
        w_name, b_name = f"{prefix}/folded_weight", f"{prefix}/folded_bias"
        constants[w_name] = w.astype(np.float32)
        constants[b_name] = b.astype(np.float32)
        x = conv.input[0]
        del conv.input[:]
        conv.input.extend([x, w_name, b_name])
        conv.output[0] = bn.output[0]
        model.graph.node.remove(bn)
        notes.append(f"folded BatchNormalization {bn.name or bn.output[0]!r} into {conv.op_type} {prefix!r}")
    return notes
