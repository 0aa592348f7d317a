"""``edgefleet rollout``: thin commands over ``edgefleet.deploy.rollout`` and ``rollout_runner``.

They parse options, open the store, start a collector when devices must be heard, call the
library, and turn its errors into one-line messages. Progress goes to stderr, so ``--json``
output on stdout stays clean.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from edgefleet.agent import topics
from edgefleet.agent.errors import TransportError
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.collector import Collector
from edgefleet.deploy.devices_cli import parse_label_option
from edgefleet.deploy.options import broker_option, db_option, json_option, open_store
from edgefleet.deploy.registry import humanize_age
from edgefleet.deploy.rollout import (
    Gates,
    RolloutState,
    RolloutStatus,
    Strategy,
    state_record,
)
from edgefleet.deploy.rollout_runner import (
    MqttPusher,
    RolloutError,
    RolloutRunner,
    Target,
    load_state,
    plan_rollout,
    request,
)
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.tables import Column, render_table

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


class Duration(click.ParamType):  # type: ignore[type-arg]
    """``30s``, ``2m``, ``1h`` or plain seconds, as a float of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration: write 30s, 2m, 1h or seconds", param, ctx)
        return float(m.group(1)) * _SECONDS[m.group(2)]


class Percent(click.ParamType):  # type: ignore[type-arg]
    """``20%`` or ``20``, as a float of percent."""

    name = "percent"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            number = float(str(value).strip().rstrip("%"))
        except ValueError:
            self.fail(f"{value!r} is not a percentage: write 20% or 20", param, ctx)
        if number < 0:
            self.fail("a percentage cannot be negative", param, ctx)
        return number


