"""ONNX-level preparation before conversion: static shapes, constant folding and two fusions.

``prepare`` returns a ``Prepared`` graph in which

* every input has the static shape given (``input_shapes``) or its symbolic batch fixed to 1,
* ``Constant`` nodes and every node whose inputs are all constant (shape arithmetic such as
  Shape -> Gather -> Concat -> Reshape) are evaluated with ``onnx.reference`` into initializers,
  ``Shape`` of a statically shaped tensor included; folding and shape inference alternate until
  a round folds nothing, so shape arithmetic downstream of a folded Reshape target folds too,
* a ``BatchNormalization`` that is the only consumer of a ``Conv`` with constant weights is folded
  into that Conv's weights and bias,
* ``MatMul`` with a constant 2-D right operand followed by an ``Add`` of a constant vector becomes
  one ``Gemm`` (a FULLY_CONNECTED with bias),
* a 1-D ``Conv``, ``MaxPool``, ``AveragePool`` or global pool (input ``[N, C, L]``) becomes the
  2-D op on ``[N, C, 1, L]`` between two Reshapes, since TFLite has 2-D kernels only,
* the exact GELU that exporters write as ``x * 0.5 * (1 + Erf(x / sqrt(2)))`` becomes one
  ``Gelu`` node in the converter's own domain (``INTERNAL_DOMAIN``), since TFLite has GELU but no Erf,
* every tensor has a static shape from ONNX shape inference.

Each rewrite is listed in ``Prepared.notes``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgefleet.compiler.batchnorm import fold_batchnorm, single_consumer
from edgefleet.compiler.errors import ModelError
from edgefleet.compiler.onnx_model import fix_batch_dimension
from edgefleet.compiler.tflite.errors import ConversionError

# Ops never folded even with constant inputs: random generators, and ops we want to see as such.
INTERNAL_DOMAIN = "edgefleet.tflite"
"""Domain of the nodes ``prepare`` writes for patterns that are one TFLite op (``Gelu``)."""

_MAX_FOLD_ROUNDS = 8
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class Prepared:
    model: onnx.ModelProto
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    constants: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if name in n.input]


def prepare(model: onnx.ModelProto, *, input_shapes: dict[str, list[int]] | None = None) -> Prepared:
    """A statically shaped, constant-folded copy of ``model`` (see the module docstring)."""
    model = _with_input_shapes(model, input_shapes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    notes: list[str] = []
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    shapes = _infer(model)
    folded = 0
    for _ in range(_MAX_FOLD_ROUNDS):
        # A shape computed by one round (a Reshape target) lets inference reach tensors whose
        # Shape -> Gather -> Concat the next round folds; stop when a round folds nothing new.
        newly = _fold_constants(model, constants, shapes, opset)
        folded += newly
        if not newly:
            break
        _rebuild(model, constants, shapes)
        shapes = {**_infer(model), **{k: tuple(v.shape) for k, v in constants.items()}}
    if folded:
        notes.append(f"folded {folded} constant node(s) (shape arithmetic and constant subgraphs)")
    notes += fold_batchnorm(model, constants)
    notes += _spatial_1d_to_2d(model, constants, shapes)
    notes += _matmul_add_to_gemm(model, constants, shapes)
    notes += _fuse_gelu(model, constants, shapes)
    _rebuild(model, constants, shapes)
    shapes = _infer(model)
    dtypes = _dtypes(model)
    for node in model.graph.node:
        for out in node.output:
            if out and out not in shapes:
                raise ConversionError(
                    f"node {node.name or node.op_type!r} ({node.op_type}): output {out!r} has no static shape after "
                    "shape inference; pass --input-shape NAME:DIMS for inputs with dynamic dimensions"
                )
    return Prepared(model=model, shapes=shapes, dtypes=dtypes, constants=constants, notes=notes)


def _with_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    # Inputs that also have an initializer are constants with a default; drop them as inputs.
    if len(graph_inputs) != len(model.graph.input):
        keep = list(graph_inputs)
        del model.graph.input[:]
        model.graph.input.extend(keep)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    if input_shapes:
        names = {vi.name for vi in graph_inputs}
        unknown = sorted(set(input_shapes) - names)
        if unknown:
            raise ConversionError(f"--input-shape names {unknown}, but the model's inputs are {sorted(names)}")
        for vi in graph_inputs:
            if vi.name in input_shapes:
                dims = vi.type.tensor_type.shape.dim
                wanted = [int(d) for d in input_shapes[vi.name]]
                if len(dims) and len(dims) != len(wanted):
                    raise ConversionError(f"input {vi.name!r} has rank {len(dims)}, but --input-shape gives {wanted}")
                vi.type.tensor_type.shape.Clear()
                for d in wanted:
                    vi.type.tensor_type.shape.dim.add().dim_value = d
        # Declared output and intermediate shapes may disagree with the new input shapes: infer them again.
        del model.graph.value_info[:]
        for vi in model.graph.output:
            vi.type.tensor_type.ClearField("shape")
    try:
        model, _ = fix_batch_dimension(model)
    except ModelError as exc:
        raise ConversionError(f"{exc} (or give the shape with --input-shape NAME:DIMS)") from None
    return model


def _infer(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise ConversionError(f"ONNX shape inference failed: {exc}") from None
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = tuple(dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        elem = vi.type.tensor_type.elem_type
        if elem:
            out[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    for init in g.initializer:
        out[init.name] = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    return out


def _fold_constants(
    model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int
) -> int:
    """Evaluate every node whose inputs are all known; returns how many were folded."""
    keep: list[onnx.NodeProto] = []
    folded = 0
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        value: list[np.ndarray] | None = None
        if node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
            value = [np.array(shapes[node.input[0]], dtype=np.int64)]
        elif node.op_type == "Size" and node.input[0] in shapes:
            value = [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
        elif (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NO_FOLD
            and all(i == "" or i in constants for i in node.input)
            and not any(o in outputs for o in node.output)
        ):
            evaluator = ReferenceEvaluator(node, opsets={"": opset})
            feeds = {i: constants[i] for i in node.input if i}
            value = [np.asarray(v) for v in evaluator.run(None, feeds)]
        if value is None:
            keep.append(node)
            continue
        folded += node.op_type != "Constant"
        for name, v in zip(node.output, value, strict=False):
            if name:
                constants[name] = v
                shapes[name] = tuple(v.shape)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return folded


_SPATIAL_1D = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
_WINDOW_ATTRS = {"kernel_shape": 1, "strides": 1, "dilations": 1}
"""Window attributes and the value of the new, leading height entry."""


def _spatial_1d_to_2d(
    model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> list[str]:
    """``op(x [N, C, L])`` -> ``Reshape [N, O, L'] (op2d(Reshape [N, C, 1, L] (x)))`` with a height-1 window."""
    notes = []
    for node in list(model.graph.node):
        if node.op_type not in _SPATIAL_1D or node.domain not in ("", "ai.onnx") or len(shapes.get(node.input[0], ())) != 3:
            continue
        if node.op_type == "Conv" and node.input[1] not in constants:
            continue  # the converter names the node: Conv needs constant weights anyway
        out = node.output[0]
        if out not in shapes or len(node.output) > 1 and any(node.output[1:]):
            continue
        n, c, length = shapes[node.input[0]]
        x4, y4 = f"{node.name}/nc1l", f"{node.name}/nc1l_out"
        constants[f"{x4}/shape"] = np.array([n, c, 1, length], np.int64)
        constants[f"{out}/shape"] = np.array(shapes[out], np.int64)
        for attr in node.attribute:
            if attr.name in _WINDOW_ATTRS:
                attr.ints[:] = [_WINDOW_ATTRS[attr.name], *attr.ints]
            elif attr.name == "pads":
                attr.ints[:] = [0, attr.ints[0], 0, attr.ints[1]]
        if node.op_type == "Conv":
            weight = constants[node.input[1]]
            constants[f"{node.name}/weight_2d"] = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])
            node.input[1] = f"{node.name}/weight_2d"
        index = list(model.graph.node).index(node)
        model.graph.node.insert(index, helper.make_node("Reshape", [node.input[0], f"{x4}/shape"], [x4], name=f"{node.name}/to_2d"))
        model.graph.node.insert(index + 2, helper.make_node("Reshape", [y4, f"{out}/shape"], [out], name=f"{node.name}/to_1d"))
        node.input[0], node.output[0] = x4, y4
        notes.append(f"ran 1-D {node.op_type} {node.name!r} as a 2-D one over a height of 1")
    return notes


