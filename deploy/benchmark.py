"""Benchmark a package on a device without installing it: the fleet as a measuring instrument.

The package's chunks are published retained, as for a push; then a ``BenchmarkRequest`` (not
retained) goes to the device, which fetches, verifies and unpacks the package beside its serving
model, checks the test vectors, benchmarks it, removes it again, and answers with a
``BenchmarkReport`` carrying the request's id. The compiler's fleet-as-evaluator uses this to
measure candidates on real hardware of each profile.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from edgefleet.agent import topics
from edgefleet.agent.errors import EdgefleetError, MessageError
from edgefleet.agent.messages import (
    TELEMETRY,
    BenchmarkReport,
    BenchmarkRequest,
    DeploymentEvent,
    Phase,
    parse,
)
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.link import BrokerLink
from edgefleet.deploy.push import (
    DEFAULT_CHUNK_SIZE,
    chunk_messages,
    describe_package,
    new_deployment_id,
)


class BenchmarkFailed(EdgefleetError):
    """The device refused or could not run the benchmark; the message is the device's reason."""


def request_benchmark(
    package: Path,
    *,
    broker: BrokerURL,
    device: str,
    warmup: int | None = None,
    runs: int | None = None,
    threads: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: float = 300,
) -> BenchmarkReport:
    """Have ``device`` benchmark ``package``; returns its report. Raises BenchmarkFailed or TimeoutError."""
    topics.check_id(device)
    manifest, ref = describe_package(package, chunk_size)
    request = BenchmarkRequest(request_id=new_deployment_id(), package=ref, profile=manifest.target.profile,
                               warmup=warmup, runs=runs, threads=threads)
    done = threading.Event()
    answer: list[BenchmarkReport] = []
    failure: list[str] = []

    def on_message(message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic.endswith("/telemetry"):
                report = parse(TELEMETRY, bytes(message.payload), topic=message.topic)
                if report.request_id == request.request_id:
                    answer.append(report)
                    done.set()
            else:
                event = parse(DeploymentEvent, bytes(message.payload), topic=message.topic)
                if event.deployment_id == request.request_id and event.phase is Phase.FAILED:
                    failure.append(event.error)
                    done.set()
        except MessageError:
            return  # another device's or another version's message: not ours to judge

    subscriptions = [topics.telemetry(device), topics.events(device)]
    with BrokerLink(broker, timeout=30, subscribe=subscriptions, on_message=on_message) as link:
        link.publish(chunk_messages(Path(package), ref), total=ref.chunk_count())
        link.publish([(topics.benchmark_requests(device), request.to_bytes())], total=1,
                     what="the benchmark request", retain=False)
        if not done.wait(timeout):
            raise TimeoutError(f"{device} did not answer the benchmark request within {timeout:g} s; "
                               "is it online (`edgefleet devices`) and running an agent of this version?")
    if failure:
        raise BenchmarkFailed(f"{device}: {failure[0]}")
    return answer[0]