def _parse_waves(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(p.strip().rstrip("%")) for p in value.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of percentages such as 10,50,100", ctx=ctx, param=param) from None


def _check_ids(what: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(topics.check_id(v, what) for v in values)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


@click.group("rollout")
def rollout() -> None:
    """Staged rollouts: canary devices first, then waves, gated on failures and model metrics.

    A rollout pushes one package per hardware profile to a group, a profile, labels or a list of
    devices, wave by wave; a wave whose failure rate, p90 latency or energy per inference is
    worse than the gates allow aborts the rollout and rolls its devices back to the package they
    ran before. State lives in the --db store, so an interrupted rollout resumes. See docs/fleet.md.

    \b
      edgefleet rollout start out/*.efpkg --group kitchen --canary 1 --waves 10,50,100 \\
          --wait-between 10m --max-failure-rate 0.1 --max-p90-regression 20%
      edgefleet rollout status
      edgefleet rollout pause 3f2a9c1e
      edgefleet rollout resume 3f2a9c1e
      edgefleet rollout abort 3f2a9c1e
    """


@rollout.command("start")
@click.argument("packages", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group", metavar="NAME", help="Target the group's online devices (with a package for their profile).")
@click.option("--profile", metavar="NAME", help="Target the online devices with this profile (with --group: both).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", callback=parse_label_option,
              help="Target the online devices with this label (repeatable: all of them; with --group/--profile: "
                   "those too).")
@click.option("--device", "devices", multiple=True, metavar="ID", callback=_check_ids("device id"),
              help="Target this device (repeatable), instead of --group/--profile/--label.")
@click.option("--canary", multiple=True, metavar="N|ID",
              help="Canary wave first: a number of devices, or device ids (repeatable).  [default: none]")
@click.option("--waves", default="100", show_default=True, callback=_parse_waves, metavar="P,P,...",
              help="Cumulative percentages of the target after each wave, ending at 100: 10,50,100.")
@click.option("--wait-between", type=Duration(), default="0", show_default=True, metavar="DURATION",
              help="Wait after a wave passes before the next starts: 30s, 10m, 1h.")
@click.option("--device-timeout", type=Duration(), default="5m", show_default=True, metavar="DURATION",
              help="A device that has not finished this long after a push counts as failed.")
@click.option("--max-failure-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, metavar="RATE",
              help="Abort when more than this fraction of a wave's devices fail (0.1 = 10%).")
@click.option("--max-p90-regression", type=Percent(), default=None, metavar="PCT",
              help="Abort when a device's p90 latency is this much worse than with its previous package (20%).")
@click.option("--max-energy-regression", type=Percent(), default=None, metavar="PCT",
              help="Abort when a device's energy per inference is this much worse than with its previous package.")
@click.option("--metrics-wait", type=Duration(), default="15s", show_default=True, metavar="DURATION",
              help="With a metric gate: how long to wait for a device's benchmark after it installed.")
@click.option("--previous", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="PACKAGE", help="A package file devices may run now, so they can be rolled back to it (repeatable).")
@broker_option
@db_option
@json_option
@click.pass_context
def start(ctx: click.Context, packages: tuple[Path, ...], group: str | None, profile: str | None,
          labels: dict[str, str], devices: tuple[str, ...], canary: tuple[str, ...], waves: tuple[float, ...], wait_between: float,
          device_timeout: float, max_failure_rate: float, max_p90_regression: float | None,
          max_energy_regression: float | None, metrics_wait: float, previous: tuple[Path, ...],
          broker: BrokerURL, db: Path, as_json: bool) -> None:
    """Roll PACKAGE(s) out, wave by wave, and follow it in the foreground until it ends.

    Give one package per hardware profile (`edgefleet compile` writes one per profile). Each
    device gets the package for its profile; offline devices and devices of other profiles
    are left out. Exits 0 when the rollout completes (or is paused), 1 when it is aborted.

    \b
      edgefleet rollout start out/digits-*.efpkg --group kitchen --canary 1 --waves 50,100
      edgefleet rollout start out/digits-*.efpkg --label site=greenhouse --waves 10,100
      edgefleet rollout start new.efpkg --device pi-1 --device pi-2 --max-p90-regression 20%
    """
    if devices and (group or profile or labels):
        raise click.UsageError("target either --device IDs or --group/--profile/--label, not both")
    if not (devices or group or profile or labels):
        raise click.UsageError("name the target: --group NAME, --profile NAME, --label KEY=VALUE or --device ID")
    canary_value: int | tuple[str, ...] = 0
    if len(canary) == 1 and canary[0].isdigit():
        canary_value = int(canary[0])
    elif canary:
        canary_value = tuple(canary)
    try:
        strategy = Strategy(canary=canary_value, waves=waves, wait_between=wait_between,
                            device_timeout=device_timeout, metrics_wait=metrics_wait)
        gates = Gates(max_failure_rate=max_failure_rate, max_p90_regression=max_p90_regression,
                      max_energy_regression=max_energy_regression)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with open_store(db) as store, _collecting(broker, store):
        try:
            target = Target(devices=devices, group=group, profile=profile, labels=labels)
            state, skipped = plan_rollout(store, packages, target,
                                          strategy=strategy, gates=gates, previous=previous)
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"rollout {state.rollout_id}: {len(state.devices)} device(s) of {state.plan.target}", err=True)
        for w in state.waves:
            click.echo(f"  wave {w.label}: {', '.join(d.device_id for d in state.wave_devices(w.index))}", err=True)
        for device_id, why in skipped.items():
            click.echo(f"  left out {device_id}: {why}", err=True)
        final = _run(store, broker, state.rollout_id)
    _finish(ctx, final, as_json)


@rollout.command("status")
@click.argument("rollout_id", required=False, metavar="[ID]")
@db_option
@json_option
def status(rollout_id: str | None, db: Path, as_json: bool) -> None:
    """Every rollout, or one rollout's waves and devices with their phases.

    \b
      edgefleet rollout status
      edgefleet rollout status 3f2a9c1e --json
    """
    if not db.exists():
        raise click.ClickException(f"{db}: no fleet database here; start a rollout first")
    with open_store(db) as store:
        try:
            if rollout_id is not None:
                state = load_state(store, rollout_id)
                click.echo(json.dumps(state_record(state), indent=2) if as_json else _render_state(state))
                return
            states = [load_state(store, r.rollout_id) for r in store.rollouts()]
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([state_record(s) for s in states], indent=2))
    elif not states:
        click.echo("no rollouts yet: `edgefleet rollout start --help` says how", err=True)
    else:
        click.echo(_render_list(states))


@rollout.command("pause")
@click.argument("rollout_id", metavar="ID")
@db_option
def pause(rollout_id: str, db: Path) -> None:
    """Stop starting new waves; devices mid-install finish. Continue with `edgefleet rollout resume ID`.

    The process running the rollout notices within a second, saves its state and exits.
    """
    with open_store(db) as store:
        try:
            _, live = request(store, rollout_id, "pause")
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
    if live:
        click.echo(f"asked the process running rollout {rollout_id} to pause it")
    else:
        click.echo(f"rollout {rollout_id} paused; continue with `edgefleet rollout resume {rollout_id}`")


@rollout.command("resume")
@click.argument("rollout_id", metavar="ID")
@broker_option
@db_option
@json_option
@click.pass_context
def resume(ctx: click.Context, rollout_id: str, broker: BrokerURL, db: Path, as_json: bool) -> None:
    """Continue a paused or interrupted rollout in the foreground, where it stopped.

    Devices that were installing when the last process stopped are sent their package again
    (an agent that already installed it only benchmarks it); a wait between waves continues
    until its original end.
    """
    with open_store(db) as store:
        try:
            current = load_state(store, rollout_id)
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
        if current.status.finished:
            raise click.ClickException(f"rollout {rollout_id} is already {current.status.value}; nothing to resume")
        with _collecting(broker, store):
            final = _run(store, broker, rollout_id)
    _finish(ctx, final, as_json)


@rollout.command("abort")
@click.argument("rollout_id", metavar="ID")
@broker_option
@db_option
@json_option
@click.pass_context
def abort(ctx: click.Context, rollout_id: str, broker: BrokerURL, db: Path, as_json: bool) -> None:
    """Abort a rollout and roll its devices back to the packages they ran before.

    If a process is running the rollout, it does the rollback; otherwise this command does, in
    the foreground, and exits 0 once every device it could roll back is rolled back.
    """
    with open_store(db) as store:
        try:
            _, live = request(store, rollout_id, "abort")
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
        if live:
            click.echo(f"asked the process running rollout {rollout_id} to abort it and roll back")
            return
        with _collecting(broker, store):
            final = _run(store, broker, rollout_id)
    _finish(ctx, final, as_json, aborted_is_failure=False)


# --- helpers -----------------------------------------------------------------------------


@contextmanager
def _collecting(broker: BrokerURL, store: TelemetryStore, settle: float = 1.0) -> Iterator[Collector]:
    """A collector filling ``store``, started once the broker has sent the retained device states."""
    collector = Collector(broker, store)
    try:
        collector.start(timeout=10)
    except TransportError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        # MQTT does not mark the end of the retained states: wait until they stop coming.
        last, seen, deadline = time.monotonic(), -1, time.monotonic() + 10
        while time.monotonic() < min(deadline, last + settle):
            if collector.stats.states != seen:
                seen, last = collector.stats.states, time.monotonic()
            time.sleep(0.05)
        yield collector
    finally:
        collector.stop()


def _run(store: TelemetryStore, broker: BrokerURL, rollout_id: str) -> RolloutState:
    # Rollbacks are signed (devices refuse older versions otherwise) with the compiler's key:
    # EDGEFLEET_SIGNING_KEY, else $EDGEFLEET_HOME/keys/signing.key.
    from edgefleet.compiler.signing import default_key_path

    key = os.environ.get("EDGEFLEET_SIGNING_KEY")
    pusher = MqttPusher(broker, rollback_key=Path(key) if key else default_key_path(os.environ))
    runner = RolloutRunner(store, rollout_id, pusher, on_note=lambda line: click.echo(f"  {line}", err=True))
    try:
        with pusher:
            return runner.run()
    except RolloutError as exc:
        raise click.ClickException(str(exc)) from None
    except TransportError as exc:  # the broker went away mid-rollout: the store has everything to continue
        raise click.ClickException(f"{exc}; rollout {rollout_id} is saved: continue with "
                                   f"`edgefleet rollout resume {rollout_id}`") from None
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; rollout {rollout_id} is saved: continue with `edgefleet rollout resume {rollout_id}`"
        ) from None


