"""What the README promises stays true: the CI command is the README's, every command is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgefleet.deploy.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(S=\$\(command -v sudo.*?)\n```", (ROOT / "README.md").read_text())


def test_the_readme_has_exactly_two_setup_commands_and_ci_runs_the_second() -> None:
    demo, tests = _readme_commands()
    assert demo.endswith("edgefleet demo")
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_an_explanation(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.help and len(command.help) > 40, f"`edgefleet {name}` needs a --help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"`edgefleet {name}` option {param.opts} has no help"


def test_the_agent_imports_no_host_code() -> None:
    """The device agent must install and run without the compiler or the fleet side (pyproject's contract)."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("doc", ["protocol.md", "profiles.md", "compiler.md"])
def test_docs_exist(doc: str) -> None:
    assert (ROOT / "docs" / doc).stat().st_size > 500
