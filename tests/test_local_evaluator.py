"""``compile --measure-locally``: candidates benchmarked on this machine, and the noise-aware choice.

The evaluator runs real onnxruntime and LiteRT packages made by ``compile_model`` from the digits
MLP; run counts are small, and no test asserts a timing (the machine is shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgefleet.compiler import model_zoo
from edgefleet.compiler.cli import compile_command
from edgefleet.compiler.compile import compile_model
from edgefleet.compiler.errors import CompileError
from edgefleet.compiler.local_evaluator import LocalEvaluator, this_arch
from edgefleet.compiler.search import (
    MeasuredLatency,
    MeasuredPoint,
    measure_in_rounds,
    noise_aware_choice,
    noise_tolerant_front,
)
from edgefleet.hardware_profiles import load_profile

GENERIC = "generic-linux-x86_64"
pytestmark = pytest.mark.skipif(this_arch() != "x86_64", reason="the generic profile is x86_64: this machine must be one")


def latency(median: float, half_width: float, rounds: int = 7) -> MeasuredLatency:
    return MeasuredLatency(median, median - half_width, median + half_width, rounds)


def test_every_round_measures_each_candidate_once_and_a_failure_drops_only_that_candidate() -> None:
    import random

    calls: list[str] = []

    def once(name: str) -> float | None:
        calls.append(name)
        return None if name == "broken" else {"a": 1.0, "b": 2.0, "c": 3.0}[name]

    got = measure_in_rounds(["a", "broken", "b", "c"], 5, once, shuffle=random.Random(0))
    assert set(got) == {"a", "b", "c"} and all(m.rounds == 5 for m in got.values())
    assert calls.count("broken") == 1 and len(calls) == 16
    assert [got[n].median_ms for n in "abc"] == [1.0, 2.0, 3.0]


def test_candidates_within_noise_of_the_fastest_are_ties_broken_by_size_then_fidelity() -> None:
    points = {
        "fp32": MeasuredPoint(latency(0.0130, 0.0010), size_bytes=77_000, fidelity_loss=0.0),
        "int8": MeasuredPoint(latency(0.0135, 0.0010), size_bytes=23_000, fidelity_loss=0.01),
        "int8-small": MeasuredPoint(latency(0.0138, 0.0010), size_bytes=13_000, fidelity_loss=0.02),
        "slow": MeasuredPoint(latency(0.0300, 0.0010), size_bytes=10_000, fidelity_loss=0.02),
    }
    assert noise_aware_choice(points) == ("int8-small", ["fp32", "int8", "int8-small"])
    # Same size: the lower fidelity loss wins the tie.
    same_size = {**points, "int8-small-better": MeasuredPoint(latency(0.0136, 0.0010), 13_000, 0.005)}
    assert noise_aware_choice(same_size)[0] == "int8-small-better"
    # Nothing is faster than "slow" beyond noise at its size: on the front, though no tie.
    assert noise_tolerant_front(points) == {"fp32", "int8", "int8-small", "slow"}


def test_only_a_candidate_faster_beyond_noise_and_no_worse_otherwise_dominates() -> None:
    points = {
        "fast": MeasuredPoint(latency(0.010, 0.0005), size_bytes=50_000, fidelity_loss=0.0),
        "twin": MeasuredPoint(latency(0.0102, 0.0005), size_bytes=60_000, fidelity_loss=0.0),
        "small": MeasuredPoint(latency(0.020, 0.0005), size_bytes=10_000, fidelity_loss=0.0),
        "slow-big": MeasuredPoint(latency(0.030, 0.0005), size_bytes=60_000, fidelity_loss=0.0),
    }
    # "twin" is bigger but cannot be told apart from "fast": a tie that "fast" wins on size, not a domination.
    assert noise_aware_choice(points) == ("fast", ["fast", "twin"])
    assert noise_tolerant_front(points) == {"fast", "twin", "small"}
    alone = {k: points[k] for k in ("fast", "small")}
    assert noise_aware_choice(alone) == ("fast", ["fast"])


def test_median_and_interval_from_rounds() -> None:
    m = MeasuredLatency.from_rounds([1.0, 1.1, 0.9, 1.05, 0.95])
    assert m.median_ms == 1.0 and m.rounds == 5 and 0.9 <= m.low_ms <= m.median_ms <= m.high_ms <= 1.1
    one = MeasuredLatency.from_rounds([2.0])
    assert (one.low_ms, one.median_ms, one.high_ms) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="no rounds"):
        MeasuredLatency.from_rounds([])


def test_measures_real_onnxruntime_and_litert_packages_here(digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    litert_host = load_profile(GENERIC).model_dump(mode="json")
    litert_host.update(name="x86-litert", runtimes=["litert"])
    (tmp_path / "x86-litert.yaml").write_text(yaml.safe_dump(litert_host))
    onnx_result, litert_result = compile_model(digits_mlp.onnx_path, [GENERIC, str(tmp_path / "x86-litert.yaml")],
                                               calibration=digits_mlp.calibration_path, out_dir=tmp_path / "out",
                                               key_path=signing_key[0])
    assert (onnx_result.runtime, litert_result.runtime) == ("onnxruntime", "litert")
    evaluator = LocalEvaluator(rounds=3, runs=10, warmup=1)
    for result, profile in ((onnx_result, load_profile(GENERIC)), (litert_result, load_profile(tmp_path / "x86-litert.yaml"))):
        got = evaluator.measure(profile, {result.choice: result.package_path})
        m = got[result.choice]
        assert m.rounds == 3 and 0 < m.low_ms <= m.median_ms <= m.high_ms, (result.runtime, m)


def test_a_profile_of_another_architecture_is_refused(digits_mlp: model_zoo.ZooModel, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="raspberry-pi-4 is aarch64 and this machine is x86_64"):
        LocalEvaluator().measure(load_profile("raspberry-pi-4"), {})
    home = tmp_path / "home"
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", GENERIC, "--profile", "nucleo-l4r5zi", "--measure-locally",
        "-o", str(tmp_path / "out")], env={"EDGEFLEET_HOME": str(home)})
    assert result.exit_code == 2, result.output
    assert "nucleo-l4r5zi is armv7e-m and this machine is x86_64" in result.output
    assert "compile nucleo-l4r5zi in a run without --measure-locally" in result.output
    assert not home.exists() and not (tmp_path / "out").exists()  # refused before the default key or any package


def test_measure_locally_from_the_command_line_records_measured_latency(digits_mlp: model_zoo.ZooModel,
                                                                        signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", GENERIC, "--data", str(digits_mlp.validation_path), "--max-drop", "1%",
        "--time-budget", "0", "--cache", str(tmp_path / "cache"), "--key", str(signing_key[0]), "-o", str(tmp_path / "out"),
        "--measure-locally", "--json"])
    assert result.exit_code == 0, result.output
    (package,) = json.loads(result.stdout)["packages"]
    assert package["measured_latency"]["where"] == "on this machine"
    by_scheme = package["measured_latency"]["by_scheme"]
    rows = {r["scheme"]: r for r in package["candidates"]}
    feasible = {s for s, r in rows.items() if r["feasible"]}
    assert set(by_scheme) == feasible and package["choice"] in feasible  # every feasible candidate is measured
    for scheme, m in by_scheme.items():
        assert rows[scheme]["measured_latency_ms"] == m["median_ms"] and m["rounds"] == 7
    assert rows[package["choice"]]["pareto"]  # on the noise-tolerant front of the measured candidates
    assert "on this machine" in package["reason"]


def test_compile_offers_the_fleet_broker_options_with_tls() -> None:
    result = CliRunner().invoke(compile_command, ["--help"])
    for flag in ("--measure-locally", "--broker URL", "--tls-ca PEM", "--tls-cert PEM", "--tls-key PEM", "--password-file"):
        assert flag in result.output


def test_a_bad_model_path_fails_before_the_default_key_is_created(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(compile_command, [str(tmp_path / "missing.onnx"), "--profile", GENERIC, "-o", str(tmp_path / "out")],
                                env={"EDGEFLEET_HOME": str(home)})
    assert result.exit_code == 1 and "missing.onnx: no such model file (check the path)" in result.output
    assert not home.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("db", "message"), [
    ("sqlite://x", "Invalid value for '--fleet-db': 'sqlite://x': write sqlite:///relative/path.db"),
    ("DIR", "--fleet-db: DIR: cannot open the telemetry database"),
])
def test_fleet_db_errors_name_the_flag(db: str, message: str, digits_mlp: model_zoo.ZooModel,
                                       signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    db = db.replace("DIR", str(tmp_path))
    result = CliRunner().invoke(compile_command, [str(digits_mlp.onnx_path), "--profile", GENERIC, "--key", str(signing_key[0]),
                                                  "-o", str(tmp_path / "out"), "--fleet-db", db])
    assert result.exit_code != 0 and message.replace("DIR", str(tmp_path)) in result.output, result.output
    assert not (tmp_path / "out").exists()