def _finish(ctx: click.Context, state: RolloutState, as_json: bool, *, aborted_is_failure: bool = True) -> None:
    if as_json:
        click.echo(json.dumps(state_record(state), indent=2))
    else:
        click.echo(_render_state(state))
    if state.status is RolloutStatus.PAUSED:
        click.echo(f"paused; continue with `edgefleet rollout resume {state.rollout_id}`", err=True)
    if state.status is RolloutStatus.ABORTED and aborted_is_failure:
        ctx.exit(1)


def _render_list(states: list[RolloutState]) -> str:
    now = time.time()
    rows = []
    for s in states:
        done = sum(1 for d in s.devices.values() if d.phase.value == "done")
        wave = next((w.label for w in s.waves if w.status.value == "deploying"), None)
        rows.append((s.rollout_id, s.status.value, s.plan.target, ", ".join(p.package_id for p in s.plan.packages),
                     wave, f"{done}/{len(s.devices)}", humanize_age(now - s.created_at)))
    return render_table(["ID", "STATUS", "TARGET", "PACKAGES", "WAVE", "DONE", "STARTED"], rows)


def _render_state(s: RolloutState) -> str:
    lines = [f"rollout {s.rollout_id}: {s.status.value}" + (f" — {s.reason}" if s.reason else "")]
    lines.append(f"  target    {s.plan.target}")
    for p in s.plan.packages:
        lines.append(f"  package   {p.package_id}  ({p.path})")
    if s.next_wave_at is not None and s.status is RolloutStatus.RUNNING and s.current_wave() is None:
        lines.append(f"  next wave in {max(0.0, s.next_wave_at - time.time()):.0f}s")
    lines.append("")
    lines.append(render_table(
        ["WAVE", "STATUS", "DEVICES", "REASON"],
        [(w.label, w.status.value, ", ".join(d.device_id for d in s.wave_devices(w.index)), w.reason or None)
         for w in s.waves],
    ))
    lines.append("")
    lines.append(render_table(
        [Column("DEVICE"), Column("WAVE"), Column("PHASE"), Column("PACKAGE"), Column("PREVIOUS"),
         Column("P90 MS", "right"), Column("BEFORE", "right"), Column("ERROR")],
        [(d.device_id, s.waves[d.wave].label, d.phase.value, d.package_id, d.previous_package_id,
          _ms(d.p90_ms), _ms(d.baseline_p90_ms), d.error or None)
         for d in s.devices.values()],
    ))
    return "\n".join(lines)


def _ms(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}"
