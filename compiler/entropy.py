"""Entropy coding of a model artifact: what it costs to send, against what its weights carry.

An artifact-level step, not a model pass: the model does not change, its bytes do. For a model it
measures

- ``raw_bytes``: the serialised ONNX protobuf, as compiled;
- ``zstd_bytes``: that protobuf compressed with zstd (level 19 by default): what a transfer
  with zstd costs, and a real, decodable artifact (``compress``/``decompress``);
- ``huffman_bytes``: an estimate for Deep Compression's scheme: each weight tensor coded with its
  own canonical Huffman code over its distinct values (the symbols: float bit patterns, or int8
  values after quantization), plus a codebook per tensor (each symbol's value and code length),
  plus the rest of the protobuf as is;
- ``entropy_bytes``: the same with every weight tensor at its empirical (zeroth-order) entropy, the
  bound any symbol-by-symbol code approaches.

``transfer_bytes`` is the smaller of zstd and the Huffman estimate, and ``codec`` says which.
Clustering and pruning leave few distinct values, which is where both codes gain; zstd also
exploits repeats that a per-symbol code cannot, and it compresses the graph structure too.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
import zstandard
from onnx import numpy_helper

from edgefleet.compiler import stats
from edgefleet.compiler.passes.base import PassConfig

MIN_WEIGHTS = 16
"""Tensors with fewer values (scalars, shapes, small biases) stay raw: a code table would cost more."""


@dataclass(frozen=True)
class EntropyConfig(PassConfig):
    scheme: ClassVar[str] = "entropy"

    level: int = 19

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ValueError(f"entropy: zstd level must be 1..22, got {self.level}")


@dataclass(frozen=True)
class EntropyReport:
    raw_bytes: int
    zstd_bytes: int
    huffman_bytes: int
    entropy_bytes: int
    weights: int
    """Values in the entropy-coded weight tensors."""
    entropy_bits_per_weight: float
    huffman_bits_per_weight: float
    codec: str
    transfer_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compress(data: bytes, level: int = 19) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


def entropy_bits(counts: np.ndarray) -> float:
    """Total bits of a zeroth-order code at the empirical entropy of symbols with these counts."""
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Code length of each symbol in a Huffman code for these counts (a single symbol gets 1 bit)."""
    if len(counts) == 1:
        return np.ones(1, np.int64)
    heap: list[tuple[int, int, list[int]]] = [(int(c), i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    lengths = np.zeros(len(counts), np.int64)
    tie = len(counts)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def _symbols(values: np.ndarray) -> np.ndarray:
    """Values as integer symbols: float bit patterns, so -0.0 and 0.0 differ exactly as stored."""
    if values.dtype.kind == "f":
        return values.view(np.dtype(f"u{values.dtype.itemsize}")).ravel()
    return values.ravel()


def measure(model: onnx.ModelProto, config: EntropyConfig = EntropyConfig()) -> EntropyReport:
    raw = model.SerializeToString()
    zstd_bytes = len(compress(raw, config.level))
    metadata = stats._quantization_metadata(model)
    coded_raw = huffman_bits = bound_bits = 0.0
    codebook = weights = 0
    for init in model.graph.initializer:
        if init.name in metadata:
            continue
        values = numpy_helper.to_array(init)
        if values.size < MIN_WEIGHTS or values.dtype.kind not in "fiu":
            continue
        _, counts = np.unique(_symbols(values), return_counts=True)
        lengths = huffman_lengths(counts)
        huffman_bits += float((counts * lengths).sum())
        bound_bits += entropy_bits(counts)
        codebook += len(counts) * (values.dtype.itemsize + 1)  # each symbol's value and its code length
        coded_raw += values.nbytes
        weights += values.size
    rest = len(raw) - coded_raw
    huffman = int(np.ceil(rest + huffman_bits / 8 + codebook))
    bound = int(np.ceil(rest + bound_bits / 8))
    codec, transfer = ("zstd", zstd_bytes) if zstd_bytes <= huffman else ("huffman", huffman)
    return EntropyReport(
        raw_bytes=len(raw),
        zstd_bytes=zstd_bytes,
        huffman_bytes=huffman,
        entropy_bytes=bound,
        weights=weights,
        entropy_bits_per_weight=round(bound_bits / weights, 3) if weights else 0.0,
        huffman_bits_per_weight=round(huffman_bits / weights, 3) if weights else 0.0,
        codec=codec,
        transfer_bytes=transfer,
    )
