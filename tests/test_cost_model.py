"""The cost model is a pure function of a graph and a profile; the fleet's benchmarks correct it per profile."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import AgentProcess, Watcher, clear_retained
from onnx import numpy_helper, parser

from edgefleet.agent import topics
from edgefleet.agent.package import read_manifest
from edgefleet.agent.transport import BrokerURL
from edgefleet.compiler import cost_model, model_zoo
from edgefleet.compiler.compile import compile_model
from edgefleet.deploy.benchmark import request_benchmark
from edgefleet.deploy.cost_feedback import (
    Observation,
    correction_factors,
    corrections_from_store,
)
from edgefleet.deploy.push import clear_package, describe_package
from edgefleet.deploy.store import TelemetryStore
from edgefleet.hardware_profiles import load_profile
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat, Runtime


def mlp(hidden: int = 32) -> onnx.ModelProto:
    """x[1,16] -> Gemm -> Relu -> Flatten -> Gemm -> [1,4], with random weights."""
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,16] x) => (float[1,4] y) {
            h = Gemm(x, w1, b1)
            r = Relu(h)
            f = Flatten(r)
            y = Gemm(f, w2, b2)
        }""")
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (16, hidden)), ("b1", (hidden,)), ("w2", (hidden, 4)), ("b2", (4,))):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return model


