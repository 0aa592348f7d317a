"""Weight clustering (weight sharing, as in Deep Compression): each layer's weights snapped to k centroids.

Per layer, a 1-D k-means over the weights finds ``clusters`` centroids and every weight is
replaced by its nearest centroid. The model keeps float weights, so it runs anywhere unchanged;
the saving appears once the artifact is entropy-coded (``edgefleet.compiler.entropy``): a layer
then holds at most k distinct values, about log2(k) bits per weight, plus a k-entry codebook.

Zeros stay zeros (``keep_zeros``): after pruning they are a cluster of their own, and the other
k - 1 centroids are fitted to the non-zero weights, so clustering does not undo the sparsity.

Why a numpy 1-D k-means rather than scikit-learn's KMeans: in one dimension the clusters are
intervals of the sorted weights, so after one sort, each Lloyd iteration is a ``searchsorted`` of
the k - 1 midpoints and a k-term prefix-sum difference: O(k log n) per iteration instead of
KMeans' O(nk), with no random restarts. Centroids start linearly spaced between the smallest and
largest weight, the initialisation Han et al. found best (it keeps the rare large weights, which
matter most, as their own centroids). The result is deterministic.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig(PassConfig):
    scheme: ClassVar[str] = "cluster"

    clusters: int = 16
    """Centroids per layer (including the zero cluster when ``keep_zeros``); a power of two uses its index bits fully."""
    keep_zeros: bool = True
    iterations: int = 50
    min_params: int = 0
    op_types: tuple[str, ...] = _graph.WEIGHT_OPS

    def __post_init__(self) -> None:
        if self.clusters < 2:
            raise ValueError(f"cluster: clusters must be at least 2, got {self.clusters}")
        if self.iterations < 1:
            raise ValueError("cluster: iterations must be at least 1")


def kmeans_1d(values: np.ndarray, k: int, *, iterations: int = 50) -> np.ndarray:
    """Sorted centroids of a 1-D k-means (Lloyd's algorithm on sorted data, linear initialisation)."""
    v = np.sort(values.astype(np.float64).ravel())
    if v.size == 0:
        return np.zeros(0)
    unique = np.unique(v)
    if unique.size <= k:
        return unique
    prefix = np.concatenate([[0.0], np.cumsum(v)])
    centroids = np.linspace(v[0], v[-1], k)
    edges = None
    for _ in range(iterations):
        cuts = np.searchsorted(v, (centroids[:-1] + centroids[1:]) / 2)
        bounds = np.concatenate([[0], cuts, [v.size]])
        if edges is not None and np.array_equal(bounds, edges):
            break
        edges = bounds
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        centroids = np.sort(centroids)
    return np.unique(centroids)


def snap(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each value replaced by its nearest centroid."""
    if centroids.size == 1:
        return np.full_like(values, centroids[0])
    idx = np.searchsorted((centroids[:-1] + centroids[1:]) / 2, values)
    return centroids[idx].astype(values.dtype)


class Cluster(Pass[ClusterConfig]):
    config_type = ClusterConfig

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        if not any(True for _ in _graph.layers(model, self.config.op_types)):
            raise PassError("found no Conv/Gemm/MatMul with a constant float weight to cluster; "
                            "run cluster before int8 (quantized weights sit behind DequantizeLinear)", pass_name=self.name)

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        out = copy.deepcopy(model)
        notes: list[str] = []
        done: set[str] = set()
        codebook_bytes = index_bits = weights = 0
        for layer in _graph.layers(out, cfg.op_types):
            if layer.weight in done:
                continue
            done.add(layer.weight)
            w = _graph.array(out, layer.weight)
            if w.size < cfg.min_params:
                notes.append(f"skipped {layer.name}: {w.size} weights < min_params {cfg.min_params}")
                continue
            if cfg.keep_zeros and np.any(w == 0):
                nonzero = w[w != 0]
                centroids = kmeans_1d(nonzero, cfg.clusters - 1, iterations=cfg.iterations)
                snapped = np.where(w == 0, 0, snap(w, centroids)).astype(w.dtype)
                k = centroids.size + 1
            else:
                centroids = kmeans_1d(w, cfg.clusters, iterations=cfg.iterations)
                snapped = snap(w, centroids).astype(w.dtype)
                k = centroids.size
            _graph.set_array(out, layer.weight, snapped)
            bits = max(1, int(np.ceil(np.log2(max(k, 2)))))
            codebook_bytes += k * w.dtype.itemsize
            index_bits += bits * w.size
            weights += w.size
            notes.append(f"{layer.name}: {w.size} weights -> {k} values ({bits}-bit indices)")
        if weights:
            notes.append(
                f"codebooks {codebook_bytes} bytes, indices {index_bits / 8:.0f} bytes for {weights} weights "
                f"(vs {weights * 4} bytes as float32)"
            )
        return Transformed(model=out, modified=weights > 0, notes=tuple(notes))
