"""Loading the model to compile: an ONNX file with static shapes, or a clear error saying why not.

A package promises a device fixed input and output shapes (``TensorSpec.shape`` is static), and
quantization calibrates on concrete tensors, so every dimension must be known. Exporters usually
leave the batch dimension symbolic (``batch``, ``N``); a device runs one sample at a time, so a
symbolic *batch* dimension is fixed to 1 here, and the fix is recorded in ``LoadedModel.notes`` for
the report. Any other dynamic dimension (sequence length, image size) is a decision only the
model's author can make, so it is an error that says how to re-export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.errors import ModelError

_RE_EXPORT = (
    "re-export it with static shapes (torch.onnx.export with a fixed-size example input and no dynamic_axes "
    "for that dimension)"
)


@dataclass(frozen=True)
class LoadedModel:
    """A checked model with static shapes, its interface, and what loading changed."""

    model: onnx.ModelProto
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    notes: tuple[str, ...] = ()


def load_model(path: Path | str) -> LoadedModel:
    """Read, check and fix the batch dimension of the ONNX model at ``path``.

    Raises ModelError for a missing file, bytes that are not an ONNX model, a model the ONNX
    checker rejects, or a dynamic dimension other than the batch.
    """
    path = Path(path)
    if not path.is_file():
        hint = "it is a directory; pass the .onnx file inside it" if path.is_dir() else "check the path"
        raise ModelError(f"no such model file ({hint})", path=str(path))
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError) as exc:
        raise ModelError(f"not an ONNX model: the protobuf does not parse ({exc}); export the model to ONNX first", path=str(path)) from None
    except OSError as exc:
        raise ModelError(f"cannot read the model ({exc})", path=str(path)) from None
    return prepare(model, path=path)


def prepare(model: onnx.ModelProto, *, path: Path = Path("<memory>")) -> LoadedModel:
    """Check an in-memory model and give it static shapes (``load_model`` without the file)."""
    where = str(path)
    # Random bytes sometimes parse as an (almost) empty protobuf; that is not a model either.
    if not model.opset_import or not model.graph.node:
        raise ModelError("not an ONNX model: no graph nodes or no opset; export the model to ONNX first", path=where)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the ONNX checker rejects the model: {first}; re-export it or fix the graph", path=where) from None
    fixed, notes = fix_batch_dimension(model, where=where)
    inputs = tuple(_spec(vi, where=where, role="input") for vi in graph_inputs(fixed))
    outputs = tuple(_spec(vi, where=where, role="output") for vi in fixed.graph.output)
    return LoadedModel(model=fixed, path=path, inputs=inputs, outputs=outputs, notes=tuple(notes))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not also initializers (IR < 4 lists weights as inputs)."""
    weights = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def fix_batch_dimension(model: onnx.ModelProto, *, where: str = "") -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose symbolic batch dimensions are 1, and a note per change.

    Only axis 0 of an input is treated as a batch; any other dynamic dimension raises ModelError.
    Output shapes are then re-inferred, because a declared output ``[N, 10]`` must become ``[1, 10]``.
    """
    out = copy.deepcopy(model)
    notes: list[str] = []
    fixed_params: set[str] = set()
    for vi in graph_inputs(out):
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input {vi.name!r} is not a tensor; only tensor inputs can be packaged", path=where)
        if not vi.type.tensor_type.HasField("shape"):
            raise ModelError(f"input {vi.name!r} has no shape; {_RE_EXPORT}", path=where)
        dims = vi.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            label = repr(dim.dim_param) if dim.dim_param else "an unnamed dynamic dimension"
            if axis != 0:
                raise ModelError(f"input {vi.name!r} has {label} at axis {axis}; {_RE_EXPORT}", path=where)
            if dim.dim_param:
                fixed_params.add(dim.dim_param)
            dim.Clear()
            dim.dim_value = 1
            notes.append(f"fixed the batch dimension ({label}) of input {vi.name!r} to 1")
    if not notes:
        return out, notes
    # The batch parameter names the same dimension everywhere, so outputs and intermediates follow it.
    for vi in [*out.graph.output, *out.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in fixed_params:
                dim.Clear()
                dim.dim_value = 1
    # An output left dynamic (an unnamed dim, or one derived from the batch) gets its inferred shape.
    dynamic_outputs = [vi for vi in out.graph.output if not _is_static(vi)]
    if dynamic_outputs:
        for vi in dynamic_outputs:
            vi.type.tensor_type.ClearField("shape")
        inferred = onnx.shape_inference.infer_shapes(out)
        shapes = {vi.name: vi for vi in inferred.graph.output}
        for vi in dynamic_outputs:
            vi.type.tensor_type.CopyFrom(shapes[vi.name].type.tensor_type)
    return out, notes


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    return t.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim)


def _spec(vi: onnx.ValueInfoProto, *, where: str, role: str) -> TensorSpec:
    if not _is_static(vi):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        raise ModelError(
            f"{role} {vi.name!r} has shape {dims} even with the batch fixed to 1; packages need static shapes, so {_RE_EXPORT}",
            path=where,
        )
    return TensorSpec(
        name=vi.name,
        shape=[d.dim_value for d in vi.type.tensor_type.shape.dim],
        dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)).name,
    )
