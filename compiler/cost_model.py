"""Estimated latency and energy of one inference on a hardware profile, from the ONNX graph.

A roofline per operator, plus what the runtime costs around the arithmetic:

    latency = correction x (call overhead + sum over operators of
              (op overhead + max(2 x MACs / throughput(format), bytes moved / bandwidth)))
    energy  = latency x the profile's active power

- MACs per operator come from ONNX shape inference, as ``stats.count_macs`` counts them (Conv,
  Gemm, MatMul); other operators only move bytes.
- Bytes moved are the operator's weights in the candidate's number format plus its activations
  (inputs and outputs; int8 for statically quantized models, float32 otherwise). Weights that fit
  in the profile's last-level cache (``memory.cache``) stay there between inferences and move nothing.
- Throughput is the profile's ``fp32_gflops``/``int8_gops``/``fp16_gflops``; fp16 is computed as
  fp32 unless the profile marks it fast (LiteRT's CPU kernels widen fp16 weights at load time).
- Dynamic int8 quantizes each MAC operator's input on every call: one more operator, one more
  pass over that input. A dynamically quantized convolution runs ``ConvInteger``, for which
  onnxruntime's CPU provider has no optimised kernel: measured 20-200x slower than fp32 on the
  model set (bench/compile_bench.py), so it is charged at ``_CONV_INTEGER_SLOWDOWN`` x the fp32 time.
- Sparsity and weight clustering are *not* credited: onnxruntime, LiteRT and TFLite Micro run
  dense kernels, so a pruned or clustered model costs as much time as the dense one. Structured
  pruning and low-rank factorisation do count, because they change the graph itself.
- Activations fused into the preceding MAC operator (Relu, Clip, ...) cost no dispatch.
- Energy assumes the device runs at ``power.active_w`` for the duration (every runtime here keeps
  its cores busy during an inference); so for one profile, energy ranks candidates as latency does.

``correction`` is the per-profile factor learned from fleet measurements (median measured over
estimated latency, ``deploy.cost_feedback``); 1.0 until a fleet has reported.

Everything here is a pure function of the graph and the profile; ``analyse`` is the only step
that looks at a model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgefleet.compiler import stats
from edgefleet.hardware_profiles.schema import (
    DeviceKind,
    HardwareProfile,
    NumberFormat,
    Speed,
)

log = logging.getLogger(__name__)

# op type -> (activation input slot, weight input slot), as in stats.count_macs.
_MAC_OPS: dict[str, tuple[int, int]] = {"Conv": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)}
# Elementwise activations the runtimes fuse into the MAC operator before them.
_FUSED_AFTER_MAC = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "BatchNormalization"})
# Nodes that only reshape metadata or are folded at load time.
_FREE = frozenset({"Constant", "Shape", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout"})

# Overheads when a profile does not state them, in CPU cycles: a Linux runtime's Python call and
# session bookkeeping (onnxruntime: ~20 us on a 2.5 GHz x86 core, ~50 k cycles) and a kernel
# dispatch (~0.8 us, ~2 k cycles), both measured on the generic host by bench/compile_bench.py;
# TFLite Micro's Invoke is a C loop over a prepared plan, with far less per operator.
_DEFAULT_CYCLES: dict[DeviceKind, tuple[float, float]] = {
    DeviceKind.MCU: (2_000.0, 300.0),
    DeviceKind.SBC: (50_000.0, 2_000.0),
    DeviceKind.PHONE: (50_000.0, 2_000.0),
    DeviceKind.HOST: (50_000.0, 2_000.0),
}
_CONV_INTEGER_SLOWDOWN = 20.0
_ELEMENT_BYTES = {NumberFormat.FP32: 4, NumberFormat.FP16: 2, NumberFormat.INT8: 1, NumberFormat.INT16X8: 1, NumberFormat.INT4: 0.5}


@dataclass(frozen=True)
class OpCost:
    """One operator of the float graph: what it computes and what it touches."""

    name: str
    op_type: str
    macs: int
    weight_elements: int
    activation_elements: int
    dispatch: bool
    """False when the runtime fuses it into the operator before it, or folds it away."""


@dataclass(frozen=True)
class GraphCost:
    """The format-independent analysis of a float ONNX graph."""

    ops: tuple[OpCost, ...]

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def dispatched(self) -> int:
        return sum(o.dispatch for o in self.ops)


@dataclass(frozen=True)
class Estimate:
    latency_ms: float
    energy_mj: float
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    macs: int
    bytes_moved: int
    correction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": round(self.latency_ms, 6), "energy_mj": round(self.energy_mj, 6),
            "compute_ms": round(self.compute_ms, 6), "memory_ms": round(self.memory_ms, 6),
            "overhead_ms": round(self.overhead_ms, 6), "macs": self.macs, "bytes_moved": self.bytes_moved,
            "correction": self.correction,
        }


def analyse(model: onnx.ModelProto) -> GraphCost:
    """Per-operator MACs, weights and activations of a float ONNX graph (shapes by ONNX shape inference).

    An operator whose shapes cannot be inferred counts no MACs and no activations (logged), so the
    estimate is then a lower bound, as ``stats.count_macs`` is.
    """
    shapes = stats.static_shapes(model)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    ops: list[OpCost] = []
    previous_mac = False
    for node in graph.node:
        weights = sum(_elements(shapes.get(n)) for n in node.input if n in constants)
        if node.input and all(not n or n in constants for n in node.input):
            constants.update(node.output)  # folded at load time: its output is a weight
            ops.append(OpCost(node.name, node.op_type, 0, weights, 0, dispatch=False))
            continue
        if node.op_type in _FREE:
            ops.append(OpCost(node.name, node.op_type, 0, 0, 0, dispatch=False))
            continue
        activations = sum(_elements(shapes.get(n)) for n in [*node.input, *node.output] if n and n not in constants)
        macs = _macs(node, shapes)
        fused = previous_mac and node.op_type in _FUSED_AFTER_MAC
        ops.append(OpCost(node.name, node.op_type, macs, weights, activations, dispatch=not fused))
        previous_mac = node.op_type in _MAC_OPS or (fused and previous_mac)
    return GraphCost(tuple(ops))


def estimate(
    graph: GraphCost,
    profile: HardwareProfile,
    number_format: NumberFormat,
    *,
    runtime_quantization: bool = False,
    correction: float = 1.0,
    decoded_weights: bool = False,
) -> Estimate:
    """Latency (ms) and energy (mJ) of one inference of ``graph`` computed in ``number_format`` on ``profile``.

    ``decoded_weights``: the weights are stored as lookup-table indices (TFLite Micro's DECODE) and
    expanded into RAM at every inference, which reads the indices and writes every weight once more.
    """
    ops_per_s = _throughput(profile, number_format) * 1e9
    bandwidth = profile.memory.bandwidth_gbps * 1e9
    call_us, op_us = _overheads(profile)
    weight_bytes = _ELEMENT_BYTES.get(number_format, 4)
    if number_format is NumberFormat.FP16 and profile.formats.get(NumberFormat.FP16) is not Speed.FAST:
        weight_bytes = 4  # widened to fp32 at load time, so fp32 is what each inference reads
    activation_bytes = 1 if number_format is NumberFormat.INT8 and not runtime_quantization else 4
    if profile.memory.cache is not None and sum(o.weight_elements for o in graph.ops) * weight_bytes <= profile.memory.cache:
        weight_bytes = 0  # they stay in cache between inferences: no memory traffic
    compute = memory = 0.0
    overhead = call_us * 1e-6
    moved = 0
    for op in graph.ops:
        if not op.dispatch and op.macs == 0:
            continue
        op_bytes = int(op.weight_elements * weight_bytes + op.activation_elements * activation_bytes)
        c = 2 * op.macs / ops_per_s
        if runtime_quantization and op.op_type == "Conv":
            c = 2 * op.macs / (_throughput(profile, NumberFormat.FP32) * 1e9) * _CONV_INTEGER_SLOWDOWN
        m = op_bytes / bandwidth
        if op.dispatch:
            overhead += op_us * 1e-6
        if runtime_quantization and op.macs:
            # DynamicQuantizeLinear: one more operator, reading the float input and writing int8.
            overhead += op_us * 1e-6
            m += op.activation_elements * 5 / bandwidth
        moved += op_bytes
        # Roofline: an operator is bound by the slower of arithmetic and memory, not their sum.
        if c >= m:
            compute += c
        else:
            memory += m
    if decoded_weights:
        decoded = sum(o.weight_elements for o in graph.ops) * _ELEMENT_BYTES.get(number_format, 4)
        memory += 2 * decoded / bandwidth
        moved += 2 * decoded
    seconds = (compute + memory + overhead) * correction
    return Estimate(
        latency_ms=seconds * 1e3,
        energy_mj=seconds * profile.power.active_w * 1e3,
        compute_ms=compute * correction * 1e3,
        memory_ms=memory * correction * 1e3,
        overhead_ms=overhead * correction * 1e3,
        macs=graph.macs,
        bytes_moved=moved,
        correction=correction,
    )


def correction_for(profile: str, corrections: Mapping[str, float] | None) -> float:
    """The learned factor for ``profile``, 1.0 when the fleet has not reported on it."""
    return float(corrections.get(profile, 1.0)) if corrections else 1.0


def _throughput(profile: HardwareProfile, number_format: NumberFormat) -> float:
    t = profile.throughput
    if number_format in (NumberFormat.INT8, NumberFormat.INT16X8, NumberFormat.INT4):
        return t.int8_gops
    if number_format is NumberFormat.FP16 and t.fp16_gflops is not None and profile.formats.get(NumberFormat.FP16) is Speed.FAST:
        return t.fp16_gflops
    return t.fp32_gflops


def _overheads(profile: HardwareProfile) -> tuple[float, float]:
    """(call, operator) overhead in microseconds: the profile's figures, else cycles at its clock."""
    call_cycles, op_cycles = _DEFAULT_CYCLES[profile.kind]
    mhz = profile.cpu.clock_mhz
    t = profile.throughput
    call = t.call_overhead_us if t.call_overhead_us is not None else call_cycles / mhz
    op = t.op_overhead_us if t.op_overhead_us is not None else op_cycles / mhz
    return call, op


def _elements(shape: list[int] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 0


def _macs(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    slots = _MAC_OPS.get(node.op_type)
    if slots is None:
        return 0
    x_slot, w_slot = slots
    out = shapes.get(node.output[0])
    x = shapes.get(node.input[x_slot]) if len(node.input) > x_slot else None
    w = shapes.get(node.input[w_slot]) if len(node.input) > w_slot else None
    if out is None or x is None or w is None:
        log.debug("cost model leaves out the MACs of %s %r: shapes unknown", node.op_type, node.name)
        return 0
    out_elems = _elements(out)
    if node.op_type == "Conv":
        return out_elems * _elements(w[1:])
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return out_elems * x[0 if trans_a else -1]
    return out_elems * x[-1]
