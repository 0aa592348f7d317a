"""Whole-file passes on a TFLite flatbuffer, through the schema object API: sharing, compaction, size accounting.

    unshare_constants(data)  -> bytes           each operator input gets its own constant tensor, each table its own vectors
    compact(data)            -> (bytes, Compaction)   drop unreferenced buffers, merge equal ones, strip min/max
    size_breakdown(data)     -> SizeBreakdown  where a file's bytes go
    pack(model)              -> bytes           serialise a ``ModelT``: 16-byte aligned buffers, equal
                                                vectors and quantization tables stored once

Why ``unshare_constants``: the converter stores an equal constant once and lets every consumer
read the same tensor (the zero bias of several convolutions, a shape used twice). After
quantization those consumers need different data (a bias is quantized with its own layer's input
and weight scales), and ai-edge-quantizer's duplication of shared tensors writes graphs LiteRT
cannot run ("Input tensor N lacks data", scale ranks that do not match). Giving each use its own
tensor and buffer before quantizing avoids that; ``compact`` merges buffers that are still equal
afterwards, so the file does not keep two copies of the same bytes.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.tflite.builder import FILE_IDENTIFIER, _AlignedBufferT

_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def load(data: bytes) -> schema.ModelT:
    """The object tree of ``data``, with every buffer's bytes inline.

    Writers may keep large buffers after the flatbuffer and point at them with ``offset``/``size``
    (ai-edge-quantizer does for big weights); the object API does not read those bytes, so a
    repacked model would lose them. Inlining them keeps every pass here a plain object edit.

    The tree's arrays are read-only views of ``data``: a vector the file stores once for several
    tables is one memory for all of them, so a pass must assign new values, never edit in place.
    """
    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    for buf in model.buffers:
        if buf.offset > 1:  # offset 1 is the schema's "empty" marker
            buf.data = bytes(data[buf.offset : buf.offset + buf.size])
            buf.offset = buf.size = 0
    return model


def _payload(buffer: schema.BufferT) -> bytes | None:
    data = buffer.data
    if data is None or len(data) == 0:
        return None
    return data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8).tobytes()


def pack(model: schema.ModelT, *, share: bool = True) -> bytes:
    """Serialise ``model``; every constant buffer starts on a 16-byte boundary (kernels may read it in place).

    With ``share``, equal numeric vectors and equal quantization tables are written once (see
    ``_SharingBuilder``); without, every table gets its own copy, as the generated Pack writes them.
    ``model`` is normalised in place: buffers become aligned ones, numeric lists become arrays.
    """
    for i, buf in enumerate(model.buffers):
        aligned = _AlignedBufferT()
        aligned.data = _payload(buf)
        aligned.offset, aligned.size = buf.offset, buf.size
        model.buffers[i] = aligned
    for sg in model.subgraphs or []:
        _as_arrays(sg, inputs=np.int32, outputs=np.int32)
        for op in sg.operators or []:
            _as_arrays(op, inputs=np.int32, outputs=np.int32, intermediates=np.int32)
        for t in sg.tensors or []:
            _as_arrays(t, shape=np.int32, shapeSignature=np.int32)
            if t.quantization is not None:
                t.quantization = _SharedQuantizationT.of(t.quantization)
    size = sum(len(b.data) for b in model.buffers if b.data is not None)
    initial_size = max(1024, 2 * size + 65536)
    builder = _SharingBuilder(initial_size) if share else flatbuffers.Builder(initial_size)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class _SharingBuilder(flatbuffers.Builder):
    """A Builder that writes each distinct numeric vector once and points every user at that copy.

    The object API packs every table's vectors anew, so an int8 file held one copy per tensor of
    vectors that are mostly equal: the int64 zero points of symmetric per-channel weights and of
    int32 biases are all zeros (8 bytes per output channel, twice), activations passed through
    pooling, reshapes and concatenations keep their input's scale, and many tensors have the same
    shape. A flatbuffer is a DAG: any number of tables may point at one vector, and the verifiers
    of LiteRT and TFLite Micro check bounds and alignment, not uniqueness; both runtimes only read
    the vectors. Only ``CreateNumpyVector`` shares: it writes scalars, never offsets, whose bytes
    would mean other targets at another position.
    """

    def __init__(self, initial_size: int) -> None:
        super().__init__(initial_size)
        self.shared: dict[tuple[Any, ...], int] = {}

    def CreateNumpyVector(self, x: np.ndarray) -> int:
        key = ("vector", x.dtype.itemsize, x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes())
        if key not in self.shared:
            self.shared[key] = super().CreateNumpyVector(x)
        return self.shared[key]


class _SharedQuantizationT(schema.QuantizationParametersT):
    """Quantization parameters written once per distinct content (an activation after a pooling or a
    reshape keeps its input's scale and zero point); the generated Pack writes a table per tensor."""

    @classmethod
    def of(cls, q: schema.QuantizationParametersT) -> _SharedQuantizationT:
        shared = cls()
        vars(shared).update(vars(q))
        _as_arrays(shared, scale=np.float32, zeroPoint=np.int64, min=np.float32, max=np.float32)
        return shared

    def Pack(self, builder: flatbuffers.Builder) -> int:
        if not isinstance(builder, _SharingBuilder) or self.details is not None:
            return super().Pack(builder)
        vectors = tuple(None if v is None else v.tobytes() for v in (self.scale, self.zeroPoint, self.min, self.max))
        key = ("quantization", self.quantizedDimension, *vectors)
        if key not in builder.shared:
            builder.shared[key] = super().Pack(builder)
        return builder.shared[key]


def _as_arrays(obj: object, **dtypes: type[np.generic]) -> None:
    """Turn the named list attributes of a schema object into little-endian arrays, the form the
    generated Pack hands to ``CreateNumpyVector`` (lists it writes element by element)."""
    for attr, dtype in dtypes.items():
        value = getattr(obj, attr)
        if value is not None:
            setattr(obj, attr, np.asarray(value, dtype=np.dtype(dtype).newbyteorder("<")))


def _is_constant(model: schema.ModelT, tensor: schema.TensorT) -> bool:
    return 0 < tensor.buffer < len(model.buffers) and _payload(model.buffers[tensor.buffer]) is not None


def unshare_constants(data: bytes) -> bytes:
    """Give every use of a constant (an operator input slot) its own tensor and buffer, and every table its own vectors.

    ai-edge-quantizer reads the file into the object API over a ``bytearray``, where each vector is
    a writable view of the file's bytes, and edits some of them in place: in a file that stores a
    vector once for several tables (``pack``'s default), one edit would change them all. So the
    result is always repacked with ``share=False``.
    """
    model = load(data)
    buffer_users: Counter[int] = Counter()
    for sg in model.subgraphs:
        for op in sg.operators or []:
            inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
            for slot, index in enumerate(inputs):
                if index < 0 or not _is_constant(model, sg.tensors[index]):
                    continue
                tensor = sg.tensors[index]
                buffer_users[tensor.buffer] += 1
                if buffer_users[tensor.buffer] == 1:
                    continue  # the first use keeps the original
                inputs[slot] = _copy_constant(model, sg, tensor)
            op.inputs = inputs
    return pack(model, share=False)


def _copy_constant(model: schema.ModelT, sg: schema.SubGraphT, tensor: schema.TensorT) -> int:
    twin = schema.TensorT()
    for attr, value in vars(tensor).items():
        setattr(twin, attr, value)
    twin.name = f"{_name(tensor)}/{len(sg.tensors)}"
    buffer = _AlignedBufferT()
    buffer.data = _payload(model.buffers[tensor.buffer])
    model.buffers.append(buffer)
    twin.buffer = len(model.buffers) - 1
    sg.tensors.append(twin)
    return len(sg.tensors) - 1


def _name(tensor: schema.TensorT) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name or "")


