"""Profile detection from fake /proc trees, the config file, and the agent command's precedence rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.agent.cli import agent
from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.agent.detect import detect_profile, profile_for_model
from edgefleet.agent.errors import ConfigError
from edgefleet.hardware_profiles import load_profile

PI4_CPUINFO = """\
processor	: 3
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41

Revision	: c03114
Serial		: 10000000abcdef01
Model		: Raspberry Pi 4 Model B Rev 1.4
"""
X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"


def fake_proc(tmp_path: Path, *, dt_model: str | None = None, cpuinfo: str = "") -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cpuinfo").write_text(cpuinfo)
    if dt_model is not None:
        (proc / "device-tree").mkdir(exist_ok=True)
        (proc / "device-tree" / "model").write_bytes(dt_model.encode() + b"\x00")  # NUL-terminated, as the kernel does
    return proc


# --- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "profile"), [
    ("Raspberry Pi 4 Model B Rev 1.4", "raspberry-pi-4"),
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "raspberry-pi-zero-2-w"),
    ("Raspberry Pi 400 Rev 1.0", "raspberry-pi-4"),
    ("Raspberry Pi Compute Module 4 Rev 1.1", "raspberry-pi-4"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", None),
    ("NVIDIA Jetson Orin Nano Developer Kit", None),
])
def test_board_models_map_to_profiles(model: str, profile: str | None) -> None:
    assert profile_for_model(model) == profile
    if profile is not None:
        load_profile(profile)  # every profile detection can name is bundled


def test_detection_from_the_device_tree(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, dt_model="Raspberry Pi 5 Model B Rev 1.0", cpuinfo=PI4_CPUINFO)
    found = detect_profile(proc=proc, machine="aarch64")
    assert found.profile == "raspberry-pi-5"
    assert "device-tree/model" in found.evidence and "Raspberry Pi 5 Model B Rev 1.0" in found.evidence


def test_detection_falls_back_to_cpuinfo_model_then_revision(tmp_path: Path) -> None:
    found = detect_profile(proc=fake_proc(tmp_path, cpuinfo=PI4_CPUINFO), machine="aarch64")
    assert found.profile == "raspberry-pi-4" and "cpuinfo Model" in found.evidence
    no_model = PI4_CPUINFO.replace("Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n", "")
    found = detect_profile(proc=fake_proc(tmp_path, cpuinfo=no_model.replace("c03114", "902120")), machine="aarch64")
    assert found.profile == "raspberry-pi-zero-2-w" and "Revision: 902120" in found.evidence


def test_detection_of_x86_64_and_failure(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, cpuinfo=X86_CPUINFO)  # lower-case "model" is a CPU model number, not a board
    assert detect_profile(proc=proc, machine="x86_64").profile == "generic-linux-x86_64"
    proc = fake_proc(tmp_path, dt_model="Raspberry Pi 3 Model B Plus Rev 1.3", cpuinfo="")
    with pytest.raises(ConfigError, match=r"could not detect .*Raspberry Pi 3 Model B Plus.*'aarch64'.*pass --profile"):
        detect_profile(proc=proc, machine="aarch64")


# --- the config file ----------------------------------------------------------------------


def test_config_file_keys_types_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("broker: mqtt://fleet.example:1883\ntrust: keys/signing.pub\ngroups: [lab, roof]\n"
                    "data_dir: state\nruns: 50\nsimulate: true\nidle_seconds: 0.5\n")
    config = load_config(path)
    assert config.trust == [tmp_path / "keys" / "signing.pub"] and config.data_dir == tmp_path / "state"
    assert config.groups == ["lab", "roof"] and config.runs == 50 and config.simulate is True
    assert config.as_defaults()["trusted"] == [tmp_path / "keys" / "signing.pub"]
    assert "profile_name" not in config.as_defaults()


@pytest.mark.parametrize(("text", "message"), [
    ("device-id: pi\n", r"agent.yaml: unknown key 'device-id' \(did you mean 'device_id'\?\)"),
    ("runs: many\n", r"agent.yaml: key 'runs': Input should be a valid integer"),
    ("max_seconds: 0\n", r"agent.yaml: key 'max_seconds': Input should be greater than 0"),
    ("- broker\n", r"agent.yaml: expected a mapping of keys to values, found a list"),
    ("broker: [unclosed\n", r"agent.yaml: not valid YAML at line 2"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_missing_config_file_is_an_error_only_when_asked_for(tmp_path: Path) -> None:
    assert load_config(tmp_path / "none.yaml", required=False) == AgentConfig()
    with pytest.raises(ConfigError, match="none.yaml: no such config file"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(tmp_path / "empty.yaml") == AgentConfig()


# --- precedence in the command --------------------------------------------------------------


def _params(args: list[str], env: dict[str, str] | None = None,
            monkeypatch: pytest.MonkeyPatch | None = None) -> dict:  # type: ignore[type-arg]
    """The agent command's resolved parameters, without running the daemon."""
    if monkeypatch is not None:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
    with agent.make_context("agent", args) as ctx:
        return dict(ctx.params)


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EDGEFLEET_CONFIG", "EDGEFLEET_BROKER", "EDGEFLEET_RUNS", "EDGEFLEET_DEVICE_ID", "EDGEFLEET_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    key = tmp_path / "signing.pub"
    key.write_text("key")
    path = tmp_path / "agent.yaml"
    path.write_text(f"broker: mqtt://file:1883\nruns: 50\ndevice_id: from-file\nprofile: raspberry-pi-5\n"
                    f"trust: [{key}]\ngroups: [lab]\nwarmup: 3\n")
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(path))
    monkeypatch.setenv("EDGEFLEET_RUNS", "70")
    p = _params(["--broker", "mqtt://flag:1883"])
    assert p["broker"] == "mqtt://flag:1883"  # flag over file
    assert p["runs"] == 70  # env over file
    assert p["warmup"] == 3 and p["device_id"] == "from-file" and p["profile_name"] == "raspberry-pi-5"  # file
    assert p["trusted"] == (key,) and p["groups"] == ("lab",)
    assert p["max_seconds"] == 10.0 and p["sysfs"] == Path("/sys")  # defaults
    assert _params(["--runs", "9"])["runs"] == 9  # flag over env
    monkeypatch.delenv("EDGEFLEET_CONFIG")
    assert _params(["--config", str(path)])["device_id"] == "from-file"


