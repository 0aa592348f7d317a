"""What keeps a long-running agent small: lazy imports, a bounded number of models on disk, and what reports say.

Timings and memory figures are measured by ``bench/agent_footprint.py``, not asserted here: they
depend on the machine. What is tested is what decides them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.agent.cli import agent
from edgefleet.agent.config import load_config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.messages import BenchmarkReport
from edgefleet.agent.runtimes import _LiteRTModel, _OnnxModel
from edgefleet.agent.transport import BrokerURL
from edgefleet.hardware_profiles import load_profile


def test_the_idle_agent_imports_no_numpy_and_no_runtime() -> None:
    code = ("import sys, edgefleet.agent.cli, edgefleet.agent.daemon; "
            "print(','.join(m for m in ('numpy', 'onnxruntime', 'ai_edge_litert', 'tflite_runtime', 'requests') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"imported before any model is loaded: {loaded}"


def test_keep_versions_from_flag_env_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFLEET_KEEP_VERSIONS", raising=False)
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(tmp_path / "empty.yaml"))
    with agent.make_context("agent", []) as ctx:
        assert ctx.params["keep_versions"] == 2
    path = tmp_path / "agent.yaml"
    path.write_text("keep_versions: 5\n")
    assert load_config(path).keep_versions == 5
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(path))
    with agent.make_context("agent", []) as ctx:
        assert ctx.params["keep_versions"] == 5
    monkeypatch.setenv("EDGEFLEET_KEEP_VERSIONS", "1")
    with agent.make_context("agent", []) as ctx:
        assert ctx.params["keep_versions"] == 1
    with agent.make_context("agent", ["--keep-versions", "0"]) as ctx:
        assert ctx.params["keep_versions"] == 0
    path.write_text("keep_versions: -1\n")
    with pytest.raises(ValueError, match="keep_versions"):
        load_config(path)


def test_keep_versions_sizes_the_model_store(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    def make(keep: int) -> Agent:
        return Agent(broker=BrokerURL.parse("mqtt://127.0.0.1:1"), device_id="keep-test",
                     profile=load_profile("raspberry-pi-4"), data_dir=tmp_path / f"d{keep}",
                     trust=TrustStore.from_paths([signing_key[1]]), keep_versions=keep)

    assert make(0).store.keep == 1, "the serving model only"
    assert make(4).store.keep == 5
    with pytest.raises(ValueError, match="keep_versions"):
        make(-1)


def test_reports_name_the_delegate() -> None:
    assert _OnnxModel.delegate == "cpu" and _LiteRTModel.delegate == "xnnpack"
    assert BenchmarkReport.model_fields["delegate"].default is None, "optional: older agents' reports still parse"
