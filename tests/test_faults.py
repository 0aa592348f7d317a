"""Fault injection against real processes: each fault is survived, the deployment ends in a defined
state, and no report the agent accepted is lost.

The scenarios live in ``fault_scenarios.py`` so that ``bench/reliability.py`` can repeat them and
tabulate the results in docs/reliability.md; here each runs once (the SIGKILL ones at every point
in tests/test_agent_crash_safety.py). Each builds its own persistent Mosquitto, so nothing is left
retained on the shared broker.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from fault_scenarios import (
    SCENARIOS,
    FaultUnavailable,
    Lab,
    Outcome,
    fill,
    small_filesystem,
)

from edgefleet.agent.outbox import Outbox


@pytest.fixture
def lab(tmp_path: Path, signing_key: tuple[Path, Path]) -> Lab:
    return Lab(workdir=tmp_path, key=signing_key[0], trust=signing_key[1])


def _check(outcome: Outcome) -> None:
    assert outcome.survived, outcome
    assert outcome.defined, outcome
    assert outcome.accepted > 0, "the scenario should have produced telemetry to account for"
    assert outcome.lost == 0, outcome


@pytest.mark.parametrize("name", ["broker-restart", "disk-full", "corrupt-chunk", "dup-order", "collector-restart", "collector-kill"])
def test_fault_is_survived_without_loss(name: str, lab: Lab) -> None:
    try:
        outcome = SCENARIOS[name](lab, 0)
    except FaultUnavailable as exc:
        pytest.skip(str(exc))
    _check(outcome)


def test_a_30_second_partition_is_survived_without_loss(lab: Lab) -> None:
    outcome = SCENARIOS["partition"](lab, 0)
    _check(outcome)
    assert "0 reports waited" not in outcome.detail, "reports made during the partition must wait in the outbox"


def test_a_full_disk_makes_the_outbox_refuse_and_count_not_crash(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(small_filesystem(disk, "256k"))
        except FaultUnavailable as exc:
            pytest.skip(str(exc))
        box = Outbox(disk / "outbox.sqlite")
        stack.callback(box.close)
        box.put("t", b"before")
        filler = disk / "filler"
        fill(filler)
        for i in range(50):  # enough to outgrow whatever free pages SQLite still had
            box.put("t", bytes(4096) + str(i).encode())
        assert box.dropped > 0, "reports that could not be written are counted"
        assert box.oldest(1)[0].payload == b"before", "what was queued before is still there"
        filler.unlink()
        box.put("t", b"after")
        assert box.oldest(100)[-1].payload == b"after", "the outbox works again once there is space"
