"""The ``edgefleet`` command: one entry point for the compiler, the agent and the fleet.

Subcommands are imported only when they run (click's lazy-group pattern), so ``edgefleet agent``
on a Raspberry Pi with only the agent extras installed never imports onnx, the compiler or the
web dashboard.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click

# name -> "module:attribute" of the click command. One line per command keeps --help in order.
COMMANDS = {
    "demo": "edgefleet.deploy.demo_cli:demo",
    "compile": "edgefleet.compiler.cli:compile_command",
    "compress": "edgefleet.compiler.compress_cli:compress_command",
    "convert": "edgefleet.compiler.cli:convert_command",
    "profiles": "edgefleet.hardware_profiles.cli:profiles",
    "keys": "edgefleet.compiler.cli:keys",
    "push": "edgefleet.deploy.push_cli:push",
    "benchmark": "edgefleet.deploy.benchmark_cli:benchmark",
    "telemetry": "edgefleet.deploy.telemetry_cli:telemetry",
    "collect": "edgefleet.deploy.telemetry_cli:collect",
    "dashboard": "edgefleet.deploy.dashboard_cli:dashboard",
    "devices": "edgefleet.deploy.devices_cli:devices",
    "rollout": "edgefleet.deploy.rollout_cli:rollout",
    "broker": "edgefleet.deploy.broker:broker_command",
    "certs": "edgefleet.deploy.certs_cli:certs_command",
    "acl": "edgefleet.deploy.acl_cli:acl_command",
    "agent": "edgefleet.agent.cli:agent",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        with _missing_dependency_is_a_usage_error(cmd_name):
            command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def invoke(self, ctx: click.Context) -> object:
        # Commands import their heavy dependencies when they run, not when they load.
        with _missing_dependency_is_a_usage_error(ctx.invoked_subcommand or "edgefleet"):
            return super().invoke(ctx)


@contextmanager
def _missing_dependency_is_a_usage_error(cmd_name: str) -> Iterator[None]:
    try:
        yield
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.startswith("edgefleet"):
            raise
        # A third-party package of this command is not installed (a device with the agent extras only).
        raise click.ClickException(
            f"`edgefleet {cmd_name}` needs the Python package {exc.name!r}, which is not installed here; "
            "install it with: pip install 'edgefleet[all]'"
        ) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="edgefleet")
def main(verbose: int) -> None:
    """Shrink neural networks for edge hardware and ship them to fleets of devices.

    \b
    A first tour:
      edgefleet demo                          compile, deploy and benchmark on simulated devices
      edgefleet profiles                      the hardware profiles the compiler targets
      edgefleet keys generate keys/signing    a key to sign packages with
      edgefleet compile model.onnx --profile raspberry-pi-4 --key keys/signing.key -o out/
      edgefleet push out/model-raspberry-pi-4.efpkg --device pi-kitchen
      edgefleet telemetry                     latency, memory and energy per device

    Every command that talks to devices takes --broker mqtt://HOST:PORT.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
