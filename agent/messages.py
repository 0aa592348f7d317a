"""The messages on the wire, as pydantic schemas validated on the way in.

All control messages are UTF-8 JSON objects. Package chunks are the one exception: raw bytes,
described by the ``Deployment`` that announces them. Unknown keys are ignored on input, so a
newer fleet can add a field without breaking older agents; a missing or mistyped field is an
error naming the field. ``docs/protocol.md`` documents each message with an example.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from edgefleet.agent.errors import MessageError
from edgefleet.agent.labels import check_labels

PROTOCOL = 1
SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M] | TypeAdapter[M], payload: bytes, *, topic: str = "") -> M:
    """Validate ``payload`` against a message schema; raise MessageError naming every bad field."""
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise MessageError(f"malformed message ({problems})", topic=topic) from None


# --- fleet -> device ---------------------------------------------------------------------


class PackageRef(_Message):
    """Which package to fetch and how to check it, chunk by chunk and whole."""

    id: str = Field(description="Package id from its manifest: name@version:profile.")
    sha256: SHA256
    size: int = Field(gt=0)
    chunk_size: int = Field(gt=0)
    chunk_sha256: list[SHA256] = Field(min_length=1)
    url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="Fetch the package file from this http(s) URL (object storage, CDN) instead of MQTT chunks.")

    def chunk_count(self) -> int:
        return len(self.chunk_sha256)


class RollbackGrant(_Message):
    """A signed permission to install an older version than the device's high-water mark.

    Signed (``agent.keys.sign_statement``) by a trusted key over ``statement()``, which binds the
    target, the deployment and its issue time, and the exact package: a broker-side attacker can
    neither forge one nor move it to another device, package or deployment. Exactly one of
    ``device`` and ``group`` is set.
    """

    device: str | None = None
    group: str | None = None
    deployment_id: str = Field(min_length=1, max_length=128)
    issued_at: float
    package_id: str
    sha256: SHA256
    version: str
    signer: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(max_length=128)

    def statement(self) -> dict[str, object]:
        """What the signature covers."""
        return {"kind": "edgefleet.rollback/1", "device": self.device, "group": self.group,
                "deployment_id": self.deployment_id, "issued_at": self.issued_at, "package_id": self.package_id,
                "sha256": self.sha256, "version": self.version}


class Deployment(_Message):
    """Install this package. Retained on a device's or group's deploy topic."""

    kind: Literal["deployment"] = "deployment"
    protocol: int = PROTOCOL
    deployment_id: str = Field(min_length=1, max_length=128)
    package: PackageRef
    profile: str = Field(description="The profile the package was compiled for; other devices ignore it.")
    issued_at: float = Field(default_factory=time.time)
    rollback: RollbackGrant | None = Field(
        default=None, description="Set to install a version older than the device's high-water mark, on purpose.")


class KeyRevocation(_Message):
    """Revoke a signing key for good. Retained on ``topics.key_revocation(key_id)``.

    Signed by a trusted key that is not itself revoked (a key may revoke itself); the agent keeps
    the revocation on disk, so clearing the retained message undoes nothing.
    """

    kind: Literal["key_revocation"] = "key_revocation"
    protocol: int = PROTOCOL
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    reason: str = Field(default="", max_length=500)
    issued_at: float = Field(default_factory=time.time)
    signer: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(max_length=128)

    def statement(self) -> dict[str, object]:
        """What the signature covers."""
        return {"kind": "edgefleet.revocation/1", "key_id": self.key_id, "reason": self.reason,
                "issued_at": self.issued_at}


class BenchmarkRequest(_Message):
    """Benchmark this package now, without installing it as the serving model. Not retained.

    The package travels as for a deployment (retained chunks); the device answers with a
    ``BenchmarkReport`` carrying ``request_id``, and with ``DeploymentEvent`` progress under the
    same id. Settings left out use the agent's own.
    """

    kind: Literal["benchmark_request"] = "benchmark_request"
    protocol: int = PROTOCOL
    request_id: str = Field(min_length=1, max_length=128)
    package: PackageRef
    profile: str
    warmup: int | None = Field(default=None, ge=0)
    runs: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=0)
    issued_at: float = Field(default_factory=time.time)


# --- device -> fleet ---------------------------------------------------------------------


class Phase(StrEnum):
    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    BENCHMARKING = "benchmarking"
    DONE = "done"
    FAILED = "failed"


class InstalledModel(_Message):
    package_id: str
    name: str
    version: str
    runtime: str
    sha256: SHA256
    installed_at: float


class DeviceState(_Message):
    """What a device is and what it runs. Retained; the broker's last will sets status offline."""

    kind: Literal["state"] = "state"
    protocol: int = PROTOCOL
    device_id: str
    status: Literal["online", "offline"]
    profile: str = ""
    simulated: bool = Field(
        default=False,
        description="A simulated device: latencies are its host's, power is the profile's estimate.",
    )
    groups: list[str] = Field(default_factory=list)
    labels: Annotated[dict[str, str], AfterValidator(check_labels)] = Field(
        default_factory=dict, description="KEY=VALUE labels to select the device by (agent/labels.py); "
                                          "absent in states from agents before labels: empty.")
    agent_version: str = ""
    runtimes: dict[str, str] = Field(default_factory=dict, description="Runtime name -> version installed.")
    model: InstalledModel | None = None
    ts: float = Field(default_factory=time.time)


