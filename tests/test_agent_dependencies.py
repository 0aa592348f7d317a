"""A device installs `edgefleet[agent,onnx]` or `[agent,tflite]`: the agent must run without host packages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Packages only the compiler or the fleet side install; the agent must never need them.
HOST_ONLY = ["onnx", "sklearn", "amqtt", "ai_edge_quantizer", "tflite_micro", "zstandard", "tqdm"]


def test_the_agent_starts_with_host_packages_missing() -> None:
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HOST_ONLY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        import edgefleet.agent.daemon, edgefleet.agent.cli
        from edgefleet.deploy.cli import main
        main(["agent", "--help"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Run the device agent" in result.stdout


def test_a_host_command_without_its_packages_says_what_to_install() -> None:
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "onnx":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        from edgefleet.deploy.cli import main
        main(["compile", "model.onnx", "--profile", "raspberry-pi-4"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "pip install 'edgefleet[all]'" in result.stderr
