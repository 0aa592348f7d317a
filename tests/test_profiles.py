"""Hardware profiles: every bundled file loads and is consistent; bad files fail with a useful message."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.hardware_profiles import (
    DeviceKind,
    HardwareProfile,
    NumberFormat,
    ProfileError,
    Runtime,
    list_profiles,
    load_profile,
    profile_names,
)
from edgefleet.hardware_profiles.cli import profiles

EXPECTED = {
    "raspberry-pi-zero-2-w",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "android-midrange",
    "android-flagship",
    "nucleo-l4r5zi",
    "arduino-nano-33-ble-sense",
    "esp32-s3",
    "generic-linux-x86_64",
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "profiles.md"


def _bundled_text(name: str) -> str:
    return (resources.files("edgefleet.hardware_profiles") / f"{name}.yaml").read_text(encoding="utf-8")


def _variant(tmp_path: Path, old: str, new: str, base: str = "raspberry-pi-4") -> tuple[Path, int]:
    """A copy of a bundled profile with one edit; returns the file and the 1-based line edited."""
    text = _bundled_text(base)
    assert old in text, f"{old!r} not in {base}.yaml: the test needs updating"
    line = text[: text.index(old)].count("\n") + 1
    path = tmp_path / "edited.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path, line


def _error(source: str | Path) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(source)
    return info.value


# --- the bundled profiles -------------------------------------------------------------------


def test_the_expected_profiles_are_bundled() -> None:
    assert set(profile_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_profile_loads_and_its_name_matches_its_file(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_profile_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert profile.sources, "every figure needs somewhere to check it"
    assert all(s.title.strip() for s in profile.sources)
    assert profile.power.idle_w <= profile.power.estimate_w(0.5) <= profile.power.active_w
    for accelerator in profile.accelerators:
        # A format an accelerator runs must be one the profile declares.
        assert set(accelerator.formats) <= set(profile.formats), accelerator.name
    if profile.kind is DeviceKind.MCU:
        assert profile.memory.flash is not None
        assert profile.runtimes == [Runtime.TFLM]
        assert profile.fast_formats() == [NumberFormat.INT8]
        assert profile.power.active_w < 1, "microcontrollers are in milliwatts"
    else:
        assert profile.memory.storage is not None
        assert Runtime.TFLM not in profile.runtimes
        assert {Runtime.ONNXRUNTIME, Runtime.LITERT} <= set(profile.runtimes)
    if profile.kind is DeviceKind.PHONE:
        assert profile.runtimes[0] is Runtime.LITERT
        assert {a.kind for a in profile.accelerators} >= {"gpu", "npu"}


def test_fast_formats_follow_the_hardware() -> None:
    # The A72 has no fp16 arithmetic; the A76 does.
    assert NumberFormat.FP16 not in load_profile("raspberry-pi-4").fast_formats()
    assert NumberFormat.FP16 in load_profile("raspberry-pi-5").fast_formats()


def test_list_profiles_is_sorted_by_kind_then_name() -> None:
    order = list(DeviceKind)
    keys = [(order.index(p.kind), p.name) for p in list_profiles()]
    assert keys == sorted(keys)


def test_a_path_loads_like_a_name(tmp_path: Path) -> None:
    path = tmp_path / "pi.yaml"
    path.write_text(_bundled_text("raspberry-pi-5"), encoding="utf-8")
    assert load_profile(path) == load_profile(str(path)) == load_profile("raspberry-pi-5")


# --- errors ----------------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest() -> None:
    error = _error("raspbery-pi-4")
    assert isinstance(error, ValueError)
    assert error.source == "raspbery-pi-4"
    assert "did you mean 'raspberry-pi-4'?" in str(error)
    assert "esp32-s3" in str(error), "the known names are listed"
    assert "edgefleet profiles" in str(error), "the message says what to do"


def test_missing_file(tmp_path: Path) -> None:
    error = _error(tmp_path / "nope.yaml")
    assert error.source == str(tmp_path / "nope.yaml")
    assert "no such file" in str(error)


def test_a_bundled_file_name_given_as_a_path_points_at_the_name(tmp_path: Path) -> None:
    error = _error(tmp_path / "raspberry-pi-4.yaml")
    assert "pass its name: 'raspberry-pi-4'" in str(error)


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    path, line = _variant(tmp_path, "runtimes: [onnxruntime, litert]", "runtimes: [onnxruntime, litert")
    error = _error(path)
    assert "YAML syntax error" in str(error)
    assert f"line {line}," in str(error), "points at where the unclosed bracket starts"


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- raspberry-pi-4\n", encoding="utf-8")
    assert "expected a mapping" in str(_error(path))


def test_a_typo_in_a_key_names_the_field_line_and_fix(tmp_path: Path) -> None:
    path, line = _variant(tmp_path, "  bandwidth_gbps: 4.0", "  bandwith_gbps: 4.0")
    message = str(_error(path))
    assert f"memory.bandwith_gbps (line {line}): unknown field; did you mean 'bandwidth_gbps'?" in message
    assert "memory.bandwidth_gbps" in message and "required field is missing" in message
    assert "raspberry-pi-4.yaml for an example" in message


def test_a_wrong_type_names_the_field_and_the_value(tmp_path: Path) -> None:
    path, line = _variant(tmp_path, "  cores: 4", "  cores: four")
    message = str(_error(path))
    assert f"cpu.cores (line {line}): Input should be a valid integer" in message
    assert "(got 'four')" in message


def test_an_unparseable_size(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  ram: 4 GiB", "  ram: lots")
    assert "memory.ram" in str(_error(path))


def test_active_power_below_idle(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  active_w: 6.4", "  active_w: 1.0")
    assert "power (line" in str(_error(path))
    assert "active_w (1.0) is below idle_w (2.7)" in str(_error(path))


def test_a_microcontroller_with_a_linux_runtime(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "runtimes: [tflm]", "runtimes: [tflm, onnxruntime]", base="esp32-s3")
    assert "runtimes must be [tflm]" in str(_error(path))


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path, _ = _variant(tmp_path, "  cores: 4", "  cores: 0\n  turbo: true")
    error = _error(path)
    assert len(error.problems) == 2
    assert any(p.startswith("cpu.cores") for p in error.problems)
    assert any(p.startswith("cpu.turbo") for p in error.problems)


# --- the command line ------------------------------------------------------------------------


def test_cli_lists_every_profile_as_a_table() -> None:
    result = CliRunner().invoke(profiles, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["NAME", "KIND"]
    assert {line.split()[0] for line in lines[1:]} == EXPECTED
    assert "4x Cortex-A72 @ 1.5 GHz" in result.output
    assert "640 KiB" in result.output and "2 MiB flash" in result.output


def test_cli_lists_as_json() -> None:
    result = CliRunner().invoke(profiles, ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {p["name"] for p in data} == EXPECTED
    assert all(p["sources"] for p in data)


def test_cli_show_prints_the_profile_with_its_sources() -> None:
    result = CliRunner().invoke(profiles, ["show", "raspberry-pi-4"])
    assert result.exit_code == 0, result.output
    assert "ram: 4 GiB" in result.output
    assert "pidramble.com" in result.output


def test_cli_show_output_loads_back_unchanged(tmp_path: Path) -> None:
    for name in EXPECTED:
        result = CliRunner().invoke(profiles, ["show", name])
        path = tmp_path / f"{name}.yaml"
        path.write_text(result.output, encoding="utf-8")
        assert load_profile(path) == load_profile(name)


def test_cli_show_json() -> None:
    result = CliRunner().invoke(profiles, ["show", "esp32-s3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["memory"]["ram"] == 512 * 1024
    assert data["memory"]["psram"] == 8 * 1024 * 1024


def test_cli_errors_carry_the_profile_error_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(profiles, ["show", "raspbery-pi-4"])
    assert result.exit_code == 1
    assert "did you mean 'raspberry-pi-4'?" in result.output
    path, line = _variant(tmp_path, "  cores: 4", "  cores: four")
    result = CliRunner().invoke(profiles, ["show", str(path)])
    assert result.exit_code == 1
    assert f"cpu.cores (line {line})" in result.output


def test_cli_commands_have_help_with_examples() -> None:
    for args in (["--help"], ["show", "--help"]):
        result = CliRunner().invoke(profiles, args)
        assert result.exit_code == 0
        assert "Examples:" in result.output


def test_docs_list_every_bundled_profile() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [name for name in profile_names() if f"`{name}`" not in text]
    assert not missing, f"docs/profiles.md does not list {missing}"
