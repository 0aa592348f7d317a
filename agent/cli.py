"""``edgefleet agent``: run the device daemon. Environment and flags are read here and nowhere else."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path
from types import FrameType

import click

from edgefleet.agent.benchmark import BenchmarkSettings
from edgefleet.agent.daemon import Agent
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.transport import DEFAULT_BROKER, BrokerURL
from edgefleet.hardware_profiles import ProfileError, load_profile


@click.command()
@click.option("--broker", envvar="EDGEFLEET_BROKER", default=DEFAULT_BROKER, show_default=True,
              help="MQTT broker URL: mqtt://HOST:PORT or mqtts://USER:PASS@HOST:8883.")
@click.option("--device-id", envvar="EDGEFLEET_DEVICE_ID", default=socket.gethostname, show_default="hostname",
              help="This device's id in the fleet: letters, digits, '.', '_' or '-'.")
@click.option("--profile", "profile_name", envvar="EDGEFLEET_PROFILE", required=True,
              help="Hardware profile name (see `edgefleet profiles`) or a profile YAML file.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEFLEET_DATA_DIR",
              default=Path("/var/lib/edgefleet"), show_default=True, help="Where installed models and state live.")
@click.option("--trust", "trusted", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Public key (.pub) or directory of keys whose packages this device accepts. "
                   "Default: DATA_DIR/trusted-keys/.")
@click.option("--group", "groups", multiple=True, help="Fleet group this device belongs to (repeatable).")
@click.option("--simulate", is_flag=True,
              help="Pretend to be the profile's hardware on this machine: latencies are this host's, power is the "
                   "profile's estimate, and state and telemetry say so.")
@click.option("--warmup", default=10, show_default=True, help="Untimed inferences before a benchmark.")
@click.option("--runs", default=200, show_default=True, help="Timed inferences per benchmark (at most).")
@click.option("--max-seconds", default=10.0, show_default=True, help="Stop timing after this long (>= 10 runs).")
@click.option("--threads", default=0, show_default=True, help="Inference threads; 0 lets the runtime choose.")
def agent(broker: str, device_id: str, profile_name: str, data_dir: Path, trusted: tuple[Path, ...],
          groups: tuple[str, ...], simulate: bool, warmup: int, runs: int, max_seconds: float, threads: int) -> None:
    """Run the device agent: install models pushed to this device, benchmark them, report telemetry.

    \b
    On a Raspberry Pi 4 against your own broker:
      edgefleet agent --broker mqtt://fleet.example:1883 --profile raspberry-pi-4 \\
          --trust /etc/edgefleet/signing.pub --data-dir /var/lib/edgefleet
    \b
    A simulated device on this machine (what `edgefleet demo` starts):
      edgefleet agent --simulate --profile raspberry-pi-5 --device-id sim-pi5 \\
          --data-dir /tmp/sim-pi5 --trust ~/.edgefleet/keys/signing.pub

    The agent retries an unreachable broker with backoff, refuses packages not signed by a trusted
    key, and keeps serving its current model when a new one fails to verify, load or pass its
    test vectors. Stop it with Ctrl-C or SIGTERM.
    """
    try:
        url = BrokerURL.parse(broker)
        profile = load_profile(profile_name)
        trust = TrustStore.from_paths(list(trusted) or [data_dir / "trusted-keys"])
        settings = BenchmarkSettings(warmup=warmup, runs=runs, max_seconds=max_seconds, threads=threads)
        daemon = Agent(broker=url, device_id=device_id, profile=profile, data_dir=data_dir, trust=trust,
                       groups=groups, simulated=simulate, benchmark=settings)
    except (ProfileError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    # A daemon logs its progress by default; basicConfig does nothing if `edgefleet -v` configured logging.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgefleet").setLevel(min(logging.getLogger().level, logging.INFO))

    def _stop(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    daemon.run()