def board(**changes: Any) -> HardwareProfile:
    fields: dict[str, Any] = {
        "name": "test-board", "display_name": "Test board", "kind": "sbc",
        "cpu": {"arch": "aarch64", "core": "Cortex-A53", "cores": 4, "clock_mhz": 1000},
        "memory": {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2},
        "runtimes": ["onnxruntime"], "formats": {"fp32": "supported", "int8": "fast", "fp16": "supported"},
        "throughput": {"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0, "call_overhead_us": 0},
        "power": {"idle_w": 1, "active_w": 3},
        "sources": [{"title": "test", "url": "https://example.com/board"}],
    }
    fields.update(changes)
    return HardwareProfile.model_validate(fields)


def test_macs_weights_and_dispatches_are_counted_per_operator() -> None:
    g = cost_model.analyse(mlp(32))
    assert [o.op_type for o in g.ops] == ["Gemm", "Relu", "Flatten", "Gemm"]
    assert g.macs == 16 * 32 + 32 * 4
    gemm = g.ops[0]
    assert gemm.weight_elements == 16 * 32 + 32 and gemm.activation_elements == 16 + 32
    # Relu is fused into the Gemm before it and Flatten is free: two kernels run.
    assert g.dispatched == 2 and not g.ops[1].dispatch and not g.ops[2].dispatch


def test_compute_bound_latency_follows_throughput_and_int8_is_faster_where_it_is_fast() -> None:
    g = cost_model.analyse(mlp(2048))
    fp32 = cost_model.estimate(g, board(), NumberFormat.FP32)
    int8 = cost_model.estimate(g, board(), NumberFormat.INT8)
    assert fp32.latency_ms > int8.latency_ms
    # fp16 on a board that widens it to fp32 costs what fp32 costs.
    assert cost_model.estimate(g, board(), NumberFormat.FP16).latency_ms == pytest.approx(fp32.latency_ms)
    assert fp32.energy_mj == pytest.approx(fp32.latency_ms * 3)  # active_w = 3 W, ms x W = mJ


def test_memory_bound_weights_are_free_when_they_fit_in_cache() -> None:
    g = cost_model.analyse(mlp(2048))
    dram = cost_model.estimate(g, board(), NumberFormat.FP32)
    cached = cost_model.estimate(g, board(memory={"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2, "cache": "4 MiB"}),
                                 NumberFormat.FP32)
    assert cached.bytes_moved < dram.bytes_moved and cached.latency_ms <= dram.latency_ms


def test_dynamic_quantization_costs_an_operator_per_layer_and_corrections_scale_linearly() -> None:
    g = cost_model.analyse(mlp(32))
    slow = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 10, "call_overhead_us": 5})
    fp32 = cost_model.estimate(g, slow, NumberFormat.FP32)
    static = cost_model.estimate(g, slow, NumberFormat.INT8)
    dynamic = cost_model.estimate(g, slow, NumberFormat.INT8, runtime_quantization=True)
    assert dynamic.overhead_ms == pytest.approx(fp32.overhead_ms + 2 * 0.010)  # a DynamicQuantizeLinear per Gemm
    assert static.overhead_ms == pytest.approx(fp32.overhead_ms + 2 * 0.010)  # QDQ: quantize in, dequantize out
    assert cost_model.estimate(g, slow, NumberFormat.INT8, correction=2.0).latency_ms == pytest.approx(2 * static.latency_ms)


def test_default_overheads_come_from_the_clock_and_a_microcontroller_dispatches_cheaply() -> None:
    g = cost_model.analyse(mlp(32))
    mcu = load_profile("nucleo-l4r5zi")
    e = cost_model.estimate(g, mcu, NumberFormat.INT8)
    assert e.overhead_ms == pytest.approx((2000 + 2 * 300) / 120 / 1000)
    assert e.compute_ms > 0


def convs(*, bn_after_relu: bool = False) -> onnx.ModelProto:
    """x[1,8,16,16] -> 3x3 Conv -> BatchNormalization -> Relu -> depthwise 3x3 -> 1x1 Conv -> pool -> Gemm of one row
    (with ``bn_after_relu``, Conv -> Relu -> BatchNormalization: nothing folds that BatchNormalization)."""
    first = "b = Relu(a)\n            r = BatchNormalization(b, s, o, m, v)" if bn_after_relu else \
        "b = BatchNormalization(a, s, o, m, v)\n            r = Relu(b)"
    model = parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,16,16] x) => (float[1,4] y) {{
            a = Conv <pads = [1,1,1,1]> (x, w1)
            {first}
            d = Conv <pads = [1,1,1,1], group = 8> (r, w2)
            p = Conv(d, w3)
            q = GlobalAveragePool(p)
            f = Flatten(q)
            y = Gemm(f, w4)
        }}""")
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (8, 8, 3, 3)), ("s", (8,)), ("o", (8,)), ("m", (8,)), ("v", (8,)), ("w2", (8, 1, 3, 3)),
                        ("w3", (16, 8, 1, 1)), ("w4", (16, 4))):
        model.graph.initializer.append(numpy_helper.from_array(np.abs(rng.standard_normal(shape)).astype(np.float32), name))
    return model


def test_mac_operators_are_classified_by_shape() -> None:
    g = cost_model.analyse(convs())
    assert [o.op_class for o in g.ops if o.macs] == ["conv", "depthwise", "pointwise", "matvec"]
    assert [o.op_class for o in cost_model.analyse(mlp(32)).ops if o.macs] == ["matvec", "matvec"]


def test_a_kernel_figure_sets_its_class_rate_and_fixed_cost_for_its_runtime_only() -> None:
    g = cost_model.analyse(convs())
    fast_memory = {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 1000}
    plain = board(memory=fast_memory)
    slow_depthwise = board(memory=fast_memory,
                           throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0, "call_overhead_us": 0,
                                       "kernels": [{"runtime": "onnxruntime", "op": "depthwise", "format": "fp32",
                                                    "efficiency": 0.1, "fixed_us": 7}]})
    depthwise_macs = next(o.macs for o in g.ops if o.op_class == "depthwise")
    base = cost_model.estimate(g, plain, NumberFormat.FP32)
    slow = cost_model.estimate(g, slow_depthwise, NumberFormat.FP32)
    # At 5 GFLOPS and 1 TB/s the depthwise layer is compute-bound either way: its time grows by 9x its MACs' plus 7 us.
    assert slow.compute_ms - base.compute_ms == pytest.approx((2 * depthwise_macs / 5e9 * 9 + 7e-6) * 1e3)
    assert cost_model.estimate(g, slow_depthwise, NumberFormat.FP32, runtime=Runtime.LITERT).latency_ms == pytest.approx(base.latency_ms)


def test_a_batchnorm_right_after_a_conv_is_folded_and_costs_nothing_even_in_int8() -> None:
    """The int8 passes fold it into the Conv before quantizing (compiler.batchnorm), as every runtime does for fp32."""
    g = cost_model.analyse(convs())
    bn = next(o for o in g.ops if o.op_type == "BatchNormalization")
    assert not bn.dispatch and bn.activation_elements == 0
    costly = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 1, "call_overhead_us": 0,
                               "qdq_island": {"fixed_us": 20, "ns_per_element": 10}})
    fp32 = cost_model.estimate(g, costly, NumberFormat.FP32)
    ort = cost_model.estimate(g, costly, NumberFormat.INT8, runtime=Runtime.ONNXRUNTIME)
    assert fp32.overhead_ms == pytest.approx(0.005)  # four MAC operators and the pool; Relu and BN fused, Flatten free
    assert ort.overhead_ms == pytest.approx(0.005 + 0.002)  # the same five, and Q and DQ at the graph's edges


def test_onnxruntime_int8_pays_for_the_float_islands_of_its_qdq_graph() -> None:
    """A BatchNormalization nothing folds stays float in an int8 QDQ graph: a DequantizeLinear per
    input, a QuantizeLinear, and two layout Transposes next to the int8 Conv (whose Relu it follows)."""
    g = cost_model.analyse(convs(bn_after_relu=True))
    costly = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 1, "call_overhead_us": 0})
    ort = cost_model.estimate(g, costly, NumberFormat.INT8, runtime=Runtime.ONNXRUNTIME)
    litert = cost_model.estimate(g, costly, NumberFormat.INT8, runtime=Runtime.LITERT)
    # The five kernels, Q and DQ at the graph's edges, and the BN island (itself, 5 DequantizeLinear,
    # 1 QuantizeLinear, 2 Transposes).
    assert ort.overhead_ms == pytest.approx(0.005 + 0.002 + 0.009)
    assert litert.overhead_ms == pytest.approx(0.005)
    # A profile that measured what such an island costs: that figure replaces the modelled operators.
    measured = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 1, "call_overhead_us": 0,
                                 "qdq_island": {"fixed_us": 20, "ns_per_element": 10}})
    bn = next(o for o in g.ops if o.op_type == "BatchNormalization")
    assert bn.follows_conv and bn.inputs == 5
    island = cost_model.estimate(g, measured, NumberFormat.INT8, runtime=Runtime.ONNXRUNTIME)
    # The BN after a Conv's Relu has exactly the 8 extra operators the figure was measured on.
    assert island.overhead_ms == pytest.approx(0.005 + 0.002 + 0.001 + 0.020 + bn.activation_elements * 1e-8 * 1e3)


def test_an_int8_bias_add_and_residual_add_are_int8_kernels_not_islands() -> None:
    """With uint8 activations onnxruntime runs Add as QLinearAdd: one more dispatch, no float island."""
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,8,8] x) => (float[1,8,8,8] y) {
            a = Conv <pads = [1,1,1,1]> (x, w)
            y = Add(a, x)
        }""")
    model.graph.initializer.append(numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"))
    g = cost_model.analyse(model)
    costly = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 1, "call_overhead_us": 0})
    assert cost_model.estimate(g, costly, NumberFormat.INT8).overhead_ms == pytest.approx(0.002 + 0.002)
    dense = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,16] x) => (float[1,4] y) { m = MatMul(x, w)  y = Add(m, b) }""")
    dense.graph.initializer.extend([numpy_helper.from_array(np.ones((16, 4), np.float32), "w"),
                                    numpy_helper.from_array(np.ones(4, np.float32), "b")])
    mm = cost_model.analyse(dense)
    # In fp32 the bias Add fuses into the MatMul (a Gemm); in int8 it runs as its own QLinearAdd.
    assert cost_model.estimate(mm, costly, NumberFormat.FP32).overhead_ms == pytest.approx(0.001)
    assert cost_model.estimate(mm, costly, NumberFormat.INT8).overhead_ms == pytest.approx(0.002 + 0.002)


def test_measured_graph_edges_replace_the_two_dispatches_of_an_int8_graph_and_add_conv_layout_reorders() -> None:
    plain_throughput = {"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 1, "call_overhead_us": 0}
    edges = {**plain_throughput, "qdq_edges": {"fixed_us": 5, "ns_per_element": 2}, "layout_edges": {"fixed_us": 3, "ns_per_element": 1}}
    measured, plain = board(throughput=edges), board(throughput=plain_throughput)
    g = cost_model.analyse(convs())
    assert g.edge_elements == 8 * 16 * 16 + 4  # the input feature map and the class scores

    def gap(f: NumberFormat, graph: cost_model.GraphCost = g) -> float:
        return cost_model.estimate(graph, measured, f).overhead_ms - cost_model.estimate(graph, plain, f).overhead_ms

    layout = 3e-3 + 1e-6 * g.edge_elements
    assert gap(NumberFormat.FP32) == pytest.approx(layout)
    assert gap(NumberFormat.INT8) == pytest.approx(layout + 5e-3 + 2e-6 * g.edge_elements - 2e-3)  # not two dispatches of 1 us
    # No convolution, no blocked layout; and LiteRT pays neither.
    dense = cost_model.analyse(mlp())
    assert gap(NumberFormat.FP32, dense) == 0
    assert gap(NumberFormat.INT8, dense) == pytest.approx(5e-3 + 2e-6 * dense.edge_elements - 2e-3)
    assert cost_model.estimate(g, measured, NumberFormat.FP32, runtime=Runtime.LITERT).overhead_ms == pytest.approx(
        cost_model.estimate(g, plain, NumberFormat.FP32, runtime=Runtime.LITERT).overhead_ms)


def test_a_convolution_pays_per_input_patch_element_and_for_input_channels_off_the_fast_path() -> None:
    """Stems from 1 or 3 channels pack little (the per-patch part), but onnxruntime's x86 int8 kernel
    takes input channels in fours, and anything else costs a slower path per output element."""
    fast_memory = {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 1000}
    plain = board(memory=fast_memory)
    g = cost_model.analyse(convs())
    conv = next(o for o in g.ops if o.op_class == "conv")  # 8 -> 8 channels, 3x3, on 16x16
    assert (conv.group_channels, conv.patch_elements, conv.output_elements) == (8, 16 * 16 * 8 * 9, 8 * 16 * 16)
    for multiple, unaligned in ((4, False), (16, True)):
        figure = {"runtime": "onnxruntime", "op": "conv", "format": "fp32", "efficiency": 1, "ns_per_patch_element": 2,
                  "channel_multiple": multiple, "ns_per_output_unaligned": 5}
        measured = board(memory=fast_memory, throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0,
                                                          "call_overhead_us": 0, "kernels": [figure]})
        extra = cost_model.estimate(g, measured, NumberFormat.FP32).compute_ms - cost_model.estimate(g, plain, NumberFormat.FP32).compute_ms
        assert extra == pytest.approx((2e-9 * conv.patch_elements + unaligned * 5e-9 * conv.output_elements) * 1e3)


def test_a_per_output_element_fixed_cost_makes_small_layers_cheaper_than_big_ones() -> None:
    fast_memory = {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 1000}
    figure = {"runtime": "onnxruntime", "op": "conv", "format": "fp32", "efficiency": 1, "fixed_us": 2, "ns_per_output": 3}
    per_element = board(memory=fast_memory, throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0,
                                                         "call_overhead_us": 0, "kernels": [figure]})
    plain = board(memory=fast_memory)
    g = cost_model.analyse(convs())
    conv = next(o for o in g.ops if o.op_class == "conv")
    assert conv.output_elements == 8 * 16 * 16
    extra = cost_model.estimate(g, per_element, NumberFormat.FP32).compute_ms - cost_model.estimate(g, plain, NumberFormat.FP32).compute_ms
    assert extra == pytest.approx((2e-6 + 3e-9 * 8 * 16 * 16) * 1e3)


def silu_head() -> onnx.ModelProto:
    """A Conv whose output two operators read (SiLU: x * Sigmoid(x)), a reshape computed from Shape as
    exporters write it, and a Split/Concat, as in yolo_detector."""
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,16,16] x) => (float[1,8,256] y) {
            c = Conv <pads = [1,1,1,1]> (x, w)
            s = Sigmoid(c)
            a = Mul(c, s)
            h1, h2 = Split <axis = 1> (a)
            m = Concat <axis = 1> (h2, h1)
            shape = Shape(m)
            batch = Gather <axis = 0> (shape, zero)
            target = Concat <axis = 0> (batch, rest)
            y = Reshape(m, target)
        }""")
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"),
                                    numpy_helper.from_array(np.array([0], np.int64), "zero"),
                                    numpy_helper.from_array(np.array([8, 256], np.int64), "rest")])
    return model


