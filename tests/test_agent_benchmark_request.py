"""`edgefleet benchmark`: a real agent measures a package on request without changing what it serves."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AgentProcess, forget_device, make_package

from edgefleet.agent import keys
from edgefleet.agent.install import ModelStore
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.benchmark import BenchmarkFailed, request_benchmark
from edgefleet.deploy.benchmark_cli import benchmark
from edgefleet.deploy.push import (
    DeploymentWatcher,
    describe_package,
    push_package,
)


@pytest.fixture(scope="module")
def device(broker_url: str, signing_key: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    device_id = f"test-bench-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("bench")
    url = BrokerURL.parse(broker_url)
    agent = AgentProcess(broker_url, device_id, workdir / "data", signing_key[1]).start()
    v1 = make_package(workdir / "v1.efpkg", signing_key[0], version="1")
    with DeploymentWatcher(url) as watcher:
        deployment = push_package(v1, broker=url, device=device_id)
        assert watcher.wait(deployment.deployment_id, [device_id], 60)[device_id].ok
    yield device_id, workdir, workdir / "data"
    agent.stop()
    forget_device(broker_url, device_id, [describe_package(package)[1] for package in workdir.glob("*.efpkg")])


def test_a_requested_benchmark_measures_the_package_and_leaves_the_serving_model(device, broker_url, signing_key) -> None:  # type: ignore[no-untyped-def]
    device_id, workdir, data = device
    v2 = make_package(workdir / "v2.efpkg", signing_key[0], version="2", scale=2.0)
    report = request_benchmark(v2, broker=BrokerURL.parse(broker_url), device=device_id, runs=15, warmup=1, timeout=60)
    assert report.package_id == "tiny@2:raspberry-pi-4"
    assert report.runs == 15 and report.warmup == 1
    assert report.request_id and report.latency_ms.p50 > 0
    current = ModelStore(data).current()
    assert current is not None and current.manifest.version == "1", "the serving model does not change"
    assert not any((data / "candidates" / "packages").iterdir()), "the candidate is removed after measuring"


def test_a_benchmark_of_an_untrusted_package_is_refused_with_the_reason(device, broker_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, workdir, _ = device
    rogue, _ = keys.generate(tmp_path / "rogue.key")
    package = make_package(workdir / "rogue.efpkg", rogue, version="3")
    with pytest.raises(BenchmarkFailed, match="does not trust"):
        request_benchmark(package, broker=BrokerURL.parse(broker_url), device=device_id, timeout=60)


def test_the_benchmark_command_prints_the_report(device, broker_url, signing_key) -> None:  # type: ignore[no-untyped-def]
    device_id, workdir, _ = device
    v4 = make_package(workdir / "v4.efpkg", signing_key[0], version="4", scale=4.0)
    result = CliRunner().invoke(benchmark, [str(v4), "--device", device_id, "--broker", broker_url, "--runs", "10",
                                            "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["package_id"] == "tiny@4:raspberry-pi-4"
    text = CliRunner().invoke(benchmark, [str(v4), "--device", device_id, "--broker", broker_url, "--runs", "10"])
    assert text.exit_code == 0 and "latency ms" in text.output and "(simulated" in text.output
