"""A real agent process against the real Mosquitto: good deployments, bad ones, bad messages, no broker.

The tests in this module share one agent process and run in order: each pushes something and
checks what the device reports and serves afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    AgentProcess,
    Mosquitto,
    Watcher,
    forget_device,
    make_package,
    publish,
)

from edgefleet.agent import keys, topics
from edgefleet.agent.messages import PackageRef
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.push import clear_deployment, push_package


@pytest.fixture(scope="module")
def device(broker_url: str, signing_key: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AgentProcess, Watcher]]:
    device_id = f"test-agent-{uuid.uuid4().hex[:8]}"  # unique: other test runs may share the broker
    workdir = tmp_path_factory.mktemp("agent")
    clear_deployment(BrokerURL.parse(broker_url), device=device_id)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    agent = AgentProcess(broker_url, device_id, workdir / "data", signing_key[1]).start()
    watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)
    yield device_id, agent, watcher
    agent.stop()
    watcher.close()
    forget_device(broker_url, device_id, _PUSHED)


_PUSHED: list[PackageRef] = []


def _push(broker_url: str, device_id: str, package: Path) -> str:
    deployment = push_package(package, broker=BrokerURL.parse(broker_url), device=device_id)
    _PUSHED.append(deployment.package)
    return deployment.deployment_id


def _final_event(watcher: Watcher, deployment_id: str) -> dict:  # type: ignore[type-arg]
    _, event = watcher.wait_for(lambda t, m: t.endswith("/events") and m["deployment_id"] == deployment_id
                                and m["phase"] in ("done", "failed"))
    return event


def _serving_version(watcher: Watcher) -> str | None:
    states = [m for t, m in _decoded(watcher) if t.endswith("/state")]
    model = states[-1].get("model")
    return model["version"] if model else None


def _decoded(watcher: Watcher) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    import json

    out = []
    for topic, payload in list(watcher.messages):
        try:
            out.append((topic, json.loads(payload)))
        except ValueError:
            pass
    return out


def test_a_pushed_package_is_installed_benchmarked_and_reported(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    deployment = _push(broker_url, device_id, make_package(tmp_path / "v1.efpkg", signing_key[0], version="1"))
    assert _final_event(watcher, deployment)["phase"] == "done"
    _, report = watcher.wait_for(lambda t, m: t.endswith("/telemetry") and m["package_id"] == "tiny@1:raspberry-pi-4")
    assert report["simulated"] is True
    assert report["power"]["source"] == "estimate", "a simulated device reports the profile's power estimate"
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report["runs"] == 20 and report["throughput_ips"] > 0 and report["energy_mj"] > 0
    watcher.wait_for(lambda t, m: t.endswith("/state") and (m.get("model") or {}).get("version") == "1")
    assert _serving_version(watcher) == "1"


def test_a_package_from_an_untrusted_key_is_refused_and_the_old_model_kept(device, broker_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    rogue_key, _ = keys.generate(tmp_path / "rogue.key")
    deployment = _push(broker_url, device_id, make_package(tmp_path / "rogue.efpkg", rogue_key, version="2"))
    event = _final_event(watcher, deployment)
    assert event["phase"] == "failed" and "does not trust" in event["error"]
    assert _serving_version(watcher) == "1"


def test_a_package_whose_model_does_not_match_its_hash_is_refused(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    device_id, agent, watcher = device
    good = make_package(tmp_path / "good.efpkg", signing_key[0], version="2b")
    tampered = tmp_path / "tampered.efpkg"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, data[:-1] + bytes([data[-1] ^ 1]) if info.filename == "model.onnx" else data)
    event = _final_event(watcher, _push(broker_url, device_id, tampered))
    assert event["phase"] == "failed" and "model.onnx: sha256" in event["error"]
    assert _serving_version(watcher) == "1"


def test_a_model_that_fails_its_test_vectors_is_not_installed(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    bad = make_package(tmp_path / "wrong.efpkg", signing_key[0], version="3", expected_shift=1.0)
    event = _final_event(watcher, _push(broker_url, device_id, bad))
    assert event["phase"] == "failed" and "test vector 0" in event["error"]
    assert _serving_version(watcher) == "1"


def test_a_package_for_another_profile_is_refused(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    other = make_package(tmp_path / "pi5.efpkg", signing_key[0], version="4", profile="raspberry-pi-5")
    event = _final_event(watcher, _push(broker_url, device_id, other))
    assert event["phase"] == "failed" and "compiled for raspberry-pi-5" in event["error"]
    assert _serving_version(watcher) == "1"


@pytest.mark.parametrize("payload", [b"not json", b"{}", b'{"kind": "deployment", "package": 7}', b"\xff\xfe"])
def test_malformed_messages_are_logged_and_ignored(device, broker_url, payload) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    ignored_before = agent.log().count("malformed message")
    publish(broker_url, topics.device_deploy(device_id), payload)
    _wait_until(lambda: agent.log().count("malformed message") > ignored_before, timeout=10)
    assert agent.alive()


def test_a_failed_deployment_from_the_far_future_does_not_lock_out_later_ones(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time

    from edgefleet.agent.messages import Deployment
    from edgefleet.deploy.push import describe_package, new_deployment_id

    device_id, agent, watcher = device
    _, ref = describe_package(make_package(tmp_path / "bogus.efpkg", signing_key[0], version="4.4"))
    bogus = Deployment(deployment_id=new_deployment_id(), package=ref, profile="esp32-s3", issued_at=time.time() + 1e7)
    publish(broker_url, topics.device_deploy(device_id), bogus.to_bytes())
    assert _final_event(watcher, bogus.deployment_id)["phase"] == "failed"
    # Only an applied deployment sets the floor for later ones; this one changed nothing.
    deployment = _push(broker_url, device_id, make_package(tmp_path / "v45.efpkg", signing_key[0], version="4.5"))
    assert _final_event(watcher, deployment)["phase"] == "done"


def test_after_bad_input_the_agent_still_installs_a_good_package(device, broker_url, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device_id, agent, watcher = device
    deployment = _push(broker_url, device_id, make_package(tmp_path / "v5.efpkg", signing_key[0], version="5", scale=2.0))
    assert _final_event(watcher, deployment)["phase"] == "done"
    watcher.wait_for(lambda t, m: t.endswith("/state") and (m.get("model") or {}).get("version") == "5")
    assert agent.alive()


def test_an_unreachable_broker_is_retried_until_it_comes_up(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    broker = Mosquitto(tmp_path)  # configured, not started yet
    agent = AgentProcess(broker.url, "test-late-broker", tmp_path / "data", signing_key[1]).start()
    try:
        _wait_until(lambda: "cannot reach the broker" in agent.log(), timeout=20)
        broker.start()
        watcher = Watcher(broker.url, "edgefleet/v1/devices/test-late-broker/state")
        watcher.wait_for(lambda t, m: m["status"] == "online", timeout=90)
        watcher.close()
    finally:
        agent.stop()
        broker.stop()


def _wait_until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)