@dataclass(frozen=True)
class Compaction:
    """What ``compact`` removed, in bytes of buffer data and counts."""

    unreferenced_buffers: int
    unreferenced_bytes: int
    merged_buffers: int
    merged_bytes: int
    stripped_min_max: int
    """Tensors whose calibration min/max (unused by any runtime kernel) were dropped."""

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def compact(data: bytes) -> tuple[bytes, Compaction]:
    """Remove waste that LiteRT never reads: buffers no tensor or metadata refers to, second copies
    of equal constant buffers, and the calibration min/max left in quantization parameters.

    Buffer 0 (the empty sentinel every activation points at) stays first. The result is written by
    ``pack``, so equal vectors and quantization tables are stored once. Returns ``data`` unchanged
    when there is nothing to remove and repacking would not make it smaller.
    """
    model = load(data)
    referenced = {0} | {t.buffer for sg in model.subgraphs for t in sg.tensors or []}
    referenced |= {m.buffer for m in model.metadata or []}
    stripped = 0
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            q = t.quantization
            if q is not None and (q.min is not None or q.max is not None) and q.scale is not None:
                q.min = q.max = None
                stripped += 1
    first_with: dict[str, int] = {}
    remap: dict[int, int] = {}
    kept: list[schema.BufferT] = []
    unreferenced = unreferenced_bytes = merged = merged_bytes = 0
    for i, buf in enumerate(model.buffers):
        payload = _payload(buf)
        if i not in referenced:
            unreferenced += 1
            unreferenced_bytes += len(payload or b"")
            continue
        if payload is not None and buf.offset == 0:
            digest = hashlib.sha256(payload).hexdigest()
            if digest in first_with:
                remap[i] = first_with[digest]
                merged += 1
                merged_bytes += len(payload)
                continue
            first_with[digest] = len(kept)
        remap[i] = len(kept)
        kept.append(buf)
    report = Compaction(unreferenced, unreferenced_bytes, merged, merged_bytes, stripped)
    if not (unreferenced or merged or stripped):
        repacked = pack(model)  # a file from another writer may still hold a copy of a vector per tensor
        return (repacked if len(repacked) < len(data) else data), report
    model.buffers = kept
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            t.buffer = remap[t.buffer]
    for m in model.metadata or []:
        m.buffer = remap[m.buffer]
    return pack(model), report


