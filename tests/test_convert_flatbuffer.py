"""Whole-file TFLite passes (tflite/flatbuffer.py) and the int8 files they make possible, run in LiteRT."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from onnx import helper, numpy_helper

from edgefleet.compiler import calibration, fidelity, model_zoo
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.tflite import convert, flatbuffer
from edgefleet.compiler.tflite.quantize import quantize
from edgefleet.compiler.tflite.verify import run_tflite
from edgefleet.compiler.tflm import micro

RNG = np.random.default_rng(0)


def _graph(nodes: list[onnx.NodeProto], x: list[int], y: list[int], **inits: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(shape: list[int], n: int = 16) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _op_names(data: bytes) -> list[str]:
    model = flatbuffer.load(data)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[model.operatorCodes[op.opcodeIndex].builtinCode] for op in model.subgraphs[0].operators]


def _sqnr(fp32: bytes, int8: bytes, feeds: list[dict[str, np.ndarray]]) -> float:
    ref, got = run_tflite(fp32, feeds)["y"], run_tflite(int8, feeds)["y"]
    return fidelity.sqnr_db(ref, got.astype(np.float32)) or float("inf")


def test_int8_of_a_model_over_256_kb_keeps_its_weights() -> None:
    # ai-edge-quantizer writes weights past 256 KB after the flatbuffer (buffer offsets); the float
    # interface rewrite must carry them over, or LiteRT fails with "Input tensor N lacks data".
    m = _graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [1, 512], [1, 640],
               w=RNG.standard_normal((640, 512)) / 20, b=RNG.standard_normal(640))
    fp32 = convert(m).tflite_bytes
    feeds = _feeds([1, 512])
    q = quantize(fp32, "int8", calibration=feeds)
    raw = schema.ModelT.InitFromPackedBuf(q.tflite_bytes, 0)
    assert all(b.offset == 0 for b in raw.buffers), "every buffer inline after the float interface"
    assert flatbuffer.size_breakdown(q.tflite_bytes).constants["INT8"] == 640 * 512
    assert _sqnr(fp32, q.tflite_bytes, feeds) > 30


def test_shared_constants_are_unshared_for_the_quantizer_and_merged_after() -> None:
    # Both convs read the same weight and zero bias initializers: the converter stores each once.
    w, b = RNG.standard_normal((8, 8, 3, 3)) / 8, np.zeros(8)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    fp32 = convert(_graph(nodes, [1, 8, 6, 6], [1, 8, 6, 6], w=w, b=b)).tflite_bytes
    unshared = flatbuffer.load(flatbuffer.unshare_constants(fp32))
    conv_inputs = [list(op.inputs[1:]) for op in unshared.subgraphs[0].operators if len(op.inputs) == 3]
    assert len({i for ins in conv_inputs for i in ins}) == 4, "each conv has its own weight and bias tensor"

    feeds = _feeds([1, 8, 6, 6])
    q = quantize(fp32, "int8", calibration=feeds)
    assert _sqnr(fp32, q.tflite_bytes, feeds) > 20
    model = flatbuffer.load(q.tflite_bytes)
    payloads = [bytes(b.data) for b in model.buffers if b.data is not None and len(b.data)]
    assert len(payloads) == len(set(payloads)), "equal buffers merged after quantization"
    referenced = {t.buffer for t in model.subgraphs[0].tensors}
    assert set(range(1, len(model.buffers))) <= referenced, "no unreferenced buffers"


def test_compact_drops_unreferenced_and_merges_equal_buffers_without_changing_outputs() -> None:
    m = _graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [1, 16], [1, 4],
               w=RNG.standard_normal((4, 16)), b=RNG.standard_normal(4))
    data = convert(m).tflite_bytes
    model = flatbuffer.load(data)
    weights = next(t for t in model.subgraphs[0].tensors if t.name.endswith(b"weights"))
    copy = schema.BufferT()
    copy.data = bytes(model.buffers[weights.buffer].data)
    model.buffers.append(copy)  # an equal buffer the weights now point at
    weights.buffer = len(model.buffers) - 1
    orphan = schema.BufferT()
    orphan.data = b"\x01" * 1000
    model.buffers.append(orphan)  # referenced by nothing
    padded = flatbuffer.pack(model)

    compacted, report = flatbuffer.compact(padded)
    assert (report.unreferenced_buffers, report.unreferenced_bytes) == (2, 1000 + 256)  # the orphan and the old weights
    assert report.merged_buffers == 0
    assert len(compacted) < len(padded) - 1000
    feeds = _feeds([1, 16], 3)
    np.testing.assert_array_equal(run_tflite(compacted, feeds)["y"], run_tflite(data, feeds)["y"])
    assert flatbuffer.compact(compacted) == (compacted, flatbuffer.Compaction(0, 0, 0, 0, 0))


def test_size_breakdown_accounts_for_every_byte() -> None:
    m = _graph([helper.make_node("Conv", ["x", "w"], ["y"])], [1, 4, 5, 5], [1, 6, 3, 3], w=RNG.standard_normal((6, 4, 3, 3)))
    fp32 = convert(m).tflite_bytes
    q = quantize(fp32, "int8", calibration=_feeds([1, 4, 5, 5]))
    for data in (fp32, q.tflite_bytes):
        b = flatbuffer.size_breakdown(data)
        assert b.constant_bytes + b.quantization_params + b.names + b.structure == b.total == len(data)
        assert b.structure > 0
    b = flatbuffer.size_breakdown(q.tflite_bytes)
    assert b.constants["INT8"] == 6 * 4 * 3 * 3
    # Per output channel: a float32 scale and an int64 zero point for the weights and for the bias;
    # both zero-point vectors are 6 zeros, stored once.
    assert b.quantization_params_per_tensor >= 2 * 6 * (4 + 8)
    assert b.quantization_params <= b.quantization_params_per_tensor - 6 * 8


def test_int8_hard_sigmoid_stays_integer() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["y"])]
    m = _graph(nodes, [1, 3, 6, 6], [1, 4, 4, 4], w=RNG.standard_normal((4, 3, 3, 3)))
    fp32 = convert(m).tflite_bytes
    feeds = _feeds([1, 3, 6, 6])
    q = quantize(fp32, "int8", calibration=feeds)
    ops = _op_names(q.tflite_bytes)
    assert ops.count("DEQUANTIZE") == 1 and ops.count("QUANTIZE") == 1, ops  # only at the float interface
    assert "MINIMUM" not in ops
    assert _sqnr(fp32, q.tflite_bytes, feeds) > 20


def test_int8_of_a_clip_with_other_bounds_runs() -> None:
    # The bounds have the rank of x: ai-edge-quantizer rejected rank-1 ones in the PP-OCR classifier ("Ranks of scales ...").
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    m = _graph(nodes, [1, 3, 6, 6], [1, 4, 4, 4], w=RNG.standard_normal((4, 3, 3, 3)), lo=np.array(-0.5), hi=np.array(2.0))
    fp32 = convert(m).tflite_bytes
    feeds = _feeds([1, 3, 6, 6])
    q = quantize(fp32, "int8", calibration=feeds)
    assert "MAXIMUM" in _op_names(q.tflite_bytes)
    assert _sqnr(fp32, q.tflite_bytes, feeds) > 20


@pytest.fixture(scope="module")
def int8_nets(digits_mlp: model_zoo.ZooModel) -> dict[str, tuple[bytes, list[Feed]]]:
    """A conv net (MobileNetV2-style: 1x1, depthwise, Relu6, Add) and the digits MLP in int8, with a few inputs."""
    mlp = onnx.load(digits_mlp.onnx_path)
    mlp_data = calibration.load_dataset(digits_mlp.calibration_path, convert(mlp).inputs)
    conv = model_zoo.mobilenetv2_block(0)
    conv_data = calibration.synthetic(convert(conv).inputs, count=16, seed=0)
    nets = {}
    for name, model, data in (("mobilenetv2_block", conv, conv_data), ("digits_mlp", mlp, mlp_data)):
        feeds = list(data.feeds())[:32]
        nets[name] = (quantize(convert(model).tflite_bytes, "int8", calibration=feeds).tflite_bytes, feeds[:4])
    return nets


def _unshared(data: bytes) -> bytes:
    """``data`` as the object API writes it: a copy of every vector and quantization table per tensor."""
    return flatbuffer.pack(flatbuffer.load(data), share=False)


def test_equal_scales_and_zero_points_are_stored_once(int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    for name, (data, _) in int8_nets.items():
        model = flatbuffer.load(data)
        params = [q for t in model.subgraphs[0].tensors if (q := t.quantization) is not None]
        zero_points = [np.asarray(q.zeroPoint) for q in params]
        assert sum(not z.any() for z in zero_points) > len({len(z) for z in zero_points if not z.any()}), name
        distinct = {(v.dtype.str, v.tobytes()) for q in params for v in (np.asarray(q.scale), np.asarray(q.zeroPoint))}
        b = flatbuffer.size_breakdown(data)
        assert b.quantization_params == sum(len(v) for _, v in distinct), f"{name}: each distinct vector counted once"
        unshared = flatbuffer.size_breakdown(_unshared(data))
        assert unshared.quantization_params == unshared.quantization_params_per_tensor == b.quantization_params_per_tensor
        assert b.total < unshared.total - (b.quantization_params_per_tensor - b.quantization_params), name


def _plan(data: bytes) -> list[tuple[str, list[int], list[int]]]:
    """LiteRT's nodes after XNNPACK took its partitions: one DELEGATE node per partition, then the original operators.

    ``_get_ops_details`` is the only view of the execution plan LiteRT's Python API has."""
    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    return [(d["op_name"], list(d["inputs"]), list(d["outputs"])) for d in it._get_ops_details()]


