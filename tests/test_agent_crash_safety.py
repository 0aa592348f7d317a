"""SIGKILL the real agent at every step of a deployment; after a restart it serves a complete model.

Each case installs v1, then pushes v2 to an agent that kills itself (``EDGEFLEET_AGENT_CRASH_AT``)
at one point of the download or install. Right after the crash the data directory must hold a
complete v1 or a complete v2 as ``current``, never a mix; a restarted agent must then finish the
deployment and serve v2.

The rollback paths are killed the same way: the automatic rollback after a model crashed the
agent repeatedly, and the removal of a package that failed its test vectors. After a restart the
agent serves v1, complete, and the deployment is reported failed (scenarios in fault_scenarios.py).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AgentProcess, Watcher, forget_device, make_package
from fault_scenarios import (
    CRASH_LOOP_ROLLBACK_POINTS,
    FAILED_TEST_ROLLBACK_POINTS,
    Lab,
    sigkill_during_crash_loop_rollback,
    sigkill_during_failed_install_rollback,
)

from edgefleet.agent import topics
from edgefleet.agent.install import ModelStore
from edgefleet.agent.package import file_sha256
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.push import (
    DeploymentWatcher,
    push_package,
)

POINTS = ["chunk:0", "chunk:3", "verified", "staging", "staged", "activating", "activated", "benchmarking"]
CHUNK = 256  # small chunks, so a download has several and can be cut in the middle


@pytest.fixture
def fleet(broker_url: str, tmp_path: Path) -> Iterator[tuple[str, list]]:  # type: ignore[type-arg]
    device_id = f"test-crash-{uuid.uuid4().hex[:8]}"
    pushed: list = []  # type: ignore[type-arg]
    yield device_id, pushed
    forget_device(broker_url, device_id, pushed)


def _deploy(broker_url: str, device_id: str, package: Path, pushed: list, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    url = BrokerURL.parse(broker_url)
    with DeploymentWatcher(url) as watcher:
        deployment = push_package(package, broker=url, device=device_id, chunk_size=CHUNK)
        pushed.append(deployment.package)
        outcome = watcher.wait(deployment.deployment_id, [device_id], timeout)[device_id]
    return {"id": deployment.deployment_id, "ok": outcome.ok, "error": outcome.error}


def _assert_complete(data_dir: Path, versions: set[str]) -> str:
    current = ModelStore(data_dir).current()
    assert current is not None, "a crash must never leave the device without its model"
    assert current.manifest.version in versions
    for name, entry in current.manifest.files.items():
        assert file_sha256(current.directory / name) == entry.sha256, f"{name} of the serving model is incomplete"
    return current.manifest.version


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_any_point_leaves_old_or_new_model_and_a_restart_finishes(
    point: str, fleet, broker_url: str, signing_key: tuple[Path, Path], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    device_id, pushed = fleet
    data = tmp_path / "data"
    v1 = make_package(tmp_path / "v1.efpkg", signing_key[0], version="1")
    v2 = make_package(tmp_path / "v2.efpkg", signing_key[0], version="2", scale=3.0)

    agent = AgentProcess(broker_url, device_id, data, signing_key[1]).start()
    try:
        assert _deploy(broker_url, device_id, v1, pushed)["ok"]
    finally:
        agent.stop()

    crashing = AgentProcess(broker_url, device_id, data, signing_key[1],
                            env={"EDGEFLEET_AGENT_CRASH_AT": point}).start()
    url = BrokerURL.parse(broker_url)
    deployment = push_package(v2, broker=url, device=device_id, chunk_size=CHUNK)
    pushed.append(deployment.package)
    assert crashing.proc is not None
    assert crashing.proc.wait(60) == -9, f"the agent should have died at {point}"

    _assert_complete(data, {"1", "2"})
    if point == "chunk:3":
        index = data / "downloads" / f"{deployment.package.sha256}.chunks"
        assert 3 in json.loads(index.read_text()), "chunks on disk before the crash are remembered"

    watcher = Watcher(broker_url, topics.events(device_id))
    restarted = AgentProcess(broker_url, device_id, data, signing_key[1]).start()
    try:
        _, event = watcher.wait_for(lambda t, m: m["deployment_id"] == deployment.deployment_id
                                    and m["phase"] in ("done", "failed"), timeout=60)
    finally:
        restarted.stop()
        watcher.close()
    assert event["phase"] == "done", event
    assert _assert_complete(data, {"2"}) == "2"
    if point == "chunk:3":
        assert "resuming the download" in restarted.log()
    assert not list((data / "packages").glob(".staging-*")), "no half-unpacked package is left behind"


def test_a_model_that_keeps_crashing_the_agent_is_rolled_back(
    fleet, broker_url: str, signing_key: tuple[Path, Path], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    device_id, pushed = fleet
    data = tmp_path / "data"
    agent = AgentProcess(broker_url, device_id, data, signing_key[1]).start()
    try:
        assert _deploy(broker_url, device_id, make_package(tmp_path / "v1.efpkg", signing_key[0], version="1"),
                       pushed)["ok"]
    finally:
        agent.stop()

    # v2 "crashes the runtime" every time it is benchmarked, as a model with a bad kernel would.
    watcher = Watcher(broker_url, topics.events(device_id))
    deployment = push_package(make_package(tmp_path / "v2.efpkg", signing_key[0], version="2", scale=3.0),
                              broker=BrokerURL.parse(broker_url), device=device_id)
    pushed.append(deployment.package)
    crashes = 0
    survivor = None
    for _ in range(5):
        proc = AgentProcess(broker_url, device_id, data, signing_key[1],
                            env={"EDGEFLEET_AGENT_CRASH_AT": "benchmarking"}).start()
        assert proc.proc is not None
        try:
            assert proc.proc.wait(30) == -9
            crashes += 1
        except subprocess.TimeoutExpired:  # still running after 30 s: it no longer crashes
            survivor = proc
            break
    try:
        _, event = watcher.wait_for(lambda t, m: m["deployment_id"] == deployment.deployment_id
                                    and m["phase"] == "failed", timeout=30)
    finally:
        watcher.close()
        if survivor is not None:
            survivor.stop()
    assert crashes == 3
    assert "crashed the agent 3 times; rolled back to tiny@1:raspberry-pi-4" in event["error"]
    assert _assert_complete(data, {"1"}) == "1"


@pytest.mark.parametrize("point", CRASH_LOOP_ROLLBACK_POINTS)
def test_a_crash_during_the_crash_loop_rollback_is_finished_at_the_next_start(
    point: str, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    outcome = sigkill_during_crash_loop_rollback(Lab(tmp_path, *signing_key), CRASH_LOOP_ROLLBACK_POINTS.index(point))
    assert f"killed at {point}" in outcome.detail
    assert outcome.survived and outcome.defined and outcome.lost == 0, outcome


@pytest.mark.parametrize("point", FAILED_TEST_ROLLBACK_POINTS)
def test_a_crash_while_discarding_a_failed_package_keeps_the_old_model(
    point: str, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    outcome = sigkill_during_failed_install_rollback(Lab(tmp_path, *signing_key), FAILED_TEST_ROLLBACK_POINTS.index(point))
    assert f"killed at {point}" in outcome.detail
    assert outcome.survived and outcome.defined and outcome.lost == 0, outcome
