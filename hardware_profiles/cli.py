"""``edgefleet profiles``: list the bundled hardware profiles, or show one in full.

A thin layer over ``edgefleet.hardware_profiles``: the commands load profiles through the library,
format them, and turn a ``ProfileError`` into a ``click.ClickException`` carrying its message.
"""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from edgefleet.hardware_profiles import (
    HardwareProfile,
    ProfileError,
    list_profiles,
    load_profile,
)

# Units tried in order; a size is shown in the first one that divides it exactly, which gives back
# what the profile author wrote ("4 GiB", "32 GB", "640 KiB").
_UNITS = [(2**30, "GiB"), (10**9, "GB"), (2**20, "MiB"), (10**6, "MB"), (2**10, "KiB"), (10**3, "kB")]


@click.group(name="profiles", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as a JSON list instead of a table.")
@click.pass_context
def profiles(ctx: click.Context, as_json: bool) -> None:
    """List the hardware profiles: the device classes edgefleet compiles for.

    With no subcommand, prints one line per bundled profile: its name, kind, CPU, RAM, where
    the model is kept (flash or disk), runtimes, and the number formats with a fast path on it
    (the others run, but no faster than fp32).

    \b
    Examples:
      edgefleet profiles                        # table of the bundled profiles
      edgefleet profiles --json                 # the same, in full, as JSON
      edgefleet profiles show raspberry-pi-4    # one profile in full, with its sources
      edgefleet profiles show ./my-board.yaml   # check a profile file of your own

    To add a device, start from an existing profile
    (edgefleet profiles show raspberry-pi-4 > my-board.yaml) and see docs/profiles.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        found = list_profiles()
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
    else:
        click.echo(_table(found))


@profiles.command(name="show")
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON (sizes in bytes).")
def show(name_or_path: str, as_json: bool) -> None:
    """Show one profile in full: every figure, and the sources it comes from.

    NAME_OR_PATH is a bundled profile name (see `edgefleet profiles`) or the path of a YAML
    file. A file is validated as it loads, so this also checks a profile you are writing:
    each problem is reported with its field path and line.

    The output is valid YAML that loads back unchanged, so it is a starting point for a new
    profile.

    \b
    Examples:
      edgefleet profiles show raspberry-pi-5
      edgefleet profiles show esp32-s3 --json
      edgefleet profiles show ./boards/my-board.yaml
    """
    try:
        profile = load_profile(name_or_path)
    except ProfileError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(profile.model_dump(mode="json"), indent=2))
    else:
        click.echo(_readable(profile))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for factor, unit in _UNITS:
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def _clock(mhz: float) -> str:
    return f"{mhz / 1000:g} GHz" if mhz >= 1000 else f"{mhz:g} MHz"


def _row(p: HardwareProfile) -> list[str]:
    ram = _size(p.memory.ram)
    if p.memory.psram is not None:
        ram += f" (+{_size(p.memory.psram)} PSRAM)"
    # Microcontrollers keep the model in flash, Linux devices on storage.
    keep = f"{_size(p.memory.flash)} flash" if p.memory.flash is not None else f"{_size(p.memory.storage)} disk"
    return [
        p.name,
        p.kind.value,
        f"{p.cpu.cores}x {p.cpu.core} @ {_clock(p.cpu.clock_mhz)}",
        ram,
        keep,
        ",".join(r.value for r in p.runtimes),
        ",".join(f.value for f in p.fast_formats()) or "-",
    ]


def _table(found: list[HardwareProfile]) -> str:
    header = ["NAME", "KIND", "CPU", "RAM", "MODEL STORE", "RUNTIMES", "FAST"]
    rows = [header] + [_row(p) for p in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _readable(profile: HardwareProfile) -> str:
    """The profile as YAML, with sizes written for people ("4 GiB") rather than in bytes."""
    data: dict[str, Any] = profile.model_dump(mode="json", exclude_none=True)
    for key, value in data["memory"].items():
        if not key.endswith("_gbps"):  # rates, not sizes
            data["memory"][key] = _size(value)
    fast = ", ".join(f.value for f in profile.fast_formats()) or "none"
    head = f"# {profile.display_name}: {profile.kind.value}, fast formats: {fast}\n"
    body = yaml.dump(data, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True, width=100)
    return head + body.rstrip()


class _ReadableDumper(yaml.SafeDumper):
    """Writes long text folded (``>-``) and short lists inline, as the bundled files are written."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = ">" if len(text) > 80 and " " in text and "\n" not in text else None  # prose, not URLs
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_ReadableDumper.add_representer(str, _represent_str)
_ReadableDumper.add_representer(list, _represent_list)
