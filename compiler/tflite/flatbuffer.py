"""Whole-file passes on a TFLite flatbuffer, through the schema object API: sharing, compaction, size accounting.

    unshare_constants(data)  -> bytes           each operator input gets its own constant tensor
    compact(data)            -> (bytes, Compaction)   drop unreferenced buffers, merge equal ones, strip min/max
    size_breakdown(data)     -> SizeBreakdown  where a file's bytes go
    pack(model)              -> bytes           serialise a ``ModelT`` with 16-byte aligned buffers

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
    """
    model = schema.ModelT.InitFromPackedBuf(data, 0)
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


def pack(model: schema.ModelT) -> bytes:
    """Serialise ``model``; every constant buffer starts on a 16-byte boundary (kernels may read it in place)."""
    for i, buf in enumerate(model.buffers):
        aligned = _AlignedBufferT()
        aligned.data = _payload(buf)
        aligned.offset, aligned.size = buf.offset, buf.size
        model.buffers[i] = aligned
    size = sum(len(b.data) for b in model.buffers if b.data is not None)
    builder = flatbuffers.Builder(max(1024, 2 * size + 65536))
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _is_constant(model: schema.ModelT, tensor: schema.TensorT) -> bool:
    return 0 < tensor.buffer < len(model.buffers) and _payload(model.buffers[tensor.buffer]) is not None


def unshare_constants(data: bytes) -> bytes:
    """Give every use of a constant (an operator input slot) its own tensor and buffer; returns ``data`` if none is shared."""
    model = load(data)
    changed = False
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
                changed = True
            op.inputs = inputs
    return pack(model) if changed else data


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

    Buffer 0 (the empty sentinel every activation points at) stays first. Returns ``data`` unchanged
    when there is nothing to remove.
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
        return data, report
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
    """Scale (float32) and zero-point (int64) values, one pair per tensor or per output channel."""
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
                "quantization_params": self.quantization_params, "names": self.names, "structure": self.structure}


def size_breakdown(data: bytes) -> SizeBreakdown:
    model = load(data)
    constants: dict[str, int] = defaultdict(int)
    counted: set[int] = set()
    qparams = names = 0
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            names += len(_name(t))
            q = t.quantization
            if q is not None:
                qparams += 4 * len(q.scale if q.scale is not None else []) + 8 * len(q.zeroPoint if q.zeroPoint is not None else [])
                qparams += 4 * len(q.min if q.min is not None else []) + 4 * len(q.max if q.max is not None else [])
            payload = _payload(model.buffers[t.buffer]) if 0 < t.buffer < len(model.buffers) else None
            if payload is not None and t.buffer not in counted:
                counted.add(t.buffer)
                constants[_TYPE_NAMES.get(t.type, str(t.type))] += len(payload)
    for sig in model.signatureDefs or []:
        names += sum(len(m.name or b"") for m in [*(sig.inputs or []), *(sig.outputs or [])])
    names += len(model.description or b"")
    return SizeBreakdown(total=len(data), constants=dict(sorted(constants.items())), quantization_params=qparams, names=names)
