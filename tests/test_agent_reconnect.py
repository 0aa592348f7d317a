"""The reconnect backoff: capped, exponential, jittered, reset after a success."""

from __future__ import annotations

import random

import pytest

from edgefleet.agent.reconnect import RECOVERABLE_CONNECT_ERRORS, Backoff


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(min_delay=1.0, max_delay=60.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    steps = [min(60.0, 2.0**i) for i in range(12)]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))
    assert max(delays) <= 60.0 and delays[-1] >= 30.0
    backoff.reset()
    assert backoff.next() <= 1.0


def test_two_devices_do_not_retry_in_lockstep() -> None:
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    assert [a.next() for _ in range(6)] != [b.next() for _ in range(6)]


def test_backoff_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_delay"):
        Backoff(min_delay=0)
    with pytest.raises(ValueError, match="max_delay"):
        Backoff(min_delay=5, max_delay=1)


def test_recoverable_errors_are_connection_failures_not_configuration_errors() -> None:
    assert issubclass(ConnectionRefusedError, RECOVERABLE_CONNECT_ERRORS)
    assert not issubclass(ValueError, RECOVERABLE_CONNECT_ERRORS)


def test_a_running_agent_comes_back_after_a_broker_restart_and_stops_cleanly_while_it_is_down(
        tmp_path, signing_key) -> None:  # type: ignore[no-untyped-def]
    import time

    from conftest import AgentProcess, Mosquitto, Watcher

    broker = Mosquitto(tmp_path)
    broker.start()
    agent = AgentProcess(broker.url, "test-restart", tmp_path / "data", signing_key[1]).start()
    try:
        watcher = Watcher(broker.url, "edgefleet/v1/devices/test-restart/state")
        watcher.wait_for(lambda t, m: m["status"] == "online", timeout=30)
        watcher.close()
        broker.stop()
        deadline = time.monotonic() + 20
        while "lost the connection" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "lost the connection" in agent.log()
        broker.start()
        watcher = Watcher(broker.url, "edgefleet/v1/devices/test-restart/state")
        watcher.wait_for(lambda t, m: m["status"] == "online", timeout=90)
        watcher.close()
        broker.stop()
        time.sleep(1)
        started = time.monotonic()
        agent.stop()  # SIGTERM while the broker is down: no hang in a reconnect wait
        assert not agent.alive() and time.monotonic() - started < 12
        assert agent.proc is not None and agent.proc.returncode == 0, agent.log()
    finally:
        agent.stop()
        broker.stop()
