"""docs/agent.md documents every agent option, config key, power source and report field, and its example parses."""

from __future__ import annotations

import re
from pathlib import Path

from edgefleet.agent.cli import agent
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.messages import BenchmarkReport, SystemSample

DOC = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()


def test_every_option_and_config_key_is_documented() -> None:
    for param in agent.params:
        for opt in param.opts:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in DOC, f"docs/agent.md does not mention {opt}"
    for key in AgentConfig.model_fields:
        assert f"`{key}`" in DOC, f"docs/agent.md does not document the config key {key}"


def test_every_power_source_and_new_report_field_is_documented() -> None:
    for source in ("jetson", "hwmon:<chip>", "pmic", "battery", "rapl", "estimate"):
        assert f"`{source}`" in DOC
    for name in ("energy_above_idle_mj", "temperature_before_c", "temperature_after_c", "throttled", "governor"):
        assert name in BenchmarkReport.model_fields and f"`{name}`" in DOC


def test_the_system_sample_example_is_valid() -> None:
    example = re.search(r"```json\n(.*?)```", DOC, re.DOTALL)
    assert example is not None
    sample = SystemSample.model_validate_json(example.group(1))
    assert set(SystemSample.model_fields) <= set(sample.model_dump()) and sample.kind == "system"
