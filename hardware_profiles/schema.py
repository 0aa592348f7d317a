"""The schema of a hardware profile: what a device class is, as the compiler and the agent need it.

A profile is one YAML file per device class. Every number that comes from a datasheet or a
published measurement names its source, so a reader can check it and a later session can
correct it. Sizes are written the way people write them ("4 GiB", "640 KiB") and parsed into
bytes by pydantic's ``ByteSize``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, HttpUrl, model_validator


class _Strict(BaseModel):
    # A typo in a profile ("ram_gib:") must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceKind(StrEnum):
    SBC = "sbc"  # single-board computer running Linux (Raspberry Pi)
    PHONE = "phone"
    MCU = "mcu"  # microcontroller: bare metal or RTOS, TFLite Micro only
    HOST = "host"  # a generic Linux machine, used for simulated devices


class Runtime(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    LITERT = "litert"  # LiteRT / tflite-runtime
    TFLM = "tflm"  # TensorFlow Lite for Microcontrollers


class NumberFormat(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT16X8 = "int16x8"
    INT4 = "int4"


class Speed(StrEnum):
    """How a number format runs on this device, relative to fp32 on its CPU."""

    FAST = "fast"  # a dedicated path: NEON dot-product int8, GPU fp16, NPU int8
    SUPPORTED = "supported"  # runs, no faster than fp32 (or emulated)


class Source(_Strict):
    """Where a figure comes from: a datasheet, a vendor page or a published measurement."""

    title: str
    url: HttpUrl
    note: str = ""


class Cpu(_Strict):
    arch: Literal["aarch64", "armv7l", "x86_64", "armv7e-m", "armv8-m", "xtensa"]
    core: str = Field(description="Core type, e.g. 'Cortex-A72'.")
    cores: int = Field(gt=0)
    clock_mhz: float = Field(gt=0)
    isa_features: list[str] = Field(
        default_factory=list, description="SIMD and numeric extensions: neon, dotprod, fp16, avx2, helium, dsp..."
    )


class Accelerator(_Strict):
    name: str
    kind: Literal["gpu", "npu", "dsp"]
    delegate: str = Field(description="How a runtime reaches it, e.g. 'litert-gpu', 'nnapi', 'qnn'.")
    formats: list[NumberFormat]
    peak_gops: float = Field(gt=0, description="Peak throughput in the fastest of `formats`, in GOPS.")
    # What a delegate sustains and what each call to it costs decide whether it beats the CPU
    # (compiler/cost_model.py): a big convolutional net amortises the call, a tiny MLP does not.
    utilisation: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of peak_gops a LiteRT delegate sustains over a whole network. "
        "Default: 0.25 for a GPU, 0.2 for an NPU or DSP (see compiler/cost_model.py)."
    )
    op_overhead_us: float | None = Field(
        default=None, ge=0, description="Cost of one operator (kernel launch) on the accelerator, microseconds. "
        "Default: 10 for a GPU, 5 for an NPU or DSP."
    )
    invoke_overhead_us: float | None = Field(
        default=None, ge=0, description="Fixed cost of one inference on the accelerator (command submission, "
        "synchronisation, input and output copies), microseconds. Default: 1000."
    )
    counted: bool = Field(
        default=True, description="Whether the cost model may place a model on it. False when an edgefleet package "
        "cannot be relied on to reach it (say why in `not_counted_because`)."
    )
    not_counted_because: str = ""

    @model_validator(mode="after")
    def _reason_when_not_counted(self) -> Accelerator:
        if not self.counted and not self.not_counted_because:
            raise ValueError(f"accelerator {self.name!r} has counted: false; say why in not_counted_because")
        return self


class Memory(_Strict):
    ram: ByteSize = Field(
        description="Installed memory (on-chip SRAM on a microcontroller). The OS or firmware takes its share: "
        "a planner should keep headroom rather than fill it."
    )
    storage: ByteSize | None = Field(default=None, description="Disk or eMMC/SD for model files (Linux devices).")
    flash: ByteSize | None = Field(default=None, description="On-chip plus board flash for the model (microcontrollers).")
    # Boards such as the ESP32-S3-DevKitC-1 N8R8 add megabytes of external PSRAM next to a few hundred KiB
    # of SRAM. A tensor arena can live there, several times slower, so it is kept apart from `ram`.
    psram: ByteSize | None = Field(
        default=None, description="External PSRAM on a microcontroller board: large, slower than SRAM."
    )
    bandwidth_gbps: float = Field(gt=0, description="Sustained memory bandwidth, GB/s.")
    cache: ByteSize | None = Field(
        default=None, description="Last-level CPU cache. The cost model reads weights and activations that fit in it "
        "from cache, not from memory; without it every byte is charged at bandwidth_gbps."
    )
    cache_bandwidth_gbps: float | None = Field(
        default=None, gt=0, description="Sustained rate of elementwise passes over tensors that fit in `cache` "
        "(bytes read plus written), GB/s. Default: such passes cost nothing beyond their dispatch."
    )

    @model_validator(mode="after")
    def _somewhere_to_keep_the_model(self) -> Memory:
        if self.storage is None and self.flash is None:
            raise ValueError("memory needs 'storage' (Linux devices) or 'flash' (microcontrollers)")
        return self


class KernelFigure(_Strict):
    """How fast one class of operator runs in one runtime and number format, relative to the profile's peak.

    A single roofline over-credits some operators and under-credits others: depthwise and small
    convolutions reach a fraction of a big matrix product's rate, a batch-1 matrix-vector product
    runs at the speed its weights stream from cache, and a runtime's int8 kernels may trail its
    fp32 ones on a CPU without int8 dot-product instructions. Measure these with
    ``bench/compile_bench.py --sections host`` (single operators at a few sizes, fitted by least squares).
    """

    runtime: Runtime
    op: Literal["conv", "pointwise", "depthwise", "gemm", "matvec"] = Field(
        description="conv: a k x k convolution (k > 1); pointwise: 1x1; depthwise: one group per channel; "
        "gemm: Gemm/MatMul with more than one row; matvec: with one row (batch 1)."
    )
    format: NumberFormat
    efficiency: float = Field(
        gt=0, description="Sustained rate at large sizes as a fraction of fp32_gflops (float formats) or int8_gops (int8)."
    )
    fixed_us: float = Field(
        default=0, ge=0, description="Time per operator that does not shrink with its size (packing, layout, setup), "
        "microseconds, on top of op_overhead_us."
    )
    ns_per_output: float = Field(
        default=0, ge=0, description="Time per element of the operator's output that does not shrink with its MACs "
        "(writing and re-laying out its output), nanoseconds: what makes a small layer's fixed cost smaller than a "
        "big one's."
    )
    ns_per_patch_element: float = Field(
        default=0, ge=0, description="For convolutions: time per element of the input patches the operator gathers "
        "(output pixels x input channels x kernel area, what an im2col packs), nanoseconds. Unlike a per-output "
        "cost it shrinks with the input channels: a stem convolution from 1 or 3 channels packs little."
    )
    channel_multiple: int = Field(
        default=1, ge=1, description="For convolutions: the kernel's fast path takes input channels (per group) in "
        "multiples of this; onnxruntime's x86 int8 convolution takes them in fours."
    )
    ns_per_output_unaligned: float = Field(
        default=0, ge=0, description="Extra time per output element when the input channels are not a multiple of "
        "channel_multiple (the slower path), nanoseconds: a stem convolution from 1 or 3 channels in int8."
    )


class ElementwiseFigure(_Strict):
    """What one operator without multiply-accumulates costs in one runtime and number format: a constant
    and a part per element it writes.

    Such an operator runs at a rate of its own, not at the cache's: a Sigmoid evaluates an exponential
    per element, an int8 Add or Mul rescales every element from its inputs' quantization to its
    output's. Measured on stacks of that operator (``bench/compile_bench.py --sections host``); an
    operator not listed costs a pass over its activations at ``memory.cache_bandwidth_gbps``.
    """

    runtime: Runtime
    op: Literal["Add", "Mul", "Sigmoid", "Concat"] = Field(
        description="The ONNX operator; Concat stands for every operator that copies its inputs into its outputs "
        "(Concat, Split, Slice)."
    )
    format: NumberFormat
    fixed_us: float = Field(default=0, ge=0, description="Per operator, on top of op_overhead_us, microseconds.")
    ns_per_element: float = Field(ge=0, description="Per element of the operator's outputs, nanoseconds.")


class EdgeCost(_Strict):
    """What a runtime pays once per call at a graph's edges: a constant and a part per element of the
    graph's inputs and outputs. Measured on single layers (bench/compile_bench.py --sections host)."""

    fixed_us: float = Field(ge=0, description="Per call, microseconds.")
    ns_per_element: float = Field(default=0, ge=0, description="Per element of the graph's inputs and outputs, nanoseconds.")


