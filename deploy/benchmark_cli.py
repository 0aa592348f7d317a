"""``edgefleet benchmark``: measure a package on a device without installing it."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.agent.errors import PackageError
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.benchmark import BenchmarkFailed, request_benchmark
from edgefleet.deploy.link import PushError
from edgefleet.deploy.options import broker_option, json_option


@click.command()
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", required=True, help="The device to measure on; it must run the package's profile.")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed inferences first (default: the agent's).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed inferences (default: the agent's).")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="Inference threads (default: the agent's).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the report.")
@broker_option
@json_option
def benchmark(package: Path, device: str, warmup: int | None, runs: int | None, threads: int | None,
              timeout: float, broker: BrokerURL, as_json: bool) -> None:
    """Benchmark PACKAGE on a device, beside its serving model, without installing it.

    The device downloads and verifies the package, checks its test vectors, measures it
    (latency percentiles, throughput, memory, power and energy per inference) and deletes it
    again; the model it serves does not change.

    \b
    Example:
      edgefleet benchmark out/digits-raspberry-pi-4.efpkg --device pi-kitchen --runs 500
    """
    try:
        report = request_benchmark(package, broker=broker, device=device, warmup=warmup, runs=runs,
                                   threads=threads, timeout=timeout)
    except (BenchmarkFailed, PushError, PackageError, TimeoutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    lat = report.latency_ms
    sim = " (simulated: this host's latency, the profile's power estimate)" if report.simulated else ""
    click.echo(f"{report.package_id} on {device}{sim}")
    click.echo(f"  latency ms   p50 {lat.p50:.3f}  p90 {lat.p90:.3f}  p99 {lat.p99:.3f}  (mean {lat.mean:.3f}, "
               f"{report.runs} runs)")
    click.echo(f"  throughput   {report.throughput_ips:.1f} inferences/s")
    click.echo(f"  memory       peak RSS {report.peak_rss_mb:.1f} MB; load {report.load_ms:.1f} ms")
    click.echo(f"  power        {report.power.watts:.2f} W ({report.power.source}); "
               f"{report.energy_mj:.3f} mJ per inference")
    click.echo(f"  runtime      {report.runtime} {report.runtime_version}, {report.threads} threads")
