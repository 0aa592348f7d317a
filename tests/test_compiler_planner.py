"""The planner is a pure function: measured candidates and a profile in, a choice and a reason out."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.compiler.errors import TargetNotImplemented
from edgefleet.compiler.fidelity import Fidelity, OutputFidelity
from edgefleet.compiler.planner import Budget, Candidate, plan
from edgefleet.compiler.targets import exporter_for
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat, Runtime

KiB = 1024


def profile(**changes: Any) -> HardwareProfile:
    """A small Linux board; ``changes`` override top-level fields (memory, formats, runtimes, kind, name)."""
    fields: dict[str, Any] = {
        "name": "test-board",
        "display_name": "Test board",
        "kind": "sbc",
        "cpu": {"arch": "aarch64", "core": "Cortex-A53", "cores": 4, "clock_mhz": 1000},
        "memory": {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2},
        "runtimes": ["onnxruntime"],
        "formats": {"fp32": "supported", "int8": "fast"},
        "throughput": {"fp32_gflops": 5, "int8_gops": 10},
        "power": {"idle_w": 1, "active_w": 3},
        "sources": [{"title": "test", "url": "https://example.com/board"}],
    }
    fields.update(changes)
    return HardwareProfile.model_validate(fields)


def classifier(agreement: float, sqnr: float | None = 40.0) -> Fidelity:
    return Fidelity(samples=100, synthetic=False, outputs=(OutputFidelity("p", sqnr, 0.999, 0.01, agreement),))


def regression(sqnr: float | None) -> Fidelity:
    return Fidelity(samples=100, synthetic=False, outputs=(OutputFidelity("y", sqnr, 0.999, 0.01, None),))


def candidate(scheme: str, size: int, fidelity: Fidelity, *, fmt: NumberFormat = NumberFormat.INT8,
              dynamic: bool = False, modified: bool = True, ram: int | None = None) -> Candidate:
    return Candidate(
        scheme=scheme, config={"scheme": scheme}, number_format=fmt, runtime_quantization=dynamic,
        modified=modified or scheme == "fp32", params=1000, nonzero_params=1000, size_bytes=size,
        ram_bytes=ram if ram is not None else size + 2 * KiB, fidelity=fidelity,
    )


FP32 = candidate("fp32", 80 * KiB, classifier(1.0, None), fmt=NumberFormat.FP32)
STATIC = candidate("int8-static", 24 * KiB, classifier(0.995))
DYNAMIC = candidate("int8-dynamic", 21 * KiB, classifier(1.0), dynamic=True)


def test_a_fast_format_wins_and_static_beats_the_smaller_dynamic_model() -> None:
    p = plan([FP32, STATIC, DYNAMIC], profile())
    assert p.chosen is STATIC
    assert p.reason.startswith("int8-static for test-board: it keeps top-1 agreement at 99.50%")
    assert "int8-dynamic also fits but quantizes activations on every inference" in p.reason
    assert "fp32 also fits but fp32 is not a fast format here" in p.reason


def test_without_a_fast_int8_path_the_smaller_model_wins() -> None:
    p = plan([FP32, STATIC], profile(formats={"fp32": "supported", "int8": "supported"}))
    assert p.chosen is STATIC and "no feasible candidate is in a format test-board runs fast" in p.reason


def test_a_candidate_below_the_agreement_budget_is_out_and_the_budget_is_adjustable() -> None:
    drifting = candidate("int8-static", 24 * KiB, classifier(0.97))
    p = plan([FP32, drifting], profile())
    assert p.chosen is FP32
    assert "int8-static is out: top-1 agreement 97.00% < 99.00%" in p.reason
    assert plan([FP32, drifting], profile(), budget=Budget(min_agreement=0.95)).chosen is drifting


def test_models_without_a_classifier_output_are_judged_by_sqnr() -> None:
    fp32 = candidate("fp32", 80 * KiB, regression(None), fmt=NumberFormat.FP32)
    noisy = candidate("int8-static", 24 * KiB, regression(22.0))
    p = plan([fp32, noisy], profile())
    assert p.chosen is fp32 and "SQNR 22.0 dB < 30 dB" in p.reason
    assert plan([fp32, noisy], profile(), budget=Budget(min_sqnr_db=20)).chosen is noisy


def test_storage_and_ram_limits_reject_candidates() -> None:
    board = profile(memory={"ram": "64 KiB", "storage": "50 KiB", "bandwidth_gbps": 1})
    big_activations = candidate("int8-dynamic", 21 * KiB, classifier(1.0), dynamic=True, ram=100 * KiB)
    p = plan([FP32, STATIC, big_activations], board)
    assert p.chosen is STATIC
    verdicts = {v.candidate.scheme: v.problems for v in p.verdicts}
    assert "model 80.0 KiB > 50.0 KiB storage" in verdicts["fp32"]
    assert "needs ~100.0 KiB RAM > 64.0 KiB" in verdicts["int8-dynamic"]


def test_when_nothing_fits_the_reason_lists_every_problem_and_what_to_try() -> None:
    board = profile(memory={"ram": "8 KiB", "storage": "8 KiB", "bandwidth_gbps": 1})
    p = plan([FP32, STATIC], board)
    assert p.chosen is None
    assert p.reason.startswith("No candidate fits test-board within the budget (top-1 agreement >= 99.00%).")
    assert "fp32: model 80.0 KiB > 8.0 KiB storage" in p.reason and "--min-agreement" in p.reason


def test_a_pass_that_changed_nothing_and_formats_the_device_lacks_are_out() -> None:
    unchanged = candidate("int8-dynamic", 80 * KiB, classifier(1.0, None), dynamic=True, modified=False)
    p = plan([FP32, STATIC, unchanged], profile(formats={"fp32": "fast"}))
    assert p.chosen is FP32
    problems = {v.candidate.scheme: v.problems for v in p.verdicts}
    assert problems["int8-static"] == ("test-board does not run int8",)
    assert "unchanged by its pass (nothing it could compress)" in problems["int8-dynamic"]


def test_fidelity_on_random_inputs_is_called_out() -> None:
    synthetic = Fidelity(samples=64, synthetic=True, outputs=classifier(1.0).outputs)
    p = plan([candidate("fp32", 80 * KiB, synthetic, fmt=NumberFormat.FP32)], profile())
    assert "measured on random inputs" in p.reason


def test_a_microcontroller_is_served_by_the_tflite_micro_target_in_int8_only() -> None:
    mcu = profile(name="tiny-mcu", kind="mcu", runtimes=["tflm"],
                  memory={"ram": "256 KiB", "flash": "1 MiB", "bandwidth_gbps": 0.1})
    exporter, notes = exporter_for(mcu)
    assert exporter.runtime is Runtime.TFLM and notes == ()
    assert exporter.formats == frozenset({NumberFormat.INT8})


def test_a_runtime_without_an_exporter_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.compiler import targets

    monkeypatch.delitem(targets.EXPORTERS, Runtime.TFLM)
    mcu = profile(name="tiny-mcu", kind="mcu", runtimes=["tflm"],
                  memory={"ram": "256 KiB", "flash": "1 MiB", "bandwidth_gbps": 0.1})
    with pytest.raises(TargetNotImplemented, match=r"profile 'tiny-mcu' runs \['tflm'\]: it needs a TFLite Micro target, "
                                                   r"which is not implemented yet") as info:
        exporter_for(mcu)
    assert info.value.runtimes == ("tflm",)


def test_a_tflm_candidate_that_does_not_fit_is_refused_with_measured_bytes_and_what_to_try() -> None:
    mcu = profile(name="tiny-mcu", kind="mcu", runtimes=["tflm"], formats={"int8": "fast", "fp32": "supported"},
                  memory={"ram": "256 KiB", "flash": "1 MiB", "bandwidth_gbps": 0.1})
    c = candidate("tflm-int8", 2 * 1024 * KiB, classifier(1.0))
    c = Candidate(**{**c.__dict__, "ram_bytes": 300 * KiB, "config": {"runtime": "tflm"}})
    p = plan([c], mcu, runtime="tflm", carried=frozenset({NumberFormat.INT8}))
    assert p.chosen is None
    assert "model 2.0 MiB > 1.0 MiB flash (2097152 bytes > 1048576 bytes)" in p.reason
    assert "TFLM tensor arena 300.0 KiB (307200 bytes) > 256.0 KiB RAM (262144 bytes)" in p.reason
    assert "prune channels, cluster weights, or choose a smaller model" in p.reason


def test_a_phone_that_prefers_litert_is_served_by_litert_and_a_pi_stays_on_onnxruntime() -> None:
    exporter, notes = exporter_for(profile(runtimes=["litert", "onnxruntime"]))
    assert exporter.runtime is Runtime.LITERT and notes == ()
    assert {NumberFormat.FP32, NumberFormat.FP16, NumberFormat.INT8} <= exporter.formats
    exporter, notes = exporter_for(profile(runtimes=["onnxruntime", "litert"]))
    assert exporter.runtime is Runtime.ONNXRUNTIME and notes == ()