@dataclass(frozen=True)
class SizeBreakdown:
    """Where the bytes of a TFLite file go."""

    total: int
    constants: dict[str, int]
    """Constant buffer bytes by tensor type (INT8 weights, INT32 biases and shapes, FLOAT32, ...)."""
    quantization_params: int
    """Bytes of scale (float32), zero-point (int64) and min/max (float32) values in the file: one
    entry per tensor or per output channel, each vector counted once however many tensors point at it."""
    quantization_params_per_tensor: int
    """The same values counted once per tensor: what they take in a file that stores a copy per tensor."""
    names: int
    """Tensor, signature and description strings."""

    @property
    def constant_bytes(self) -> int:
        return sum(self.constants.values())

    @property
    def structure(self) -> int:
        """Everything else: tensor and operator tables, shapes, op codes, signature, vtables, alignment."""
        return self.total - self.constant_bytes - self.quantization_params - self.names

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "constants": dict(self.constants), "constant_bytes": self.constant_bytes,
                "quantization_params": self.quantization_params,
                "quantization_params_per_tensor": self.quantization_params_per_tensor, "names": self.names,
                "structure": self.structure}


def size_breakdown(data: bytes) -> SizeBreakdown:
    model = load(data)
    constants: dict[str, int] = defaultdict(int)
    counted: set[int] = set()
    per_tensor = names = 0
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            names += len(_name(t))
            q = t.quantization
            if q is not None:
                per_tensor += sum(4 * len(v) for v in (q.scale, q.min, q.max) if v is not None)
                per_tensor += 8 * len(q.zeroPoint if q.zeroPoint is not None else [])
            payload = _payload(model.buffers[t.buffer]) if 0 < t.buffer < len(model.buffers) else None
            if payload is not None and t.buffer not in counted:
                counted.add(t.buffer)
                constants[_TYPE_NAMES.get(t.type, str(t.type))] += len(payload)
    for sig in model.signatureDefs or []:
        names += sum(len(m.name or b"") for m in [*(sig.inputs or []), *(sig.outputs or [])])
    names += len(model.description or b"")
    return SizeBreakdown(total=len(data), constants=dict(sorted(constants.items())),
                         quantization_params=sum(_quantization_vectors(data).values()),
                         quantization_params_per_tensor=per_tensor, names=names)


# Vtable slots of QuantizationParameters' vectors (min, max, scale, zero_point) and their element sizes.
_QUANTIZATION_VECTOR_SLOTS = ((4, 4), (6, 4), (8, 4), (10, 8))


def _quantization_vectors(data: bytes) -> dict[int, int]:
    """Bytes of every quantization vector in ``data``, keyed by where it starts in the file.

    The object API gives each tensor its own copy of a vector several tables point at, so this
    reads the file's table accessors (their ``_tab``: the generated API exposes a vector's
    position nowhere else) to count each stored vector once.
    """
    model = schema.Model.GetRootAs(data, 0)
    vectors: dict[int, int] = {}
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for t in range(sg.TensorsLength()):
            q = sg.Tensors(t).Quantization()
            if q is None:
                continue
            for slot, width in _QUANTIZATION_VECTOR_SLOTS:
                field = q._tab.Offset(slot)
                if field:
                    vectors[q._tab.Vector(field)] = width * q._tab.VectorLen(field)
    return vectors
