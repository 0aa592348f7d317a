"""Layouts: each ONNX tensor lives in TFLite as itself (``ONNX``) or, for 4-D activations, as NHWC.

ONNX convolutions and pools are NCHW; TFLite's are NHWC. The converter changes layout once per
tensor, not once per op: a 4-D tensor produced by a Conv stays NHWC for every following op that
does not care about axis order (elementwise ops, activations, pools, concatenation on a remapped
axis, reductions on remapped axes), and a TRANSPOSE back to the ONNX order is inserted only where
order matters (Reshape, Flatten, Transpose, a graph output). ``Context.get`` in ``context.py``
does the insertion; the helpers here are the permutations and axis arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ONNX = "onnx"
"""The tensor as ONNX defines it (NCHW for images)."""
NHWC = "nhwc"
"""A 4-D ONNX tensor [N, C, H, W] stored as [N, H, W, C]."""

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def nhwc_shape(shape: Sequence[int]) -> list[int]:
    return [shape[i] for i in TO_NHWC]


def nhwc_axis(axis: int, rank: int = 4) -> int:
    """Where ONNX axis ``axis`` (possibly negative) of a 4-D tensor sits in its NHWC form."""
    return TO_NHWC.index(axis % rank)


def to_nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, TO_NHWC))


def broadcast_constant_nhwc(array: np.ndarray) -> np.ndarray:
    """A constant that broadcasts against a 4-D NCHW tensor, rearranged to broadcast against its NHWC form."""
    if array.ndim > 4:
        raise ValueError(f"constant of rank {array.ndim} cannot broadcast against a 4-D tensor")
    return to_nhwc(array.reshape((1,) * (4 - array.ndim) + array.shape))


def is_pure_reshape(shape: Sequence[int], perm: Sequence[int]) -> bool:
    """Whether transposing a tensor of ``shape`` by ``perm`` keeps the element order (only size-1 axes move)."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)
