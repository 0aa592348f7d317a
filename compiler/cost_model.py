"""Estimated latency and energy of one inference on a hardware profile, from the ONNX graph.

A roofline per operator, plus what the runtime costs around the arithmetic:

    latency = correction x (call overhead + sum over operators of
              (op overhead + max(compute, bytes moved / bandwidth)))
    compute = fixed cost of its class (per operator + per output element)
              + 2 x MACs / (throughput(format) x efficiency of its class)
    energy  = latency x the profile's active power

- MACs per operator come from ONNX shape inference, as ``stats.count_macs`` counts them (Conv,
  Gemm, MatMul); other operators only move bytes.
- Operator classes: conv (k x k), pointwise (1x1), depthwise, gemm, and matvec (a Gemm/MatMul of
  one row: batch 1). Their efficiency against the profile's peak and their fixed cost, a constant
  per operator and a part per element (for a convolution, of the input patches it packs; for a
  Gemm, of its output: a tiny layer's setup is a fraction of a big one's, and a stem convolution
  from 1 or 3 channels packs little; plus, where the input channels are not a multiple of what the
  kernel's fast path takes, a slower path's cost per output: onnxruntime's x86 int8 convolution
  takes them in fours), come from ``throughput.kernels``, measured per
  runtime and format on single operators (``bench/compile_bench.py --sections host``); a class a
  profile does not list runs at the peak with no fixed cost. A matvec's measured efficiency is in
  effect the rate its weights stream from cache, since it reads every weight once per MAC.
- Operators without MACs that the profile measured (``throughput.elementwise``: Add, Mul, Sigmoid,
  Concat, and Split and Slice priced as Concat) cost a constant plus a part per element they write,
  per runtime and format: they run at rates of their own (a Sigmoid's exponential, an int8 Mul's
  rescaling), two to four times slower per element than a pass through the cache. Others cost the
  pass over their activations below.
- Bytes moved are the operator's weights in the candidate's number format plus its activations
  (inputs and outputs; int8 for statically quantized models, float32 otherwise). Weights that fit
  in the profile's last-level cache (``memory.cache``) stay there between inferences, and an
  operator's activations that fit there pass from one operator to the next inside it, at
  ``memory.cache_bandwidth_gbps`` (free when the profile does not state it; what a MAC operator's
  reading from cache costs is in its class's measured efficiency).
- Throughput is the profile's ``fp32_gflops``/``int8_gops``/``fp16_gflops``; fp16 is computed as
  fp32 unless the profile marks it fast (LiteRT's CPU kernels widen fp16 weights at load time).
- A BatchNormalization that alone reads a Conv's output costs nothing: the runtimes fold it for
  fp32, and the int8 passes fold it before quantizing (``compiler.batchnorm``).
- Static int8 in onnxruntime is a QDQ graph (uint8 activations, int8 weights): operators with an
  int8 kernel (``_INT8_KERNELS``) fuse their QuantizeLinear/DequantizeLinear pairs away and run as
  one dispatch each (a bias Add too, which fp32 fuses into its MatMul), but any other operator (Pow,
  a BatchNormalization nothing folds...) runs in float between a DequantizeLinear per input and a
  QuantizeLinear per output, plus, next to a convolution, two layout Transposes (onnxruntime runs
  int8 convolutions in NHWC). Each of those is one more dispatched operator and one more pass over
  the activations; ``throughput.qdq_island``, where a profile has it, is what one such island was
  measured to cost instead, and ``throughput.qdq_edges`` (a constant and a part per element of the
  graph's inputs and outputs) what quantizing the input, dequantizing the output and the layout
  Transposes around int8 convolutions cost per call. Unfolded BatchNormalizations and int8
  activations (which onnxruntime's x86 kernels cannot take where a tensor has several readers) made
  such islands the reason int8 models ran 1.4-3x slower than fp32 here, until the int8-static pass
  stopped leaving them (docs/benchmarks.md).
- An onnxruntime graph with convolutions, in any format, also pays ``throughput.layout_edges`` per
  call: its fp32 convolutions run in a blocked layout (NCHWc), and its input and output are
  reordered into and out of it (the int8 figure above is measured on top of this).
- Dynamic int8 quantizes each MAC operator's input on every call: one more operator, one more
  pass over that input. A dynamically quantized convolution runs ``ConvInteger``, for which
  onnxruntime's CPU provider has no optimised kernel: measured 20-200x slower than fp32 on the
  model set (bench/compile_bench.py), so it is charged at ``_CONV_INTEGER_SLOWDOWN`` x the fp32 time.
- Accelerators: a LiteRT candidate in a format a counted accelerator of the profile runs (GPU
  delegate: fp16/fp32; NPU: int8) is also estimated there: peak x utilisation, DRAM bandwidth,
  a per-operator and a per-invoke overhead (command submission, synchronisation, copies). The
  lower of that and the CPU estimate is the estimate, and ``Estimate.unit`` says which it assumed:
  a big convolutional net amortises the invoke on the GPU, a tiny MLP stays on the CPU.
- Sparsity and weight clustering are *not* credited: onnxruntime, LiteRT and TFLite Micro run
  dense kernels, so a pruned or clustered model costs as much time as the dense one. Structured
  pruning and low-rank factorisation do count, because they change the graph itself.
- Activations fused into the preceding MAC operator (Relu, Clip, ...) cost no dispatch, nor does a
  bias Add after a MatMul (onnxruntime fuses the pair into a Gemm; in an int8 QDQ graph it runs as
  its own QLinearAdd). A runtime fuses an activation only into an output it alone reads: a SiLU's
  Sigmoid shares its Conv's output with the Mul, so it runs on its own. A Shape of a statically
  shaped tensor, and what is computed from it alone (exporters' Gather/Concat for a Reshape), is
  folded at load time and costs nothing.
- Energy assumes the device runs at ``power.active_w`` for the duration (every runtime here keeps
  its cores busy during an inference, and a phone's GPU or NPU is not modelled apart); so for one
  profile, energy ranks candidates as latency does.

``correction`` is the per-profile factor learned from fleet measurements (median measured over
estimated latency, ``deploy.cost_feedback``); 1.0 until a fleet has reported.

Everything here is a pure function of the graph and the profile; ``analyse`` is the only step
that looks at a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgefleet.compiler import batchnorm, stats
from edgefleet.hardware_profiles.schema import (
    Accelerator,
    DeviceKind,
    EdgeCost,
    HardwareProfile,
    KernelFigure,
    NumberFormat,
    Runtime,
    Speed,
)

# The float operators with multiply-accumulates (``stats.node_macs`` counts them).
_MAC_OPS = frozenset({"Conv", "Gemm", "MatMul"})
# Elementwise activations the runtimes fuse into the MAC operator before them.
_FUSED_AFTER_MAC = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "BatchNormalization"})
# Nodes that only reshape metadata or are folded at load time.
_FREE = frozenset({"Constant", "Shape", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout"})
# Operators onnxruntime's CPU provider runs as int8 kernels in a QDQ graph with uint8 activations
# (what the int8-static pass writes; their Q/DQ pairs fuse away or drop), and those the quantizer
# folds into the QuantizeLinear's range. Read off onnxruntime 1.32's optimised int8 graphs of the
# model set: QLinearConv, QGemm, QLinearMatMul, QLinearAdd, QLinearMul, QLinearSigmoid,
# QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSoftmax, QLinearLeakyRelu,
# NhwcMaxPool, and Resize, Split, Slice, Transpose on uint8 tensors; Pow and BatchNormalization stayed float.
_INT8_KERNELS = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Concat", "GlobalAveragePool", "AveragePool",
                           "MaxPool", "Softmax", "LeakyRelu", "Resize", "Split", "Slice", "Transpose"})
_INT8_ABSORBED = frozenset({"Relu", "Clip"})
# The island ``throughput.qdq_island`` is measured on, a BatchNormalization after a Conv and its Relu
# (a BatchNormalization right after a Conv is folded into it), counted as an island's extra
# operators are counted below: one per input (5), its QuantizeLinear, two Transposes.
_MEASURED_ISLAND_OPS = 8

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
# Accelerator figures when a profile does not state them (sources in docs/benchmarks.md, "Delegates"):
# (utilisation of peak over a network, per-operator us, per-invoke us). A GPU kernel launch costs
# tens of microseconds for a small convolution; submitting a command buffer, waiting for it and
# copying inputs and outputs costs about a millisecond per inference.
_ACCELERATOR_DEFAULTS: dict[str, tuple[float, float, float]] = {
    "gpu": (0.25, 10.0, 1000.0),
    "npu": (0.2, 5.0, 1000.0),
    "dsp": (0.2, 5.0, 1000.0),
}
_CONV_INTEGER_SLOWDOWN = 20.0
# Operators charged with another's ``throughput.elementwise`` figure: Split and Slice copy their input as Concat does.
_ELEMENTWISE_FIGURE = {"Split": "Concat", "Slice": "Concat"}
_ELEMENT_BYTES = {NumberFormat.FP32: 4, NumberFormat.FP16: 2, NumberFormat.INT8: 1, NumberFormat.INT16X8: 1, NumberFormat.INT4: 0.5}
_INT8_FORMATS = (NumberFormat.INT8, NumberFormat.INT16X8, NumberFormat.INT4)


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
    op_class: str = ""
    """For MAC operators: conv, pointwise, depthwise, gemm or matvec (see ``KernelFigure``)."""
    inputs: int = 0
    """Inputs, weights included: in a QDQ graph each gets a DequantizeLinear when the operator stays float."""
    follows_conv: bool = False
    """An input is a convolution's output (an int8 QDQ graph transposes between the two)."""
    output_elements: int = 0
    """Elements of its outputs, which the per-element part of a class's fixed cost, or an elementwise operator's cost, scales with."""
    patch_elements: int = 0
    """For convolutions: elements of the input patches it gathers (output pixels x input channels x kernel area)."""
    group_channels: int = 0
    """For convolutions: input channels per group."""


