"""Keep every constant inside the flatbuffer, where TFLite Micro looks for it.

ai-edge-quantizer writes a model whose constants total 256 KiB or more with its constant buffers
after the flatbuffer, each ``Buffer`` holding only an ``offset`` and ``size`` into the file (the
layout meant for models over 2 GB).
LiteRT reads that; the TFLite Micro interpreter we test with does not: it takes ``Buffer.data``,
finds it empty, and runs on garbage (on the 64-512-512-10 digits MLP every output was the same,
232 quantization steps from LiteRT's). ``inline_buffers`` moves the bytes back into ``data``,
16-byte aligned, as ``tflite.builder`` writes them.
"""

from __future__ import annotations

from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.tflite import flatbuffer


def has_offset_buffers(data: bytes) -> bool:
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    return any((b.offset or 0) > 1 for b in model.buffers)


def inline_buffers(data: bytes) -> bytes:
    """``data`` with every offset buffer's bytes stored in the flatbuffer (unchanged if there is none)."""
    # tflite.flatbuffer.load reads offset buffers inline, and pack writes them 16-byte aligned.
    return flatbuffer.pack(flatbuffer.load(data)) if has_offset_buffers(data) else data
