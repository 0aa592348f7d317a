"""TFLite Micro look-up-table (LUT) compression: clustered int8 weights kept as bit-packed indices in flash.

After weight clustering (``passes.cluster``, K = 2^b centroids per layer) and per-channel int8
quantization, every output channel of a weight holds at most 2^b distinct int8 values. The
``tflite_micro`` package's ``compression`` module then rewrites such a tensor as b-bit indices plus
one value table per output channel (axis 0), and inserts a ``DECODE`` operator that expands it at run time. The device keeps the indices in
flash; the decoded weights live in the tensor arena (or an alternate decompression memory), so
flash shrinks and RAM grows: ``LutResult`` reports both.

    lut_plan(tflite)                 -> the tensors that can be LUT-compressed, and at which bit width
    compress_lut(tflite)             -> LutResult: the compressed flatbuffer and what it saved
    compress_candidate(c, feeds)     -> the TFLMCandidate with compressed bytes, checked bit-exact in TFLM
    lut_candidate(model, inputs, data) -> tflm_candidate then compress_candidate: what a package carries

We do not hand-roll the format: the tensors are chosen here, the encoding is ``tflite_micro``'s.
The ``tflite_micro`` interpreter shipped in the wheel registers ``DECODE``, so the compressed model
runs in the same interpreter the rest of ``compiler/tflm`` measures with. Per-channel tables only:
the format's per-tensor mode (one table for the whole tensor) gave wrong outputs in that interpreter
(up to 255 quantization steps off on the digits MLP, at 6 and 7 bits), where per-channel tables at
every width from 4 to 7 bits were bit-exact.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler import fidelity, stats
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.passes import Fp32Config, PassData
from edgefleet.compiler.planner import Candidate
from edgefleet.compiler.tflite import flatbuffer
from edgefleet.compiler.tflm import micro
from edgefleet.compiler.tflm.candidates import TFLMCandidate, tflm_candidate
from edgefleet.compiler.tflm.micro import TFLMError
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)

MAX_INDEX_BITS = 7
"""The widest index the LUT format takes (its DCM header has 3 bits for it)."""
MIN_ELEMENTS = 64
"""Smaller tensors are left alone: the DECODE operator and its metadata cost more than they save."""


@dataclass(frozen=True)
class LutTensor:
    """One tensor chosen for LUT compression."""

    index: int
    name: str
    shape: tuple[int, ...]
    bits: int
    raw_bytes: int
    encoded_bytes: int
    """Packed indices plus value tables (what replaces ``raw_bytes`` in flash)."""


@dataclass(frozen=True)
class LutResult:
    tflite_bytes: bytes
    tensors: tuple[LutTensor, ...]
    flash_before: int
    flash_after: int

    def to_dict(self) -> dict[str, object]:
        return {"flash_before": self.flash_before, "flash_after": self.flash_after,
                "tensors": [dataclasses.asdict(t) for t in self.tensors]}


def lut_plan(tflite: bytes, *, max_bits: int = MAX_INDEX_BITS, min_elements: int = MIN_ELEMENTS) -> list[LutTensor]:
    """The constant int8 tensors of subgraph 0 whose LUT form is smaller than the raw bytes.

    One value table per output channel (axis 0, as per-channel quantization scales them), each
    padded to the largest channel's count; the index width is what that count needs. Tensors a kernel must read as constants at prepare time are skipped (``constant_inputs``).
    """
    from tflite_micro.tensorflow.lite.micro.compression import (
        constant_inputs,
        model_editor,
    )

    if not 1 <= max_bits <= MAX_INDEX_BITS:
        raise ValueError(f"max_bits must be 1..{MAX_INDEX_BITS}, got {max_bits}")
    model = model_editor.read(tflite)
    subgraph = model.subgraphs[0]
    plan = []
    for i, tensor in enumerate(subgraph.tensors):
        if tensor.buffer is None or not tensor.buffer.data or tensor.numpy_dtype != np.int8:
            continue
        values = tensor.array
        if values is None or values.size < min_elements or values.ndim < 1 or constant_inputs.find_uses(subgraph, tensor):
            continue
        count = max(len(np.unique(row)) for row in values.reshape(values.shape[0], -1))
        if count > 2**max_bits:
            continue
        bits = max(1, int(np.ceil(np.log2(count))))
        tables = values.shape[0] * count
        encoded = (values.size * bits + 7) // 8 + tables + 16  # indices, value tables, the 16-byte DCM header
        if encoded >= values.size:
            continue
        plan.append(LutTensor(index=i, name=tensor.name or f"tensor{i}", shape=tuple(int(d) for d in values.shape), bits=bits,
                              raw_bytes=int(values.size), encoded_bytes=encoded))
    return plan


def compress_lut(tflite: bytes, *, max_bits: int = MAX_INDEX_BITS, min_elements: int = MIN_ELEMENTS) -> LutResult:
    """``tflite`` with every tensor ``lut_plan`` chose LUT-compressed (unchanged, with no tensors, if none qualifies)."""
    from tflite_micro.tensorflow.lite.micro.compression import compress, spec

    plan = lut_plan(tflite, max_bits=max_bits, min_elements=min_elements)
    if not plan:
        return LutResult(bytes(tflite), (), len(tflite), len(tflite))
    specs = [
        spec.Tensor(subgraph=0, tensor=t.index, compression=[spec.LookUpTableCompression(
            index_bitwidth=t.bits, mode=spec.PerChannel(axis=0))])
        for t in plan
    ]
    out = flatbuffer.pack(flatbuffer.load(bytes(compress(tflite, specs))))  # tflite_micro writes a copy of each vector per tensor
    log.info("tflm LUT: %d tensors, flash %d -> %d bytes", len(plan), len(tflite), len(out))
    return LutResult(out, tuple(plan), len(tflite), len(out))


def compress_candidate(c: TFLMCandidate, feeds: Sequence[Feed], *, max_bits: int = MAX_INDEX_BITS) -> TFLMCandidate:
    """``c`` with LUT-compressed weights, its arena re-measured, after checking in TFLM that the
    compressed model's outputs equal the uncompressed model's on ``feeds`` (int8, keyed by input name).

    Returns ``c`` itself when no weight qualifies (weights not clustered to at most 2^max_bits values).
    """
    result = compress_lut(c.tflite_bytes, max_bits=max_bits)
    if not result.tensors:
        return c
    before = micro.run(c.tflite_bytes, feeds)
    after = micro.run(result.tflite_bytes, feeds)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        if not np.array_equal(a, b):
            raise TFLMError(f"the LUT-compressed model's output {i} differs from the uncompressed model's in TFLite Micro "
                            f"(by up to {int(np.max(np.abs(a.astype(np.int32) - b.astype(np.int32))))} steps): "
                            "the DECODE kernel or the encoding is wrong; ship the uncompressed model")
    arena = micro.measure_arena(result.tflite_bytes, feeds[0])
    bits = sorted({t.bits for t in result.tensors})
    note = (f"TFLM LUT compression: {len(result.tensors)} weight tensors as {'/'.join(map(str, bits))}-bit indices; "
            f"flash {result.flash_before} -> {result.flash_after} bytes, arena {c.arena_bytes} -> {arena} bytes "
            "(DECODE expands the weights into the arena); outputs equal to the uncompressed model's in TFLM")
    config = {**c.candidate.config, "lut": {"max_bits": max_bits, "tensors": [t.name for t in result.tensors]}}
    candidate = dataclasses.replace(c.candidate, config=config, size_bytes=result.flash_after, ram_bytes=arena,
                                    notes=(*c.candidate.notes, note))
    return dataclasses.replace(c, candidate=candidate, tflite_bytes=result.tflite_bytes, arena_bytes=arena)


def lut_candidate(model: onnx.ModelProto, inputs: Sequence[TensorSpec], data: PassData, *,
                  max_bits: int = MAX_INDEX_BITS) -> tuple[TFLMCandidate, TFLMCandidate]:
    """(uncompressed, LUT-compressed) ``tflm-int8`` candidates of ``model`` (run ``cluster`` on it first).

    ``data`` needs calibration samples and ``reference``: the float model's outputs on ``data.evaluation``.
    ``TFLMTarget.artifact`` packages either; the compressed one's ``model.tflite`` and C array carry
    the indices and the ``DECODE`` operators, and its header the larger arena the decoded weights need.
    """
    measured = stats.measure(model)
    assert data.reference is not None, "lut_candidate needs the float model's outputs in data.reference"
    fp32 = Candidate(scheme="fp32", config=Fp32Config().to_dict(), number_format=NumberFormat.FP32, runtime_quantization=False,
                     modified=False, params=measured.params, nonzero_params=measured.nonzero_params,
                     size_bytes=measured.size_bytes, ram_bytes=measured.ram_bytes,
                     fidelity=_identical(data))
    plain = tflm_candidate(fp32, model, inputs, data)
    return plain, compress_candidate(plain, [plain.quantize_feed(f) for f in data.evaluation.feeds()], max_bits=max_bits)


def _identical(data: PassData) -> fidelity.Fidelity:
    """The float model's fidelity against itself (the reference candidate's)."""
    assert data.reference is not None
    names = [f"output{i}" for i in range(len(data.reference))]
    return fidelity.compare(names, list(data.reference), list(data.reference), synthetic=data.evaluation.synthetic,
                            labels=data.evaluation.labels)