def test_no_config_file_at_the_default_path_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFLEET_CONFIG", raising=False)
    monkeypatch.setattr("edgefleet.agent.cli.DEFAULT_CONFIG", tmp_path / "absent.yaml")
    p = _params([])
    assert p["profile_name"] is None and p["runs"] == 200


def test_the_command_reports_a_bad_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("brokr: mqtt://x\n")
    result = CliRunner().invoke(agent, ["--config", str(path)])
    assert result.exit_code == 2
    assert "agent.yaml: unknown key 'brokr' (did you mean 'broker'?)" in result.output


def test_the_command_logs_the_detected_profile(tmp_path: Path, signing_key: tuple[Path, Path],
                                               caplog: pytest.LogCaptureFixture) -> None:
    proc = fake_proc(tmp_path, dt_model="Raspberry Pi 4 Model B Rev 1.4")
    (tmp_path / "empty.yaml").write_text("")
    # An invalid device id stops the command right after detection, before it would connect.
    with caplog.at_level("INFO"):
        result = CliRunner().invoke(agent, ["--config", str(tmp_path / "empty.yaml"), "--proc", str(proc),
                                            "--trust", str(signing_key[1]), "--device-id", "bad id"])
    assert result.exit_code == 1 and "invalid device id 'bad id'" in result.output
    assert "profile raspberry-pi-4 detected from" in caplog.text and "Raspberry Pi 4 Model B Rev 1.4" in caplog.text


def test_the_command_says_to_pass_profile_when_detection_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgefleet.agent.detect.platform.machine", lambda: "riscv64")
    (tmp_path / "empty.yaml").write_text("")
    result = CliRunner().invoke(agent, ["--config", str(tmp_path / "empty.yaml"), "--proc", str(fake_proc(tmp_path))])
    assert result.exit_code == 1
    assert "could not detect this device's hardware profile" in result.output and "pass --profile" in result.output


def test_every_option_is_a_config_key_and_back() -> None:
    from edgefleet.agent.config import PARAMETER_NAMES

    options = {p.name for p in agent.params if p.name not in ("config", "help")}
    keys = {PARAMETER_NAMES.get(k, k) for k in AgentConfig.model_fields}
    assert options == keys