class DeploymentEvent(_Message):
    """Progress of one deployment on one device; ``error`` says why a phase failed."""

    kind: Literal["deployment_event"] = "deployment_event"
    device_id: str
    deployment_id: str
    package_id: str
    phase: Phase
    error: str = ""
    ts: float = Field(default_factory=time.time)


class LatencyStats(_Message):
    """Per-inference latency in milliseconds."""

    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


class PowerReading(_Message):
    """Average board power during the benchmark and where the figure comes from."""

    watts: float
    idle_watts: float | None = None
    source: str = Field(description="'estimate' (the profile's power model) or the sensor, e.g. 'hwmon:ina219'.")
    seconds: float | None = Field(default=None, description="How long the sensor averaged over (timed runs only).")


class BenchmarkReport(_Message):
    """One benchmark of one installed package on one device."""

    kind: Literal["benchmark"] = "benchmark"
    device_id: str
    profile: str
    simulated: bool
    package_id: str
    model_name: str
    model_version: str
    runtime: str
    runtime_version: str
    threads: int
    warmup: int
    runs: int
    load_ms: float
    first_inference_ms: float
    latency_ms: LatencyStats
    throughput_ips: float = Field(description="Inferences per second, sequential, batch as packaged.")
    peak_rss_mb: float
    cpu_percent: float = Field(description="Process CPU time over wall time during the timed runs (100 = one core).")
    power: PowerReading
    energy_mj: float = Field(description="Energy per inference, millijoules: power x mean latency.")
    request_id: str | None = Field(default=None, description="Set when the benchmark answers a BenchmarkRequest.")
    ts: float = Field(default_factory=time.time)
    energy_above_idle_mj: float | None = Field(
        default=None, description="Energy per inference above the idle baseline: (power - idle power) x mean latency.")
    temperature_before_c: float | None = Field(default=None, description="Hottest thermal zone before the warm-up.")
    temperature_after_c: float | None = Field(default=None, description="Hottest thermal zone after the timed runs.")
    throttled: list[str] | None = Field(
        default=None, description="Raspberry Pi firmware throttling flags after the run; None without vcgencmd.")
    governor: str | None = Field(default=None, description="cpu0's cpufreq scaling governor during the run.")
    delegate: str | None = Field(
        default=None, description="Which kernels ran the model: 'cpu' (onnxruntime's CPUExecutionProvider), "
                                  "'xnnpack' (LiteRT's default CPU delegate).")


Telemetry = Annotated[BenchmarkReport, Field(discriminator="kind")]
TELEMETRY = TypeAdapter(Telemetry)


class SystemSample(_Message):
    """The device's health every ``system_interval`` seconds, on ``topics.system(device)`` at QoS 1 (not retained).

    Counters count from the agent's start, so a reset shows as a drop together with ``agent_uptime_s``.
    """

    kind: Literal["system"] = "system"
    protocol: int = PROTOCOL
    device_id: str
    profile: str
    simulated: bool = False
    cpu_percent: float = Field(description="Whole-system CPU use since the previous sample, 0-100 over all cores.")
    load_1m: float | None = None
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float | None = Field(default=None, description="Hottest thermal zone; None when simulated.")
    disk_free_mb: float = Field(description="Free space on the data directory's filesystem.")
    disk_used_percent: float
    uptime_s: float = Field(description="Seconds since the device booted.")
    agent_uptime_s: float
    model_package_id: str | None = None
    model_version: str | None = None
    inferences: int = Field(default=0, description="Inferences run since the agent started (benchmarks, test vectors).")
    benchmarks: int = 0
    deployments_done: int = 0
    deployments_failed: int = 0
    outbox_pending: int = Field(default=0, description="Reports queued on disk, not yet acknowledged by the broker.")
    outbox_dropped: int = Field(default=0, description="Reports dropped because the outbox was full, ever.")
    ts: float = Field(default_factory=time.time)
