"""A TFLite flatbuffer under construction: tensors, constant buffers, operator codes and operators.

``GraphBuilder`` knows nothing about ONNX. It hands out tensor indices, deduplicates operator
codes, stores constants in 16-byte aligned buffers (kernels may read them in place), and
serialises one subgraph with a ``serving_default`` signature through the official schema
bindings (``ai_edge_litert.schema_py_generated``'s object API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

_TYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.int64): schema.TensorType.INT64,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.uint8): schema.TensorType.UINT8,
    np.dtype(np.bool_): schema.TensorType.BOOL,
}


class _AlignedBufferT(schema.BufferT):
    """A buffer whose bytes start on a 16-byte boundary; the generated Pack aligns uint8 data to 1."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        payload: bytes | None = self.data
        data = 0
        if payload is not None:
            builder.StartVector(1, len(payload), 16)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
        schema.BufferStart(builder)
        if payload is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


@dataclass
class GraphBuilder:
    """One TFLite subgraph. Tensor names are made unique; constants with equal bytes share a buffer."""

    tensors: list[schema.TensorT] = field(default_factory=list)
    operators: list[schema.OperatorT] = field(default_factory=list)
    _buffers: list[schema.BufferT] = field(default_factory=lambda: [_AlignedBufferT()])  # buffer 0: no data
    _codes: dict[int, int] = field(default_factory=dict)
    _code_list: list[schema.OperatorCodeT] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)
    _const_cache: dict[tuple[str, tuple[int, ...], bytes], int] = field(default_factory=dict)

    def unique_name(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._names:
            candidate = f"{name}_{n}"
            n += 1
        self._names.add(candidate)
        return candidate

    def tensor(self, name: str, shape: Sequence[int], dtype: np.dtype | type = np.float32) -> int:
        """A new activation tensor; returns its index."""
        dt = np.dtype(dtype)
        if dt not in _TYPES:
            raise ValueError(f"tensor {name!r}: dtype {dt} has no TFLite type here")
        t = schema.TensorT()
        t.name = self.unique_name(name)
        t.shape = [int(d) for d in shape]
        t.type = _TYPES[dt]
        t.buffer = 0
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, value: np.ndarray) -> int:
        """A constant tensor holding ``value`` (int64 becomes int32: TFLite kernels take int32 indices and shapes)."""
        array = np.asarray(value)
        if array.dtype == np.int64:
            array = array.astype(np.int32)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        cached = self._const_cache.get(key)
        if cached is not None:
            return cached
        index = self.tensor(name, array.shape, array.dtype)
        buffer = _AlignedBufferT()
        buffer.data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        self._buffers.append(buffer)
        self.tensors[index].buffer = len(self._buffers) - 1
        self._const_cache[key] = index
        return index

    def shape(self, index: int) -> list[int]:
        return list(self.tensors[index].shape)

    def rename(self, index: int, name: str) -> None:
        old = self.tensors[index].name
        self._names.discard(old)
        self.tensors[index].name = self.unique_name(name)

    def op(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options: object | None = None,
        *,
        version: int = 1,
    ) -> None:
        """Append an operator; ``options`` is a ``*OptionsT`` object, its union type found by name."""
        operator = schema.OperatorT()
        operator.opcodeIndex = self._opcode(code, version)
        operator.inputs = [int(i) for i in inputs]
        operator.outputs = [int(o) for o in outputs]
        if options is not None:
            operator.builtinOptionsType = getattr(schema.BuiltinOptions, type(options).__name__[:-1])
            operator.builtinOptions = options
        self.operators.append(operator)

    def _opcode(self, code: int, version: int) -> int:
        if code in self._codes:
            entry = self._code_list[self._codes[code]]
            entry.version = max(entry.version, version)
            return self._codes[code]
        entry = schema.OperatorCodeT()
        entry.builtinCode = code
        # Codes above 127 live in builtinCode only; the deprecated int8 field holds the placeholder.
        entry.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        entry.version = version
        self._code_list.append(entry)
        self._codes[code] = len(self._code_list) - 1
        return self._codes[code]

    def op_names(self) -> list[str]:
        """The builtin operator name of each operator, in order (for reports and tests)."""
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        return [names[self._code_list[o.opcodeIndex].builtinCode] for o in self.operators]

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], *, description: str) -> bytes:
        """Serialise the model with one subgraph and a ``serving_default`` signature over its inputs and outputs."""
        subgraph = schema.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = list(inputs)
        subgraph.outputs = list(outputs)
        subgraph.operators = self.operators
        subgraph.name = "main"

        signature = schema.SignatureDefT()
        signature.signatureKey = "serving_default"
        signature.subgraphIndex = 0
        signature.inputs = [_tensor_map(self.tensors[i].name, i) for i in inputs]
        signature.outputs = [_tensor_map(self.tensors[i].name, i) for i in outputs]

        model = schema.ModelT()
        model.version = SCHEMA_VERSION
        model.description = description
        model.operatorCodes = self._code_list
        model.subgraphs = [subgraph]
        model.buffers = self._buffers
        model.signatureDefs = [signature]

        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    entry = schema.TensorMapT()
    entry.name = name
    entry.tensorIndex = index
    return entry
