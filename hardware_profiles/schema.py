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
        default=None, description="Last-level CPU cache. The cost model reads weights that fit in it from cache, not "
        "from memory; without it every weight byte is charged at bandwidth_gbps."
    )

    @model_validator(mode="after")
    def _somewhere_to_keep_the_model(self) -> Memory:
        if self.storage is None and self.flash is None:
            raise ValueError("memory needs 'storage' (Linux devices) or 'flash' (microcontrollers)")
        return self


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
        return self

    def fast_formats(self) -> list[NumberFormat]:
        return [f for f, s in self.formats.items() if s is Speed.FAST]
