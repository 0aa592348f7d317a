"""``edgefleet agent``: run the device daemon. Environment, flags and the config file are read here and nowhere else.

Precedence: flag > EDGEFLEET_* environment variable > config file (``--config``) > default. The
config file becomes click's ``default_map``, which click consults after the flag and the
environment variable, so the precedence is click's own.
"""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path
from types import FrameType

import click
from click.core import ParameterSource

from edgefleet.agent.benchmark import BenchmarkSettings
from edgefleet.agent.config import DEFAULT_CONFIG, load_config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.detect import detect_profile
from edgefleet.agent.errors import ConfigError
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.labels import parse_labels
from edgefleet.agent.transport import DEFAULT_BROKER, BrokerURL
from edgefleet.hardware_profiles import ProfileError, load_profile

log = logging.getLogger("edgefleet.agent")


def _read_config(ctx: click.Context, param: click.Parameter, path: Path) -> Path:
    """Eager: load the config file into the command's default_map before the other options are read."""
    explicit = ctx.get_parameter_source("config") != ParameterSource.DEFAULT
    try:
        config = load_config(path, required=explicit)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **config.as_defaults()}
    return path


def _parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    try:
        return parse_labels(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGEFLEET_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, is_eager=True, callback=_read_config, expose_value=False,
              help="YAML file whose keys are these options' names with underscores (device_id, trust, ...). "
                   "Flags and EDGEFLEET_* variables override it; a missing default file is ignored.")
@click.option("--broker", envvar="EDGEFLEET_BROKER", default=DEFAULT_BROKER, show_default=True,
              help="MQTT broker URL: mqtt://HOST:PORT or mqtts://USER:PASS@HOST:8883.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="EDGEFLEET_TLS_CA",
              help="CA certificate that signed the broker's (mqtts:// only); default: the system's CAs.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="EDGEFLEET_TLS_CERT",
              help="This device's client certificate (`edgefleet certs device ID`), for brokers that require one.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), envvar="EDGEFLEET_TLS_KEY",
              help="The client certificate's private key.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="EDGEFLEET_PASSWORD_FILE",
              help="File whose first line is the password for the broker URL's user name, so it stays out of "
                   "URLs and unit files.")
@click.option("--device-id", envvar="EDGEFLEET_DEVICE_ID", default=socket.gethostname, show_default="hostname",
              help="This device's id in the fleet: letters, digits, '.', '_' or '-'.")
@click.option("--profile", "profile_name", envvar="EDGEFLEET_PROFILE",
              help="Hardware profile name (see `edgefleet profiles`) or a profile YAML file. "
                   "Default: detected from the device tree, /proc/cpuinfo or the CPU architecture.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEFLEET_DATA_DIR",
              default=Path("/var/lib/edgefleet"), show_default=True, help="Where installed models and state live.")
@click.option("--trust", "trusted", multiple=True, envvar="EDGEFLEET_TRUST",
              type=click.Path(exists=True, path_type=Path),
              help="Public key (.pub) or directory of keys whose packages this device accepts. "
                   "Default: DATA_DIR/trusted-keys/.")
@click.option("--group", "groups", multiple=True, envvar="EDGEFLEET_GROUPS",
              help="Fleet group this device belongs to (repeatable).")
@click.option("--label", "labels", multiple=True, envvar="EDGEFLEET_LABELS", metavar="KEY=VALUE",
              callback=_parse_labels,
              help="A label the device reports in its state, to be selected by (`edgefleet devices --label`, "
                   "`edgefleet rollout start --label`); repeatable. Replaces the config file's labels.")
@click.option("--simulate", is_flag=True, envvar="EDGEFLEET_SIMULATE",
              help="Pretend to be the profile's hardware on this machine: latencies are this host's, power is the "
                   "profile's estimate, and state and telemetry say so.")
@click.option("--warmup", default=10, show_default=True, envvar="EDGEFLEET_WARMUP",
              help="Untimed inferences before a benchmark.")
@click.option("--runs", default=200, show_default=True, envvar="EDGEFLEET_RUNS",
              help="Timed inferences per benchmark (at most).")
@click.option("--max-seconds", default=10.0, show_default=True, envvar="EDGEFLEET_MAX_SECONDS",
              help="Stop timing after this long (>= 10 runs).")
@click.option("--threads", default=0, show_default=True, envvar="EDGEFLEET_THREADS",
              help="Inference threads; 0 lets the runtime choose.")
@click.option("--idle-seconds", default=2.0, show_default=True, envvar="EDGEFLEET_IDLE_SECONDS",
              help="Measure idle power for this long before a benchmark, when a power sensor is present.")
@click.option("--sysfs", type=click.Path(file_okay=False, path_type=Path), default=Path("/sys"), show_default=True,
              envvar="EDGEFLEET_SYSFS", help="Where sysfs is mounted (power sensors, thermal zones, governor).")
@click.option("--proc", type=click.Path(file_okay=False, path_type=Path), default=Path("/proc"), show_default=True,
              envvar="EDGEFLEET_PROC", help="Where procfs is mounted (profile detection).")
@click.option("--vcgencmd", default="vcgencmd", show_default=True, envvar="EDGEFLEET_VCGENCMD",
              help="Raspberry Pi firmware tool, for the Pi 5 PMIC power rails and throttling flags.")
@click.option("--system-interval", default=60.0, show_default=True, envvar="EDGEFLEET_SYSTEM_INTERVAL",
              help="Publish CPU, memory, temperature, disk, uptime and counters every this many seconds; 0: never.")
@click.option("--keep-versions", default=2, show_default=True, envvar="EDGEFLEET_KEEP_VERSIONS",
              type=click.IntRange(min=0),
              help="Previous models kept on disk besides the serving one, for rolling back; older ones are deleted.")
def agent(broker: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
          password_file: Path | None, device_id: str, profile_name: str | None, data_dir: Path, trusted: tuple[Path, ...],
          groups: tuple[str, ...], labels: dict[str, str], simulate: bool, warmup: int, runs: int,
          max_seconds: float, threads: int,
          idle_seconds: float, sysfs: Path, proc: Path, vcgencmd: str, system_interval: float,
          keep_versions: int) -> None:
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

    Every option can also be set in the config file (see --config; keys are the option names with
    underscores) or an EDGEFLEET_* environment variable (EDGEFLEET_DEVICE_ID, EDGEFLEET_RUNS, ...).
    """
    # A daemon logs its progress by default; basicConfig does nothing if `edgefleet -v` configured logging.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgefleet").setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        url = BrokerURL.parse(broker).with_tls(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key,
                                               password_file=password_file)
        if profile_name is None:
            detected = detect_profile(proc=proc)
            log.info("profile %s detected from %s", detected.profile, detected.evidence)
            profile_name = detected.profile
        profile = load_profile(profile_name)
        trust = TrustStore.from_paths(list(trusted) or [data_dir / "trusted-keys"])
        settings = BenchmarkSettings(warmup=warmup, runs=runs, max_seconds=max_seconds, threads=threads,
                                     idle_seconds=idle_seconds)
        daemon = Agent(broker=url, device_id=device_id, profile=profile, data_dir=data_dir, trust=trust,
                       groups=groups, labels=labels, simulated=simulate, benchmark=settings, sysfs=sysfs,
                       vcgencmd=vcgencmd,
                       system_interval=system_interval, keep_versions=keep_versions)
    except (ProfileError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None

    def _stop(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    daemon.run()