@dataclass(frozen=True)
class GraphCost:
    """The format-independent analysis of a float ONNX graph."""

    ops: tuple[OpCost, ...]
    edge_elements: int = 0
    """Elements of the graph's inputs and outputs, which an int8 QDQ graph quantizes or dequantizes."""

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
    unit: str = "CPU"
    """Where the estimate assumes the model runs: ``CPU``, or an accelerator, e.g. ``Adreno 750 GPU (fp16)``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": round(self.latency_ms, 6), "energy_mj": round(self.energy_mj, 6),
            "compute_ms": round(self.compute_ms, 6), "memory_ms": round(self.memory_ms, 6),
            "overhead_ms": round(self.overhead_ms, 6), "macs": self.macs, "bytes_moved": self.bytes_moved,
            "correction": self.correction, "unit": self.unit,
        }


def analyse(model: onnx.ModelProto) -> GraphCost:
    """Per-operator MACs, weights and activations of a float ONNX graph (shapes by ONNX shape inference).

    An operator whose shapes cannot be inferred counts no MACs and no activations (logged), so the
    estimate is then a lower bound, as ``stats.count_macs`` is.
    """
    shapes = stats.static_shapes(model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    constants = set(initializers)
    readers = Counter(n for node in graph.node for n in node.input if n)
    readers.update(o.name for o in graph.output)
    conv_outputs: set[str] = set()
    # Tensors written by a MAC operator or by what the runtimes fuse into one: an activation reading
    # such a tensor alone fuses into the operator too, one that shares it with another reader
    # (a SiLU's Sigmoid and Mul) cannot, so it runs as its own kernel.
    mac_outputs: set[str] = set()
    ops: list[OpCost] = []
    for node in graph.node:
        weights = sum(_elements(shapes.get(n)) for n in node.input if n in constants)
        folded = node.op_type == "Shape" and node.input[0] in shapes
        if folded or (node.input and all(not n or n in constants for n in node.input)):
            # Folded at load time (a Shape of a statically shaped tensor too): its output is a weight.
            constants.update(node.output)
            ops.append(OpCost(node.name, node.op_type, 0, weights, 0, dispatch=False))
            continue
        if node.op_type in _FREE:
            ops.append(OpCost(node.name, node.op_type, 0, 0, 0, dispatch=False))
            continue
        if node.op_type == "BatchNormalization" and _folded_into_conv(node, model, constants):
            # Every runtime here, and the int8 passes before quantizing, fold it into the Conv's weights.
            conv_outputs.update(node.output)
            mac_outputs.update(node.output)
            ops.append(OpCost(node.name, node.op_type, 0, weights, 0, dispatch=False))
            continue
        activations = sum(_elements(shapes.get(n)) for n in [*node.input, *node.output] if n and n not in constants)
        macs = stats.node_macs(node, shapes) if node.op_type in _MAC_OPS else 0
        data = next((n for n in node.input if n and n not in constants), "")
        # A bias Add after a MatMul becomes part of a Gemm in float (onnxruntime's MatMulAddFusion);
        # in an int8 QDQ graph it runs as its own QLinearAdd (see _on_cpu).
        bias = node.op_type == "Add" and any(n in constants for n in node.input)
        fused = data in mac_outputs and readers[data] == 1 and (node.op_type in _FUSED_AFTER_MAC or bias)
        follows_conv = any(n in conv_outputs for n in node.input)
        patch_elements, group_channels = _conv_inputs(node, shapes, macs)
        ops.append(OpCost(node.name, node.op_type, macs, weights, activations, dispatch=not fused,
                          op_class=_op_class(node, shapes), inputs=sum(1 for n in node.input if n), follows_conv=follows_conv,
                          output_elements=sum(_elements(shapes.get(n)) for n in node.output if n),
                          patch_elements=patch_elements, group_channels=group_channels))
        if node.op_type == "Conv" or (fused and follows_conv):
            # A fused activation's output is still in the int8 convolution's NHWC layout.
            conv_outputs.update(node.output)
        if node.op_type in _MAC_OPS or fused:
            mac_outputs.update(node.output)
    edges = [i.name for i in graph.input if i.name not in initializers] + [o.name for o in graph.output]
    return GraphCost(tuple(ops), edge_elements=sum(_elements(shapes.get(n)) for n in edges))


def _folded_into_conv(bn: onnx.NodeProto, model: onnx.ModelProto, constants: set[str]) -> bool:
    """Whether ``bn`` is what ``compiler.batchnorm.fold_batchnorm`` folds into the Conv before it."""
    conv = next((n for n in model.graph.node if bn.input[0] in n.output), None)
    folded = batchnorm.foldable_batchnorm(model, conv, constants) if conv is not None else None
    return folded is not None and folded.output[0] == bn.output[0]


def estimate(
    graph: GraphCost,
    profile: HardwareProfile,
    number_format: NumberFormat,
    *,
    runtime: Runtime | str | None = None,
    runtime_quantization: bool = False,
    correction: float = 1.0,
    decoded_weights: bool = False,
) -> Estimate:
    """Latency (ms) and energy (mJ) of one inference of ``graph`` computed in ``number_format`` by
    ``runtime`` (default: the profile's first) on ``profile``: on its CPU, or on an accelerator its
    LiteRT delegate reaches when that is faster.

    ``decoded_weights``: the weights are stored as lookup-table indices (TFLite Micro's DECODE) and
    expanded into RAM at every inference, which reads the indices and writes every weight once more.
    """
    runtime = Runtime(runtime) if runtime is not None else profile.runtimes[0]
    cpu = _on_cpu(graph, profile, number_format, runtime, runtime_quantization, correction, decoded_weights)
    if runtime is not Runtime.LITERT or runtime_quantization:
        return cpu  # a delegate takes whole int8 or float graphs, not ones that quantize on the fly
    options = [cpu, *(_on_accelerator(graph, profile, a, number_format, correction) for a in usable_accelerators(profile, number_format))]
    return min(options, key=lambda e: e.latency_ms)


def usable_accelerators(profile: HardwareProfile, number_format: NumberFormat) -> list[Accelerator]:
    """The profile's accelerators that LiteRT can place a ``number_format`` model on and that the profile counts."""
    return [a for a in profile.accelerators if a.counted and number_format in a.formats]


def _on_cpu(graph: GraphCost, profile: HardwareProfile, number_format: NumberFormat, runtime: Runtime,
            runtime_quantization: bool, correction: float, decoded_weights: bool) -> Estimate:
    ops_per_s = _throughput(profile, number_format) * 1e9
    bandwidth = profile.memory.bandwidth_gbps * 1e9
    call_us, op_us = _overheads(profile)
    weight_bytes = _ELEMENT_BYTES.get(number_format, 4)
    if number_format is NumberFormat.FP16 and profile.formats.get(NumberFormat.FP16) is not Speed.FAST:
        weight_bytes = 4  # widened to fp32 at load time, so fp32 is what each inference reads
    static_int8 = number_format in _INT8_FORMATS and not runtime_quantization
    activation_bytes = 1 if static_int8 else 4
    cache = profile.memory.cache
    cache_bandwidth = profile.memory.cache_bandwidth_gbps * 1e9 if profile.memory.cache_bandwidth_gbps else None
    if cache is not None and sum(o.weight_elements for o in graph.ops) * weight_bytes <= cache:
        weight_bytes = 0  # they stay in cache between inferences: no memory traffic
    qdq = static_int8 and runtime is Runtime.ONNXRUNTIME
    kernel_format = NumberFormat.INT8 if number_format in _INT8_FORMATS else NumberFormat.FP32
    if number_format is NumberFormat.FP16 and profile.formats.get(NumberFormat.FP16) is Speed.FAST:
        kernel_format = NumberFormat.FP16
    t = profile.throughput
    figures = {(k.op, k.format): k for k in t.kernels if k.runtime is runtime}
    elementwise = {(e.op, e.format): e for e in t.elementwise if e.runtime is runtime}
    # Only a static int8 graph runs its elementwise operators on int8 tensors.
    elementwise_format = NumberFormat.INT8 if static_int8 else NumberFormat.FP32
    compute = memory = 0.0
    overhead = call_us * 1e-6
    if runtime is Runtime.ONNXRUNTIME and t.layout_edges is not None and any(o.op_type == "Conv" for o in graph.ops):
        overhead += _edge_s(t.layout_edges, graph)  # reordering into and out of the convolutions' blocked layout
    if qdq:  # quantizing the input, dequantizing the output, transposing around int8 convolutions
        overhead += _edge_s(t.qdq_edges, graph) if t.qdq_edges is not None else 2 * op_us * 1e-6
    moved = 0
    for op in graph.ops:
        # In a QDQ graph only Relu and Clip fuse into the int8 operator before them: the rest run
        # on their own, as int8 kernels or as float islands.
        unfused = qdq and op.activation_elements > 0 and op.op_type not in _INT8_ABSORBED | _FREE
        island = unfused and op.op_type not in _INT8_KERNELS
        if not op.dispatch and op.macs == 0 and not unfused:
            continue
        # Activations that fit in cache are written by one operator and read by the next inside it.
        in_cache = cache is not None and op.activation_elements * 4 <= cache
        through = cache_bandwidth if in_cache else bandwidth
        activations = 0 if through is None else op.activation_elements * activation_bytes
        op_bytes = int(op.weight_elements * weight_bytes + activations)
        c = _compute_s(op, figures.get((op.op_class, kernel_format)), ops_per_s)
        figure = elementwise.get((_ELEMENTWISE_FIGURE.get(op.op_type, op.op_type), elementwise_format))
        if figure is not None and not island:
            # Measured with its activations in cache, so it replaces the pass at the cache rate (see m below).
            c = (figure.fixed_us + figure.ns_per_element * op.output_elements * 1e-3) * 1e-6
        if runtime_quantization and op.op_type == "Conv":
            fp32 = _compute_s(op, figures.get((op.op_class, NumberFormat.FP32)), _throughput(profile, NumberFormat.FP32) * 1e9)
            c = fp32 * _CONV_INTEGER_SLOWDOWN
        m = op.weight_elements * weight_bytes / bandwidth + (activations / through if through else 0.0)
        if op.dispatch or unfused:
            overhead += op_us * 1e-6
        # An island runs in float between a DequantizeLinear per input and a QuantizeLinear per output,
        # and next to an NHWC int8 convolution, a Transpose out of and back into its layout.
        extra = op.inputs + 1 + (2 if op.follows_conv else 0)
        measured_island = t.qdq_island
        if island and measured_island is not None:
            # Measured on a BatchNormalization after a Conv and Relu; other islands in proportion to their operators.
            scale = extra / _MEASURED_ISLAND_OPS
            overhead += scale * (measured_island.fixed_us + measured_island.ns_per_element * op.activation_elements * 1e-3) * 1e-6
        elif island:
            overhead += extra * op_us * 1e-6
            if through:  # the float operator, and each conversion reads one byte or float and writes the other
                m += op.activation_elements * (3 + extra * 2.5) / through
        if runtime_quantization and op.macs:
            # DynamicQuantizeLinear: one more operator, reading the float input and writing int8.
            overhead += op_us * 1e-6
            m += op.activation_elements * 5 / through if through else 0.0
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
    return _estimate(compute, memory, overhead, graph, moved, profile, correction, "CPU")


def _on_accelerator(graph: GraphCost, profile: HardwareProfile, accelerator: Accelerator, number_format: NumberFormat,
                    correction: float) -> Estimate:
    """The same graph run whole by a LiteRT delegate on ``accelerator`` (it takes every operator: the
    GPU delegate's op set covers the model set's convolutions, pooling and activations)."""
    utilisation, op_us, invoke_us = _ACCELERATOR_DEFAULTS[accelerator.kind]
    utilisation = accelerator.utilisation or utilisation
    op_us = accelerator.op_overhead_us if accelerator.op_overhead_us is not None else op_us
    invoke_us = accelerator.invoke_overhead_us if accelerator.invoke_overhead_us is not None else invoke_us
    # peak_gops is the first listed (fastest) format's; a GPU's fp32 runs at half its fp16 rate.
    peak = accelerator.peak_gops * (1.0 if number_format is accelerator.formats[0] else 0.5)
    ops_per_s = peak * utilisation * 1e9
    bandwidth = profile.memory.bandwidth_gbps * 1e9  # the SoC's DRAM, shared with the CPU
    element = _ELEMENT_BYTES.get(number_format, 4)
    compute = memory = 0.0
    overhead = invoke_us * 1e-6
    moved = 0
    for op in graph.ops:
        if not op.dispatch and op.macs == 0:
            continue
        op_bytes = int((op.weight_elements + op.activation_elements) * element)
        c, m = 2 * op.macs / ops_per_s, op_bytes / bandwidth
        overhead += op_us * 1e-6 if op.dispatch else 0.0
        moved += op_bytes
        if c >= m:
            compute += c
        else:
            memory += m
    unit = f"{accelerator.name} {accelerator.kind.upper()} ({number_format.value})"
    return _estimate(compute, memory, overhead, graph, moved, profile, correction, unit)


def _estimate(compute: float, memory: float, overhead: float, graph: GraphCost, moved: int, profile: HardwareProfile,
              correction: float, unit: str) -> Estimate:
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
        unit=unit,
    )


def _edge_s(cost: EdgeCost, graph: GraphCost) -> float:
    """Seconds a graph pays once per call at its edges: a constant and a part per element of its inputs and outputs."""
    return (cost.fixed_us + cost.ns_per_element * graph.edge_elements * 1e-3) * 1e-6


def _compute_s(op: OpCost, figure: KernelFigure | None, ops_per_s: float) -> float:
    """Seconds of arithmetic: the class's fixed cost (per operator, per output element, per input patch
    element, and the slower path of unaligned input channels) plus its MACs at the class's share of the peak."""
    if not op.macs:
        return 0.0
    if figure is None:
        return 2 * op.macs / ops_per_s
    per_output = figure.ns_per_output
    if op.group_channels % figure.channel_multiple:
        per_output += figure.ns_per_output_unaligned
    fixed = figure.fixed_us * 1e-6 + (per_output * op.output_elements + figure.ns_per_patch_element * op.patch_elements) * 1e-9
    return fixed + 2 * op.macs / (ops_per_s * figure.efficiency)


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


def _op_class(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> str:
    """conv, pointwise, depthwise, gemm or matvec for a MAC operator ("" otherwise or when shapes are unknown)."""
    if node.op_type not in _MAC_OPS:
        return ""
    out = shapes.get(node.output[0])
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if out is None or w is None:
        return ""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1 and w[1] == 1:
            return "depthwise"
        return "pointwise" if _elements(w[2:]) == 1 and group == 1 else "conv"
    return "matvec" if _elements(out[:-1]) == 1 else "gemm"


def _conv_inputs(node: onnx.NodeProto, shapes: Mapping[str, list[int]], macs: int) -> tuple[int, int]:
    """A Conv's (input patch elements, input channels per group), from its weights' shape [out, in/group,
    kH, kW]: the patches it gathers are its MACs over its output channels per group. (0, 0) when the
    shape is unknown or ``node`` is not a Conv."""
    w = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    if not w or len(w) < 2 or not macs:
        return 0, 0
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return macs * group // w[0], w[1]


def _elements(shape: list[int] | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 0