class FloatIsland(_Strict):
    """What one operator left in float inside an onnxruntime int8 QDQ graph costs: the operator, a
    DequantizeLinear per input, a QuantizeLinear, and next to an int8 convolution two layout
    Transposes. Measured on a BatchNormalization between convolutions (bench/compile_bench.py --sections host)."""

    fixed_us: float = Field(ge=0, description="Per island of that BatchNormalization's 8 extra operators, microseconds; "
                             "other islands cost in proportion to their own extra operators.")
    ns_per_element: float = Field(ge=0, description="Per element of its inputs and outputs, nanoseconds (same proportion).")


class Throughput(_Strict):
    """Sustained figures a roofline-style cost model needs, for the CPU cores an inference can use.

    That is every core for onnxruntime and LiteRT, but one core on a microcontroller: TFLite Micro is
    single-threaded, so a dual-core ESP32-S3 gets the figure of one core.
    """

    fp32_gflops: float = Field(gt=0)
    int8_gops: float = Field(gt=0)
    fp16_gflops: float | None = Field(default=None, gt=0)
    # Small models are dominated by what each call and each operator costs the runtime, not by
    # arithmetic; the compiler's cost model needs these to estimate them (compiler/cost_model.py).
    call_overhead_us: float | None = Field(
        default=None, ge=0, description="Fixed cost of one inference call in the runtime, microseconds. "
        "Default: derived from the clock (see compiler/cost_model.py)."
    )
    op_overhead_us: float | None = Field(
        default=None, ge=0, description="Fixed cost of dispatching one operator, microseconds. Default: derived from the clock."
    )
    layout_edges: EdgeCost | None = Field(
        default=None, description="What an onnxruntime graph with convolutions costs at its edges, in every format: "
        "reordering its input into the blocked layout its convolutions run in (NCHWc for fp32) and its output back. "
        "Measured as a single fp32 convolution less what one more such layer costs (bench/compile_bench.py "
        "--sections host). Default: nothing."
    )
    qdq_edges: EdgeCost | None = Field(
        default=None, description="What an onnxruntime int8 QDQ graph costs at its edges on top of that: quantizing "
        "the input, dequantizing the output and, around int8 convolutions, the layout Transposes into and out of NHWC; "
        "measured as a single int8 layer less the same fp32 layer, less what one more such layer costs in each format "
        "(bench/compile_bench.py --sections host). Default: two operator dispatches."
    )
    qdq_island: FloatIsland | None = Field(
        default=None, description="Measured cost of an operator left in float in an onnxruntime int8 QDQ graph. "
        "Default: its extra operators' dispatches and passes at the cache or memory rate (compiler/cost_model.py)."
    )
    kernels: list[KernelFigure] = Field(
        default_factory=list, description="Per operator class efficiency, measured; a class not listed runs at "
        "the peak figure above with no fixed cost."
    )
    elementwise: list[ElementwiseFigure] = Field(
        default_factory=list, description="Per operator cost of operators without multiply-accumulates, measured; "
        "an operator not listed costs a pass over its activations at the cache or memory rate."
    )