def test_an_activation_sharing_its_input_with_another_reader_is_not_fused_and_static_shapes_fold() -> None:
    g = cost_model.analyse(silu_head())
    ops = {o.op_type: o for o in g.ops}
    # onnxruntime fuses an activation into the Conv before it only when it is that output's one reader.
    assert ops["Sigmoid"].dispatch and ops["Mul"].dispatch
    assert ops["Sigmoid"].output_elements == 8 * 16 * 16
    # The Shape of a statically shaped tensor, and what is computed from it, fold at load time.
    assert not ops["Shape"].dispatch and not ops["Gather"].dispatch
    assert [o.op_type for o in g.ops if o.dispatch] == ["Conv", "Sigmoid", "Mul", "Split", "Concat"]
    only_child = cost_model.analyse(convs())
    assert not next(o for o in only_child.ops if o.op_type == "Relu").dispatch


def test_an_elementwise_figure_prices_its_operator_per_element_written_in_its_format() -> None:
    g = cost_model.analyse(silu_head())
    elements = 8 * 16 * 16
    throughput = {"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0, "call_overhead_us": 0}
    # Activations in a cache whose rate the profile does not state pass between operators for free.
    cached = {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2, "cache": "1 MiB"}
    plain = board(memory=cached, throughput=throughput)
    figures = [{"runtime": "onnxruntime", "op": "Sigmoid", "format": "fp32", "fixed_us": 1, "ns_per_element": 2},
               {"runtime": "onnxruntime", "op": "Concat", "format": "int8", "fixed_us": 3, "ns_per_element": 0.5}]
    measured = board(memory=cached, throughput={**throughput, "elementwise": figures})
    sigmoid = cost_model.estimate(g, measured, NumberFormat.FP32).compute_ms - cost_model.estimate(g, plain, NumberFormat.FP32).compute_ms
    assert sigmoid == pytest.approx((1e-6 + 2e-9 * elements) * 1e3)
    # Split and Slice copy as Concat does: the Concat figure prices both, in int8 only.
    copies = cost_model.estimate(g, measured, NumberFormat.INT8).compute_ms - cost_model.estimate(g, plain, NumberFormat.INT8).compute_ms
    assert copies == pytest.approx(2 * (3e-6 + 0.5e-9 * elements) * 1e3)
    assert cost_model.estimate(g, measured, NumberFormat.INT8, runtime=Runtime.LITERT).latency_ms == pytest.approx(
        cost_model.estimate(g, plain, NumberFormat.INT8, runtime=Runtime.LITERT).latency_ms)


def test_fp16_on_a_counted_phone_gpu_beats_cpu_int8_for_a_big_conv_net_but_not_for_a_tiny_mlp(digits_mlp) -> None:  # type: ignore[no-untyped-def]
    phone = load_profile("android-midrange")
    big = cost_model.analyse(model_zoo.resnet18())  # 1.8 GMAC at 224x224
    gpu = cost_model.estimate(big, phone, NumberFormat.FP16, runtime=Runtime.LITERT)
    cpu_int8 = cost_model.estimate(big, phone, NumberFormat.INT8, runtime=Runtime.LITERT)
    assert gpu.unit == "Adreno 642L GPU (fp16)" and cpu_int8.unit == "CPU"
    assert gpu.latency_ms < cpu_int8.latency_ms
    # onnxruntime has no GPU delegate here: the same fp16 model stays on the CPU.
    assert cost_model.estimate(big, phone, NumberFormat.FP16, runtime=Runtime.ONNXRUNTIME).unit == "CPU"

    tiny = cost_model.analyse(onnx.load(digits_mlp.onnx_path))
    int8 = cost_model.estimate(tiny, phone, NumberFormat.INT8, runtime=Runtime.LITERT)
    fp16 = cost_model.estimate(tiny, phone, NumberFormat.FP16, runtime=Runtime.LITERT)
    assert int8.unit == fp16.unit == "CPU"  # a millisecond to invoke the GPU is more than the whole MLP on the CPU
    assert int8.latency_ms < fp16.latency_ms


def test_an_accelerator_not_counted_is_never_assumed_and_must_say_why() -> None:
    for name in ("android-flagship", "android-midrange"):
        phone = load_profile(name)
        assert cost_model.usable_accelerators(phone, NumberFormat.INT8) == []  # the QNN delegate is not shipped
        assert [a.kind for a in cost_model.usable_accelerators(phone, NumberFormat.FP16)] == ["gpu"]
    npu = {"name": "NPU", "kind": "npu", "delegate": "qnn", "formats": ["int8"], "peak_gops": 1000, "counted": False}
    with pytest.raises(ValueError, match="not_counted_because"):
        board(accelerators=[npu])


def test_a_kernel_or_elementwise_figure_listed_twice_is_an_error() -> None:
    figure = {"runtime": "onnxruntime", "op": "conv", "format": "int8", "efficiency": 1.0}
    with pytest.raises(ValueError, match="throughput.kernels lists onnxruntime/conv/int8 more than once"):
        board(throughput={"fp32_gflops": 5, "int8_gops": 10, "kernels": [figure, figure]})
    add = {"runtime": "onnxruntime", "op": "Add", "format": "fp32", "ns_per_element": 0.2}
    with pytest.raises(ValueError, match="throughput.elementwise lists onnxruntime/Add/fp32 more than once"):
        board(throughput={"fp32_gflops": 5, "int8_gops": 10, "elementwise": [add, add]})


def test_corrections_are_the_median_ratio_per_profile() -> None:
    obs = [Observation("pi", "a", 3.0, 1.0), Observation("pi", "b", 2.0, 1.0), Observation("pi", "a", 100.0, 1.0),
           Observation("phone", "c", 0.5, 1.0)]
    got = correction_factors(obs)
    assert got["pi"].factor == 3.0 and got["pi"].reports == 3 and got["pi"].packages == 2
    assert got["phone"].factor == 0.5
    assert correction_factors(obs, min_reports=2).keys() == {"pi"}


def test_a_fleet_benchmark_corrects_the_next_compile(digits_mlp, signing_key, broker_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real agent benchmarks a compiled package, the report goes into a real store, the next compile uses it."""
    profile = "generic-linux-x86_64"
    out = tmp_path / "packages"
    (first,) = compile_model(digits_mlp.onnx_path, [profile], calibration=digits_mlp.calibration_path,
                             out_dir=out, key_path=signing_key[0], name="digits", objective="latency")
    estimate = first.manifest.report["cost_estimate"]
    assert estimate["correction"] == 1.0 and estimate["latency_ms"] > 0
    device = f"test-cost-{uuid.uuid4().hex[:8]}"
    watcher = Watcher(broker_url, topics.state(device))
    agent = AgentProcess(broker_url, device, tmp_path / "data", signing_key[1], profile=profile).start()
    url = BrokerURL.parse(broker_url)
    try:
        # Benchmark requests are not retained: ask once the agent is listening.
        watcher.wait_for(lambda t, m: m.get("status") == "online", timeout=60)
        report = request_benchmark(first.package_path, broker=url, device=device, runs=20, warmup=2, timeout=120)
    finally:
        watcher.close()
        agent.stop()
        clear_package(url, describe_package(first.package_path)[1])
        clear_retained(broker_url, topics.state(device))
    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.record_benchmark(report)
        found = corrections_from_store(store, package_dirs=[out])
    factor = found[profile].factor
    assert found[profile].reports == 1
    assert factor == pytest.approx(report.latency_ms.p50 / estimate["latency_ms"])

    (second,) = compile_model(digits_mlp.onnx_path, [profile], calibration=digits_mlp.calibration_path,
                              out_dir=tmp_path / "again", key_path=signing_key[0], name="digits", objective="latency",
                              corrections={profile: factor})
    corrected = read_manifest(second.package_path).report["cost_estimate"]
    assert corrected["correction"] == factor
    assert corrected["latency_ms"] == pytest.approx(report.latency_ms.p50, rel=1e-3)  # the manifest rounds estimates


def test_simulated_reports_do_not_correct_a_real_device_profile(tmp_path: Path) -> None:
    from edgefleet.deploy.cost_feedback import observations
    from edgefleet.deploy.store import BenchmarkRow

    def row(profile: str, simulated: bool) -> BenchmarkRow:
        return BenchmarkRow(device_id="d", profile=profile, simulated=simulated, package_id="p", model_name="m",
                            model_version="1", runtime="onnxruntime", runtime_version="1", mean_ms=2, p50_ms=2, p90_ms=2,
                            p99_ms=2, throughput_ips=500, peak_rss_mb=1, power_w=1, power_source="model", energy_mj=1,
                            ts=0, report_json="{}")

    def host(name: str) -> bool:
        return name == "generic-linux-x86_64"

    got = observations([row("raspberry-pi-4", True), row("generic-linux-x86_64", True), row("raspberry-pi-4", False)],
                       {"p": 1.0}, trust_simulated=host)
    assert [(o.profile, o.measured_ms) for o in got] == [("generic-linux-x86_64", 2), ("raspberry-pi-4", 2)]
