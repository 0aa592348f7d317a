"""Device labels end to end: real agent processes report them, the registry keeps them, rollouts target them.

Three agents on the real Mosquitto: two labelled on the command line, one from its config file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AgentProcess, Watcher, clear_retained, make_package

from edgefleet.agent import topics
from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.agent.errors import ConfigError
from edgefleet.agent.labels import parse_labels
from edgefleet.agent.messages import DeviceState, parse
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.cli import main
from edgefleet.deploy.push import clear_deployment, clear_package, describe_package


def test_labels_parse_and_refuse_bad_input(tmp_path: Path) -> None:
    assert parse_labels(["site=greenhouse", "floor=2", "canary="]) == {"site": "greenhouse", "floor": "2", "canary": ""}
    for bad, why in (("site", "KEY=VALUE"), ("=x", "invalid label key"), ("site=a b", "invalid value"),
                     ("bad key=1", "invalid label key")):
        with pytest.raises(ValueError, match=why):
            parse_labels([bad])
    with pytest.raises(ValueError, match="given twice"):
        parse_labels(["site=a", "site=b"])

    old = b'{"kind": "state", "device_id": "pi-1", "status": "online"}'  # an agent from before labels
    assert parse(DeviceState, old).labels == {}
    with pytest.raises(Exception, match="labels"):
        parse(DeviceState, b'{"kind": "state", "device_id": "pi-1", "status": "online", "labels": {"a b": "c"}}')

    config = tmp_path / "agent.yaml"
    config.write_text("labels: {site: greenhouse, floor: 2, canary:}\n")
    loaded = load_config(config)
    assert loaded.labels == {"site": "greenhouse", "floor": "2", "canary": ""}
    assert loaded.as_defaults()["labels"] == ["site=greenhouse", "floor=2", "canary="]
    config.write_text("labels: {site: green house}\n")
    with pytest.raises(ConfigError, match="labels.*invalid value 'green house'"):
        load_config(config)
    assert AgentConfig().as_defaults() == {}

    config.write_text("")
    result = subprocess.run([str(Path(sys.executable).parent / "edgefleet"), "agent", "--label", "site",
                             "--config", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Invalid value for '--label'" in result.stderr and "KEY=VALUE" in result.stderr


@pytest.fixture(scope="module")
def labelled(broker_url: str, signing_key: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], Path]]:
    """(device ids, database) with three agents online: two with site=a, one with site=b from its config file."""
    run = uuid.uuid4().hex[:6]
    ids = [f"test-lbl-{run}-{i}" for i in range(3)]
    workdir = tmp_path_factory.mktemp("labels")
    config = workdir / "agent.yaml"
    config.write_text("labels:\n  site: b\n  floor: 2\n")
    extras = [("--label", "site=a", "--label", "floor=1"), ("--label", "site=a"), ("--config", str(config))]
    watcher = Watcher(broker_url, *(topics.state(d) for d in ids))
    agents = [AgentProcess(broker_url, d, workdir / d, signing_key[1], extra=e).start() for d, e in zip(ids, extras)]
    try:
        for d in ids:
            watcher.wait_for(lambda t, m, d=d: m.get("device_id") == d and m["status"] == "online", timeout=30)
        yield ids, workdir / "fleet.db"
    finally:
        for agent in agents:
            agent.stop()
        watcher.close()
        for d in ids:
            clear_deployment(BrokerURL.parse(broker_url), device=d)
            clear_retained(broker_url, topics.state(d))


def test_agents_report_labels_and_rollouts_target_them(labelled, broker_url: str, signing_key,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    ids, db = labelled
    package = make_package(tmp_path / "tiny-7.efpkg", signing_key[0], version="7")
    try:
        result = CliRunner().invoke(main, ["rollout", "start", str(package), "--label", "site=a", "--canary", "1",
                                           "--waves", "100", "--broker", broker_url, "--db", str(db), "--json"])
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert record["status"] == "completed" and record["target"] == "labels site=a"
        assert sorted(d["device_id"] for d in record["devices"]) == ids[:2], "only the devices labelled site=a"
        assert all(d["phase"] == "done" for d in record["devices"])
    finally:
        clear_package(BrokerURL.parse(broker_url), describe_package(package)[1])

    result = CliRunner().invoke(main, ["devices", "--db", str(db), "--json"])
    labels = {r["device"]: r["labels"] for r in json.loads(result.stdout) if r["device"] in ids}
    assert labels == {ids[0]: {"site": "a", "floor": "1"}, ids[1]: {"site": "a"}, ids[2]: {"site": "b", "floor": "2"}}
    result = CliRunner().invoke(main, ["devices", "--db", str(db), "--label", "site=a", "--label", "floor=1", "--json"])
    assert [r["device"] for r in json.loads(result.stdout)] == [ids[0]]
    result = CliRunner().invoke(main, ["devices", "--db", str(db), "--label", "floor=2"])
    assert ids[2] in result.stdout and "floor=2,site=b" in result.stdout and ids[0] not in result.stdout

    result = CliRunner().invoke(main, ["rollout", "start", str(package), "--label", "site=nowhere", "--broker",
                                       broker_url, "--db", str(db)])
    assert result.exit_code == 1 and "no online device of labels site=nowhere" in result.output
    result = CliRunner().invoke(main, ["rollout", "start", str(package), "--label", "site=a", "--device", ids[0]])
    assert result.exit_code == 2 and "not both" in result.output