class PowerModel(_Strict):
    """Power at idle and with the CPU fully busy, in watts. Linear in between is the estimate.

    Linux boards and phones: the whole board or handset, measured at its supply. Microcontrollers: the
    MCU itself (as MLPerf Tiny measures it), idle being the low-power mode it waits in between
    inferences; a dev board's debug probe, LEDs and sensors are not counted.
    """

    idle_w: float = Field(ge=0)
    active_w: float = Field(gt=0)

    @model_validator(mode="after")
    def _active_above_idle(self) -> PowerModel:
        if self.active_w < self.idle_w:
            raise ValueError(f"active_w ({self.active_w}) is below idle_w ({self.idle_w})")
        return self

    def estimate_w(self, cpu_utilisation: float) -> float:
        """Board power at a CPU utilisation between 0 (idle) and 1 (every core busy)."""
        u = min(max(cpu_utilisation, 0.0), 1.0)
        return self.idle_w + (self.active_w - self.idle_w) * u


class HardwareProfile(_Strict):
    # Underscores are allowed for names that carry an architecture, such as "generic-linux-x86_64".
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Slug used on the command line and file name.")
    display_name: str
    kind: DeviceKind
    description: str = ""
    cpu: Cpu
    accelerators: list[Accelerator] = Field(default_factory=list)
    memory: Memory
    runtimes: list[Runtime] = Field(min_length=1)
    formats: dict[NumberFormat, Speed] = Field(description="Number formats the device runs, and which are fast.")
    throughput: Throughput
    power: PowerModel
    sources: list[Source] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        if self.kind is DeviceKind.MCU:
            if self.memory.flash is None:
                raise ValueError("a microcontroller profile needs memory.flash")
            if self.runtimes != [Runtime.TFLM]:
                raise ValueError("a microcontroller runs TFLite Micro only: runtimes must be [tflm]")
        if NumberFormat.FP32 not in self.formats:
            raise ValueError("formats must list fp32 (every runtime here can fall back to it)")
        for field in ("kernels", "elementwise"):
            keys = [(k.runtime.value, k.op, k.format.value) for k in getattr(self.throughput, field)]
            if len(set(keys)) < len(keys):
                twice = sorted({k for k in keys if keys.count(k) > 1})
                raise ValueError(f"throughput.{field} lists {', '.join('/'.join(k) for k in twice)} more than once; "
                                 "keep one figure each")
        return self

    def fast_formats(self) -> list[NumberFormat]:
        return [f for f, s in self.formats.items() if s is Speed.FAST]
