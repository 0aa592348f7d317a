"""The Raspberry Pi install script and systemd unit: syntax, hardening, and an ExecStart the real CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.cli import agent
from edgefleet.agent.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PI = ROOT / "deploy" / "pi"
UNIT = PI / "edgefleet-agent.service"
INSTALL = PI / "install.sh"
EDGEFLEET = Path(sys.executable).parent / "edgefleet"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_install_script_syntax_and_help() -> None:
    assert INSTALL.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in INSTALL.read_text()
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, check=True)
    assert "Usage:" in result.stdout and "--trust" in result.stdout and "--dry-run" in result.stdout
    result = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown option: --bogus" in result.stderr


def _dry_run(tmp_path: Path, *args: str) -> str:
    key = tmp_path / "signing.pub"
    key.write_text("key")
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--trust", str(key), *args],
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_install_dry_run_installs_the_extras_and_enables_the_unit(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--extras", "agent,onnx", "--prefix", "/srv/ef")
    assert re.search(r"^\+ /srv/ef/venv/bin/pip install .*edgefleet\\\[agent\\,onnx\\\]$", out, re.MULTILINE), out
    assert "ExecStart=/srv/ef/venv/bin/edgefleet agent" in out
    assert "+ systemctl enable edgefleet-agent.service" in out and "+ systemctl restart" in out
    assert "+ systemctl restart" not in _dry_run(tmp_path, "--no-start")


@pytest.mark.skipif(Path("/etc/edgefleet/agent.yaml").exists(), reason="the installer keeps an existing config")
def test_the_config_the_installer_writes_is_valid(tmp_path: Path) -> None:
    out = _dry_run(tmp_path, "--broker", "mqtts://dev:it's@fleet.example:8883", "--device-id", "pi-7",
                   "--profile", "raspberry-pi-5", "--group", "lab", "--group", "roof")
    yaml_text = out.split("+ write /etc/edgefleet/agent.yaml (mode 0640):\n", 1)[1].split("\n+ ", 1)[0]
    (tmp_path / "agent.yaml").write_text(yaml_text)
    config = load_config(tmp_path / "agent.yaml")
    assert config.broker == "mqtts://dev:it's@fleet.example:8883" and config.device_id == "pi-7"
    assert config.profile == "raspberry-pi-5" and config.groups == ["lab", "roof"]
    assert config.trust == [Path("/etc/edgefleet/trusted-keys")] and config.data_dir == Path("/var/lib/edgefleet")


def test_the_unit_restarts_forever_as_a_dedicated_hardened_user() -> None:
    s = unit_settings()
    assert s["Restart"] == ["always"] and s["StartLimitIntervalSec"] == ["0"] and "RestartSec" in s
    assert s["User"] == ["edgefleet"] and s["StateDirectory"] == ["edgefleet"]
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert "/var/lib/edgefleet" in s["ReadWritePaths"][0].split()
    assert s["WantedBy"] == ["multi-user.target"]


def test_the_units_execstart_is_a_valid_agent_command_line(tmp_path: Path) -> None:
    (exec_start,) = unit_settings()["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/opt/edgefleet/venv/bin/edgefleet", "agent"]
    known = {opt for p in agent.params for opt in p.opts}
    flags = [a for a in argv[2:] if a.startswith("-")]
    assert flags and all(f in known for f in flags), f"unknown flags in ExecStart: {set(flags) - known}"
    # Run it for real (with --help) against a config file like the installer's.
    config = tmp_path / "agent.yaml"
    config.write_text("broker: mqtt://127.0.0.1:1883\ntrust: [/etc/edgefleet/trusted-keys]\n")
    real = [str(EDGEFLEET), *[str(config) if a == "/etc/edgefleet/agent.yaml" else a for a in argv[1:]], "--help"]
    result = subprocess.run(real, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/edgefleet/venv/bin/edgefleet", str(EDGEFLEET)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    version = int(re.search(r"systemd (\d+)", subprocess.run(["systemd-analyze", "--version"], capture_output=True,
                                                              text=True).stdout).group(1))  # type: ignore[union-attr]
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    if version < 254:  # RestartSteps and RestartMaxDelaySec (the backoff) are newer: older systemd ignores them
        problems = [p for p in problems if not re.search(r"Unknown key '?(RestartSteps|RestartMaxDelaySec)", p)]
    assert not problems, problems
