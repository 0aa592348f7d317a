"""docs/fleet.md documents every fleet command and every one of their options."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from edgefleet.deploy.devices_cli import devices
from edgefleet.deploy.rollout_cli import rollout

DOC = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text()


def _commands() -> list[tuple[str, click.Command]]:
    assert isinstance(rollout, click.Group)
    return [("devices", devices)] + [(f"rollout {name}", cmd) for name, cmd in rollout.commands.items()]


@pytest.mark.parametrize("name, command", _commands(), ids=[n for n, _ in _commands()])
def test_every_fleet_command_and_option_is_documented(name: str, command: click.Command) -> None:
    assert f"edgefleet {name}" in DOC, f"docs/fleet.md does not mention `edgefleet {name}`"
    assert command.help and len(command.help) > 40
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"`edgefleet {name}` {param.opts} has no help"
            assert any(opt in DOC for opt in param.opts), f"docs/fleet.md does not mention {param.opts[0]} of {name}"
