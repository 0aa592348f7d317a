"""A small made-up fleet written through the store's own API, for screenshots, the browser test and trying the UI.

``fill_sample_fleet(store, now=...)`` records device states, benchmark reports and deployment
events as the collector would (``agent.messages`` objects through ``record_*``), and a rollout
half-way through its waves through ``rollout_runner.save_state``. Nothing here talks to a broker.
"""

from __future__ import annotations

from edgefleet.agent.messages import (
    BenchmarkReport,
    DeploymentEvent,
    DeviceState,
    InstalledModel,
    LatencyStats,
    Phase,
    PowerReading,
)
from edgefleet.deploy import rollout as engine
from edgefleet.deploy.rollout import (
    DevicePhase,
    DeviceProgress,
    Gates,
    PackageInfo,
    Plan,
    Strategy,
    WaveStatus,
)
from edgefleet.deploy.rollout_runner import save_state
from edgefleet.deploy.store import TelemetryStore

SHA = "0" * 64

# device id, profile, simulated, status, base p50 ms, watts
SAMPLE_DEVICES = (
    ("pi4-kitchen", "raspberry-pi-4", False, "online", 12.0, 4.1),
    ("pi4-garage", "raspberry-pi-4", False, "online", 12.6, 4.3),
    ("pi5-lab", "raspberry-pi-5", False, "online", 5.1, 6.2),
    ("pi5-office", "raspberry-pi-5", True, "online", 4.8, 6.0),
    ("zero-porch", "raspberry-pi-zero-2-w", False, "offline", 48.0, 1.4),
)


def device_state(device_id: str, profile: str, *, simulated: bool = False, status: str = "online",
                 package_id: str | None = None, ts: float, groups: tuple[str, ...] = ("home",)) -> DeviceState:
    """A ``DeviceState`` as an agent would send it; ``package_id`` is ``name@version:profile``."""
    model = None
    if package_id is not None:
        name, _, rest = package_id.partition("@")
        version = rest.partition(":")[0]
        model = InstalledModel(package_id=package_id, name=name, version=version, runtime="tflite", sha256=SHA,
                               installed_at=ts)
    return DeviceState(device_id=device_id, status=status, profile=profile, simulated=simulated,  # type: ignore[arg-type]
                       groups=list(groups), agent_version="0.1.0", runtimes={"tflite": "2.17"}, model=model, ts=ts)


def benchmark(device_id: str, profile: str, package_id: str, *, p50: float, watts: float, ts: float,
              simulated: bool = False, temperature: float | None = None) -> BenchmarkReport:
    """A ``BenchmarkReport`` with p90/p99 and energy derived from ``p50`` and ``watts``."""
    name, _, rest = package_id.partition("@")
    version = rest.partition(":")[0]
    mean = p50 * 1.05
    return BenchmarkReport(
        device_id=device_id, profile=profile, simulated=simulated, package_id=package_id, model_name=name,
        model_version=version, runtime="tflite", runtime_version="2.17", threads=4, warmup=10, runs=100,
        load_ms=30.0, first_inference_ms=p50 * 3,
        latency_ms=LatencyStats(mean=mean, std=p50 * 0.1, min=p50 * 0.9, p50=p50, p90=p50 * 1.2, p99=p50 * 1.5,
                                max=p50 * 2),
        throughput_ips=1000 / mean, peak_rss_mb=48.0, cpu_percent=100.0,
        power=PowerReading(watts=watts, source="estimate" if simulated else "hwmon:ina219"),
        energy_mj=watts * mean, ts=ts, temperature_after_c=temperature,
    )


def fill_sample_fleet(store: TelemetryStore, *, now: float) -> None:
    """Five devices over two model versions with an hour of benchmarks, and rollout ``demo-v2`` in wave 2."""
    for i, (device_id, profile, simulated, status, p50, watts) in enumerate(SAMPLE_DEVICES):
        v1 = f"kws@1:{profile}"
        v2 = f"kws@2:{profile}"
        upgraded = i < 3  # the canary and the first wave run v2
        for k in range(12):  # one benchmark every 5 minutes, a little noise and warming up
            ts = now - 3600 + k * 300 + i
            package = v2 if upgraded and k >= 6 else v1
            speed = 0.8 if package == v2 else 1.0
            temperature = None if simulated else 48.0 + k * 0.8 + i
            store.record_benchmark(benchmark(device_id, profile, package, p50=p50 * speed * (1 + 0.03 * ((k * 7 + i) % 5)),
                                             watts=watts * (1 + 0.02 * (k % 3)), ts=ts, simulated=simulated,
                                             temperature=temperature))
        store.record_state(device_state(device_id, profile, simulated=simulated, status=status,
                                        package_id=v2 if upgraded else v1, ts=now - (900 if status == "offline" else 5 + i)))
        if upgraded:
            for phase, dt in ((Phase.RECEIVED, 0), (Phase.DOWNLOADING, 1), (Phase.INSTALLING, 3), (Phase.DONE, 4)):
                store.record_event(DeploymentEvent(device_id=device_id, deployment_id=f"demo-v2-{device_id}-1",
                                                   package_id=v2, phase=phase, ts=now - 1800 + dt))

    profiles = ("raspberry-pi-4", "raspberry-pi-5")
    plan = Plan(
        packages=tuple(PackageInfo(f"kws@2:{p}", p, f"/srv/packages/kws-2-{p}.efpkg", SHA) for p in profiles),
        target="group home",
        strategy=Strategy(canary=("pi5-lab",), waves=(50.0, 100.0)),
        gates=Gates(max_failure_rate=0.25, max_p90_regression=10.0, max_energy_regression=15.0),
    )
    targets = [d for d in SAMPLE_DEVICES if d[1] in profiles]
    state = engine.new_state("demo-v2", plan, [
        DeviceProgress(device_id=d[0], wave=0, profile=d[1], package_id=f"kws@2:{d[1]}",
                       previous_package_id=f"kws@1:{d[1]}", baseline_p90_ms=d[4] * 1.2, baseline_energy_mj=d[4] * d[5])
        for d in targets
    ], now - 1900)
    upgraded_ids = {d[0] for d in SAMPLE_DEVICES[:3]}
    for d in state.devices.values():
        if d.device_id in upgraded_ids:
            d.phase, d.attempt, d.deployment_id = DevicePhase.DONE, 1, f"demo-v2-{d.device_id}-1"
            d.p90_ms = (d.baseline_p90_ms or 0) * 0.8
            d.energy_mj = (d.baseline_energy_mj or 0) * 0.8
        else:  # the last wave is under way
            d.phase, d.attempt, d.deployment_id = DevicePhase.DEPLOYING, 1, f"demo-v2-{d.device_id}-1"
    for w in state.waves:
        members = state.wave_devices(w.index)
        if all(m.phase is DevicePhase.DONE for m in members):
            w.status, w.started_at, w.finished_at = WaveStatus.PASSED, now - 1900, now - 1700
        elif any(m.phase is not DevicePhase.PENDING for m in members):
            w.status, w.started_at = WaveStatus.DEPLOYING, now - 1600
    state.updated_at = now - 60
    save_state(store, state)
