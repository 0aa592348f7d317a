"""Repeat every fault scenario against real processes and write the tally to docs/reliability.md.

    .venv/bin/python bench/reliability.py                 # each fault 3 times, ~10 minutes
    .venv/bin/python bench/reliability.py --runs 10 --only kill-install --only partition
    .venv/bin/python bench/reliability.py --pytest "attacks=-m attack" --pytest "fuzz=tests/test_security_fuzz.py"

The scenarios are the ones tests/test_faults.py asserts once (tests/fault_scenarios.py): each
builds a private persistent Mosquitto, a real agent process and an observer, injects the fault,
and reports whether the agent survived, whether the deployment ended in its defined state, and
how many reports the agent accepted that the fleet side never received. Runs of a scenario vary
what can vary (the crash point, which chunk is corrupted), round-robin.

``--pytest LABEL=ARGS`` adds rows for test suites that are not scenarios (the security attacks):
``pytest ARGS`` is run N times and every test of every run counts as one try, survived if it
passed. Their "data lost" column is "n/a": a refused attack has no telemetry to lose. The suite
runs with ``--strict-markers``, so a marker such as ``attack`` must be registered under
``[tool.pytest.ini_options] markers`` in pyproject.toml before ``-m attack`` selects anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the scenarios reuse the test suite's rig (conftest.py)

from fault_scenarios import SCENARIOS, FaultUnavailable, Lab, Outcome, network_partition

from edgefleet.agent import keys


@dataclass
class Row:
    fault: str
    tried: int = 0
    survived: int = 0
    defined: int = 0
    accepted: int = 0
    lost: int | None = 0  # None: not applicable (pytest rows)
    notes: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)  # e.g. crash points, of the runs that passed

    def add(self, o: Outcome) -> None:
        self.tried += 1
        self.survived += o.survived
        self.defined += o.defined
        self.accepted += o.accepted
        self.lost = (self.lost or 0) + max(0, o.lost)


def run_scenario(name: str, runs: int, workdir: Path, key: tuple[Path, Path], partition_seconds: float) -> Row:
    row: Row | None = None
    for run in range(runs):
        lab = Lab(workdir=workdir / f"{name}-{run}", key=key[0], trust=key[1])
        lab.workdir.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            if name == "partition":
                outcome = network_partition(lab, run, seconds=partition_seconds)
            else:
                outcome = SCENARIOS[name](lab, run)
        except FaultUnavailable as exc:
            print(f"{name}: not available here: {exc}", flush=True)
            return Row(fault=name, notes=[f"not run: {exc}"])
        except (AssertionError, TimeoutError, OSError, RuntimeError, ValueError) as exc:
            # A scenario that could not even finish counts as neither survived nor defined.
            outcome = Outcome(fault=row.fault if row else name, survived=False, defined=False, accepted=0,
                              received=0, pending=0, detail=f"{type(exc).__name__}: {exc}")
        row = row or Row(fault=outcome.fault)
        row.add(outcome)
        verdict = "ok" if outcome.ok else "FAILED"
        print(f"{name} run {run + 1}/{runs}: {verdict} in {time.monotonic() - t0:.0f} s; survived={outcome.survived} "
              f"defined={outcome.defined} accepted={outcome.accepted} lost={outcome.lost}; {outcome.detail}", flush=True)
        if not outcome.ok:
            row.notes.append(f"run {run + 1}: {outcome.detail}")
        elif outcome.variant:
            row.variants.append(outcome.variant)
    assert row is not None
    return row


def run_pytest(label: str, args: str, runs: int) -> Row:
    """``pytest ARGS`` ``runs`` times; each test of each run is one try."""
    row = Row(fault=label, lost=None)
    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "junit.xml"
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    *shlex.split(args)]
            subprocess.run(argv, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not junit.exists():
                row.notes.append(f"run {run + 1}: pytest {args} did not run")
                continue
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            row.tried += tests - skipped
            row.survived += tests - skipped - failed
            row.defined += tests - skipped - failed
        print(f"{label} run {run + 1}/{runs}: {row.survived}/{row.tried} passed so far", flush=True)
    row.notes.append(f"`pytest {args}`")
    return row


def render(rows: list[Row], runs: int, partition_seconds: float, elapsed: float) -> str:
    load = os.getloadavg()
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    lines = [
        "# Reliability: faults and attacks, tried and tallied",
        "",
        "Produced by `bench/reliability.py`; do not edit by hand, rerun it (see below). Each fault is",
        "injected against real processes: a real `edgefleet agent` subprocess, a private Mosquitto with",
        "persistence on, a real TCP relay for partitions, a real (tmpfs) filesystem that fills up. The",
        "scenarios are in `tests/fault_scenarios.py`; `tests/test_faults.py` and",
        "`tests/test_agent_crash_safety.py` assert each of them once.",
        "",
        "- **survived**: the agent never died except where the scenario killed it, and stopped cleanly (exit 0).",
        "- **defined state**: the deployment ended as the protocol says (done, or failed with the reason,",
        "  rolled back) and the device served a complete model (every file matches its manifest hash).",
        "- **telemetry lost**: reports the agent accepted into its outbox (counted by the outbox's SQLite",
        "  sequence) that a persistent-session observer (or, for the collector row, the collector's store)",
        "  never received. The target is zero everywhere.",
        "",
        "| fault | tried | survived | defined state | telemetry accepted | telemetry lost | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lost = "n/a" if r.lost is None else str(r.lost)
        accepted = "n/a" if r.lost is None else str(r.accepted)
        covered = [f"points covered: {', '.join(f'`{v}`' for v in dict.fromkeys(r.variants))}"] if r.variants else []
        notes = "; ".join([*covered, *dict.fromkeys(r.notes)])
        lines.append(f"| {r.fault} | {r.tried} | {r.survived} | {r.defined} | {accepted} | {lost} | {notes} |")
    lines += [
        "",
        (f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {runs} run(s) per fault, "
         f"partition {partition_seconds:.0f} s, {elapsed / 60:.1f} min in all; {platform.machine()}, "
         f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {mosquitto}."),
        "",
        "## How the faults are made",
        "",
        "- **Broker restart during a transfer**: half the chunks are on the device when Mosquitto is stopped",
        "  (SIGTERM, so it saves its retained messages and sessions) and started again; the pusher publishes",
        "  the other half afterwards. The agent reconnects, resubscribes to the package's chunks and skips",
        "  those it has. The protocol needs a broker with persistence on (retained deployment and chunks);",
        "  without it, push the package again after the restart.",
        "- **Network partition**: a TCP relay between agent and broker is cut (connections reset, new ones",
        "  refused) while a deployment is pushed, and restored after the partition time; reports made",
        "  meanwhile wait in the outbox. Reconnection uses capped exponential backoff (at most 60 s), so",
        "  a 30 s partition takes up to about a minute to heal.",
        "- **Disk full**: the agent's data directory is a 4 MB tmpfs (`mount -t tmpfs -o size=4m`, as root);",
        "  when a quarter of a 1 MB package is on disk another file fills the filesystem. The agent reports",
        "  `disk full: ...`, removes its partial download, keeps serving the old model, and installs the",
        "  package when it is pushed again after space was freed. Without permission to mount, the row",
        "  says \"not run\".",
        "- **SIGKILL during install / rollback**: `EDGEFLEET_AGENT_CRASH_AT=<point>` makes the agent kill",
        "  itself at a named point (`agent/faults.py`); runs go round the points (download chunks,",
        "  verification, unpacking, activation, benchmark; for rollbacks `rollback:decided`, `activating`,",
        "  `rollback:activated`, `rollback:reported`, `rollback:discarding`, `rollback:discarded`).",
        "- **Corrupted chunk**: one chunk is published with a flipped byte; the agent refuses it (per-chunk",
        "  sha256), installs nothing, and completes when the right chunk is published again.",
        "- **Duplicated and out-of-order messages**: chunks shuffled and each sent twice, some before the",
        "  deployment, the deployment sent three times, then an older deployment: installed exactly once,",
        "  the older one ignored.",
        "- **Collector restart during a rollout**: a collector with a fixed client id (a persistent MQTT",
        "  session) is stopped after the canary's first report and started again after the rollout",
        "  finished; the broker queued its messages meanwhile.",
        "- **Collector killed holding unstored reports**: `edgefleet collect --client-id` dies by SIGKILL at",
        "  `collector:storing` (a batch received, not yet stored) while a device streams 3,000 reports,",
        "  and is started again; the collector acknowledges a message only after storing it, so the broker",
        "  redelivers the batch.",
        "",
        "## How to rerun",
        "",
        "As root (for the tmpfs), with Mosquitto installed:",
        "",
        "    nice .venv/bin/python bench/reliability.py --runs 3",
        "    nice .venv/bin/python bench/reliability.py --runs 10 --only kill-install --only kill-rollback",
        "",
        f"Scenario names for `--only`: {', '.join(f'`{n}`' for n in SCENARIOS)}. To add test suites that",
        "are not scenarios (the security attacks, fuzzers), give `--pytest LABEL=ARGS` once per row; the",
        "attack rows above come from",
        "",
        "    nice .venv/bin/python bench/reliability.py --runs 3 \\",
        "        --pytest \"hostile packages, forged rollbacks, revoked keys=tests/test_security_package.py\" \\",
        "        --pytest \"TLS and ACL: another device's topics, foreign CAs=tests/test_security_tls_acl.py\" \\",
        "        --pytest \"fuzzed messages, manifests, packages, profiles, config=tests/test_fuzz.py\"",
        "",
        "Each test of each run counts as one try, survived and in a defined state if it passed.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each fault (default 3)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--pytest", action="append", default=[], metavar="LABEL=ARGS",
                        help="also run `pytest ARGS` --runs times as a row named LABEL")
    parser.add_argument("--partition-seconds", type=float, default=30.0, help="length of the network partition")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md", help="the report to write")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    suites = []
    for spec in args.pytest:
        label, sep, pytest_args = spec.partition("=")
        if not sep or not label or not pytest_args:
            parser.error(f"--pytest wants LABEL=ARGS, e.g. \"attacks=-m attack\", not {spec!r}")
        suites.append((label, pytest_args))

    t0 = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-reliability-") as tmp:
        workdir = Path(tmp)
        key = keys.generate(workdir / "signing.key")
        for name in args.only or list(SCENARIOS):
            rows.append(run_scenario(name, args.runs, workdir, key, args.partition_seconds))
    rows += [run_pytest(label, pytest_args, args.runs) for label, pytest_args in suites]
    args.out.write_text(render(rows, args.runs, args.partition_seconds, time.monotonic() - t0))
    print(f"wrote {args.out}")
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0 if all(r.survived == r.defined == r.tried and not r.lost for r in rows if r.tried) else 1


if __name__ == "__main__":
    sys.exit(main())
