"""``python -m edgefleet.agent``: the device agent without the rest of the CLI (same options as ``edgefleet agent``)."""

from edgefleet.agent.cli import agent

agent(prog_name="python -m edgefleet.agent")
