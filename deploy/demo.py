"""The first-run demo: the whole path from a model to device telemetry, on this machine.

It starts an embedded broker (or uses ``--broker``), trains and compiles the bundled digits
model for several hardware profiles, starts one real agent process per profile in simulated
mode, pushes each device the package built for its profile, waits for every install and
benchmark, and collects the telemetry into a SQLite store. Nothing here is a stand-in for the
real parts: the agents are the same program a Raspberry Pi runs, speaking MQTT to a broker.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent import keys
from edgefleet.agent.transport import BrokerURL
from edgefleet.compiler import model_zoo
from edgefleet.compiler.compile import CompileResult, compile_model
from edgefleet.deploy.broker import EmbeddedBroker
from edgefleet.deploy.collector import Collector
from edgefleet.deploy.push import DeploymentWatcher, push_package
from edgefleet.deploy.store import BenchmarkRow, TelemetryStore

log = logging.getLogger(__name__)

DEFAULT_PROFILES = ("raspberry-pi-zero-2-w", "raspberry-pi-4", "raspberry-pi-5")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its logs are."""


@dataclass(frozen=True, slots=True)
class DemoResult:
    workdir: Path
    broker: BrokerURL
    db_path: Path
    compiled: list[CompileResult]
    rows: list[BenchmarkRow]


def run_demo(
    workdir: Path,
    *,
    profiles: tuple[str, ...] = DEFAULT_PROFILES,
    broker: BrokerURL | None = None,
    keep: Callable[[DemoResult], None] | None = None,
    say: Callable[[str], None] = print,
    timeout: float = 120.0,
) -> DemoResult:
    """Run the demo in ``workdir``; ``keep`` (if given) is called with everything still running."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if broker is None:
            embedded = stack.enter_context(EmbeddedBroker(port=0))
            broker = embedded.url
            say(f"started an embedded MQTT broker at {broker}")
        else:
            say(f"using the MQTT broker at {broker}")

        key_path, pub_path = _signing_key(workdir / "keys")
        say("training the bundled model (an MLP on scikit-learn's digits)")
        zoo = model_zoo.digits_mlp(workdir / "model")

        say(f"compiling it for {', '.join(profiles)}")
        compiled = compile_model(zoo.onnx_path, list(profiles), calibration=zoo.calibration_path,
                                 out_dir=workdir / "packages", key_path=key_path, name="digits", version="1")
        for result in compiled:
            say(f"  {result.profile}: {result.choice} -> {result.package_path.name} ({result.size_bytes / 1024:.1f} KiB)")

        db_path = workdir / "fleet.db"
        store = TelemetryStore(db_path)
        collector = Collector(broker, store)
        collector.start()
        stack.callback(collector.stop)

        devices = {f"sim-{profile}": profile for profile in profiles}
        say(f"starting {len(devices)} simulated devices: {', '.join(devices)}")
        for device_id, profile in devices.items():
            stack.enter_context(_agent_process(broker, device_id, profile, workdir, pub_path))
        _wait(lambda: {d.device_id for d in store.devices() if d.status == "online"} >= devices.keys(), timeout,
              f"devices did not come online; see the logs in {workdir / 'devices'}")

        # One device at a time, so the simulated devices do not compete for this host's cores
        # while they benchmark.
        for result in compiled:
            device_id = f"sim-{result.profile}"
            with DeploymentWatcher(broker) as watcher:  # subscribed before the push: events are not retained
                deployment = push_package(result.package_path, broker=broker, device=device_id)
                say(f"pushed {result.package_path.name} to {device_id}; waiting for install and benchmark")
                outcome = watcher.wait(deployment.deployment_id, [device_id], timeout)
            if not outcome[device_id].ok:
                raise DemoError(f"{device_id} did not install its package: {outcome[device_id].error or 'timed out'}; "
                                f"see {workdir / 'devices' / (device_id + '.log')}")
        _wait(lambda: {r.device_id for r in store.latest_benchmarks()} >= devices.keys(), timeout,
              "benchmark reports did not reach the collector")
        rows = [r for r in store.latest_benchmarks() if r.device_id in devices]
        demo = DemoResult(workdir=workdir, broker=broker, db_path=db_path, compiled=compiled, rows=rows)
        if keep is not None:
            keep(demo)
    return demo


def _signing_key(directory: Path) -> tuple[Path, Path]:
    private = directory / "signing.key"
    if private.exists():
        return private, private.with_suffix(".pub")
    return keys.generate(private)


@contextmanager
def _agent_process(broker: BrokerURL, device_id: str, profile: str, workdir: Path, trust: Path) -> Iterator[subprocess.Popen[bytes]]:
    logs = workdir / "devices"
    logs.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "edgefleet.agent", "--broker", str(broker), "--device-id", device_id,
            "--profile", profile, "--data-dir", str(logs / device_id), "--trust", str(trust), "--simulate",
            "--max-seconds", "5"]
    with open(logs / f"{device_id}.log", "ab") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"after {timeout:.0f} s: {what}")
        time.sleep(0.2)