def test_shared_vectors_run_bit_identically_in_litert_xnnpack_and_tflm(int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    for name, (data, feeds) in int8_nets.items():
        unshared = _unshared(data)
        assert len(data) < len(unshared), name
        shared_out, unshared_out = run_tflite(data, feeds), run_tflite(unshared, feeds)
        for key, value in unshared_out.items():
            np.testing.assert_array_equal(shared_out[key], value, err_msg=f"{name}: LiteRT output {key}")
        plan = _plan(data)
        assert plan == _plan(unshared), f"{name}: XNNPACK delegates other nodes"
        assert any(op == "DELEGATE" for op, _, _ in plan), name
        for got, want in zip(micro.run(data, feeds), micro.run(unshared, feeds), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: TFLM output")
        assert micro.measure_arena(data, feeds[0]) == micro.measure_arena(unshared, feeds[0]), name


def test_load_and_pack_round_trip_a_shared_file(int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    for data, _ in int8_nets.values():
        assert flatbuffer.pack(flatbuffer.load(data)) == data
        assert flatbuffer.compact(data) == (data, flatbuffer.Compaction(0, 0, 0, 0, 0))


def test_compact_shares_the_vectors_of_a_file_written_with_a_copy_per_tensor(
        int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    data, feeds = int8_nets["mobilenetv2_block"]
    compacted, report = flatbuffer.compact(_unshared(data))
    assert report == flatbuffer.Compaction(0, 0, 0, 0, 0)
    assert len(compacted) == len(data)
    want = run_tflite(data, feeds)
    for key, value in run_tflite(compacted, feeds).items():
        np.testing.assert_array_equal(value, want[key])


def test_the_quantizer_gets_every_vector_of_its_own(int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    # ai-edge-quantizer edits vectors in place (op.inputs[i] = new tensor): shared ones must not reach it.
    data, _ = int8_nets["digits_mlp"]
    b = flatbuffer.size_breakdown(flatbuffer.unshare_constants(data))
    assert b.quantization_params == b.quantization_params_per_tensor


def test_a_pass_cannot_edit_a_shared_vector_in_place(int8_nets: dict[str, tuple[bytes, list[Feed]]]) -> None:
    model = flatbuffer.load(int8_nets["mobilenetv2_block"][0])
    q: Any = next(t.quantization for t in model.subgraphs[0].tensors if t.quantization is not None)
    with pytest.raises(ValueError, match="read-only"):
        q.zeroPoint[0] = 1
