"""Compression passes, one technique per module, and the registry from a scheme name to its pass.

The registry maps the ``scheme`` of a config (what a manifest's ``compression`` records) back to
the pass that applies it, so a manifest's config can be re-applied: ``build_pass(manifest.compression)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from edgefleet.compiler.passes.base import (
    Pass,
    PassConfig,
    PassData,
    PassReport,
    PassResult,
    Transformed,
)
from edgefleet.compiler.passes.channel_prune import ChannelPrune, ChannelPruneConfig
from edgefleet.compiler.passes.cluster import Cluster, ClusterConfig
from edgefleet.compiler.passes.distill import Distill, DistillConfig
from edgefleet.compiler.passes.finetune import Finetune, FinetuneConfig
from edgefleet.compiler.passes.identity import Fp32Config, KeepFp32
from edgefleet.compiler.passes.lowrank import LowRank, LowRankConfig
from edgefleet.compiler.passes.mixed_precision import (
    MixedPrecision,
    MixedPrecisionConfig,
)
from edgefleet.compiler.passes.prune import Prune, PruneConfig
from edgefleet.compiler.passes.quantize import (
    DynamicInt8,
    DynamicInt8Config,
    StaticInt8,
    StaticInt8Config,
)

PASSES: dict[str, type[Pass[Any]]] = {
    p.config_type.scheme: p for p in (KeepFp32, StaticInt8, DynamicInt8, Prune, ChannelPrune, LowRank, Cluster, MixedPrecision, Finetune, Distill)
}


def build_pass(config: Mapping[str, Any]) -> Pass[Any]:
    """The pass for a config dict as written by ``PassConfig.to_dict`` (and found in manifests)."""
    scheme = config.get("scheme")
    if scheme not in PASSES:
        raise ValueError(f"unknown compression scheme {scheme!r}; known: {sorted(PASSES)}")
    pass_type = PASSES[scheme]
    config_type = pass_type.config_type
    if config.get("version", 1) != config_type.version:
        raise ValueError(f"{scheme} config version {config.get('version')} is not the supported version {config_type.version}")
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = set(config) - names - {"scheme", "version", "number_format"}
    if unknown:
        raise ValueError(f"{scheme} config has unknown settings {sorted(unknown)}; it takes {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names}
    return pass_type(config_type(**kwargs))


__all__ = [
    "PASSES",
    "ChannelPrune",
    "ChannelPruneConfig",
    "Cluster",
    "ClusterConfig",
    "Distill",
    "DistillConfig",
    "DynamicInt8",
    "DynamicInt8Config",
    "Finetune",
    "FinetuneConfig",
    "Fp32Config",
    "KeepFp32",
    "LowRank",
    "LowRankConfig",
    "MixedPrecision",
    "MixedPrecisionConfig",
    "Pass",
    "PassConfig",
    "PassData",
    "PassReport",
    "PassResult",
    "Prune",
    "PruneConfig",
    "StaticInt8",
    "StaticInt8Config",
    "Transformed",
    "build_pass",
]