def _matmul_add_to_gemm(
    model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> list[str]:
    notes = []
    for mm in list(model.graph.node):
        if mm.op_type != "MatMul" or mm.input[1] not in constants or constants[mm.input[1]].ndim != 2:
            continue
        if len(shapes.get(mm.input[0], ())) != 2:
            continue
        add = single_consumer(model, mm.output[0])
        if add is None or add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        n = constants[mm.input[1]].shape[1]
        if other not in constants or constants[other].size != n or constants[other].shape[-1:] != (n,):
            continue
        bias_name = f"{mm.name}/bias"
        constants[bias_name] = constants[other].reshape(n).astype(np.float32)
        gemm = helper.make_node("Gemm", [mm.input[0], mm.input[1], bias_name], [add.output[0]], name=mm.name)
        index = list(model.graph.node).index(mm)
        model.graph.node.remove(mm)
        model.graph.node.remove(add)
        model.graph.node.insert(index, gemm)
        notes.append(f"fused MatMul {mm.name!r} and Add {add.name!r} into one fully connected layer")
    return notes


def _fuse_gelu(model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5`` (or with ``Mul(x, 0.5)`` first) -> one Gelu node."""
    notes = []

    def scalar(name: str, value: float) -> bool:
        return name in constants and constants[name].size == 1 and abs(float(constants[name].reshape(-1)[0]) - value) < 1e-3

    for erf in [n for n in model.graph.node if n.op_type == "Erf"]:
        producers = {o: n for n in model.graph.node for o in n.output}
        scaled = producers.get(erf.input[0])
        if scaled is None or single_consumer(model, scaled.output[0]) is not erf:
            continue
        if (scaled.op_type == "Div" and scalar(scaled.input[1], float(np.sqrt(2)))
                or scaled.op_type == "Mul" and scalar(scaled.input[1], float(np.sqrt(0.5)))):
            x = scaled.input[0]
        elif scaled.op_type == "Mul" and scalar(scaled.input[0], float(np.sqrt(0.5))):
            x = scaled.input[1]
        else:
            continue
        add = single_consumer(model, erf.output[0])
        if add is None or add.op_type != "Add" or not any(scalar(i, 1.0) for i in add.input):
            continue
        mul = single_consumer(model, add.output[0])
        if mul is None or mul.op_type != "Mul":
            continue
        other = mul.input[1] if mul.input[0] == add.output[0] else mul.input[0]
        half = producers.get(other)
        if other == x:
            last = single_consumer(model, mul.output[0])
            if last is None or last.op_type != "Mul" or not any(scalar(i, 0.5) for i in last.input):
                continue
            group = [scaled, erf, add, mul, last]
        elif (half is not None and half.op_type == "Mul" and x in half.input and any(scalar(i, 0.5) for i in half.input)
              and single_consumer(model, half.output[0]) is mul):
            group, last = [half, scaled, erf, add, mul], mul
        else:
            continue
        out = last.output[0]
        gelu = helper.make_node("Gelu", [x], [out], name=f"{erf.name}/gelu", domain=INTERNAL_DOMAIN)
        index = list(model.graph.node).index(last)
        model.graph.node.insert(index, gelu)
        for node in group:
            model.graph.node.remove(node)
        notes.append(f"fused the Erf GELU pattern around {erf.name!r} into one GELU")
    if notes and not any(o.domain == INTERNAL_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(INTERNAL_DOMAIN, 1))
    return notes


def _rebuild(model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """Initializers become exactly the constants still used (folded intermediates included)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    del model.graph.initializer[:]
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items() if k in used)
    # Stale intermediate annotations would contradict folded shapes; inference recomputes them,
    # except through our own nodes, which have no schema: their (elementwise) outputs are declared.
    del model.graph.value_info[:]
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.domain == INTERNAL_DOMAIN and node.output[0] not in outputs:
            model.graph.value_info.append(
                helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, list(shapes[node.input[0]]))
            )
