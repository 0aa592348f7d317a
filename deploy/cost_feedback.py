"""What the fleet teaches the compiler's cost model: measured over estimated latency, per profile.

Data flows one way. ``edgefleet compile`` writes the cost model's estimate into each package's
manifest (``report.cost_estimate``: the latency it estimated and the correction it applied);
agents benchmark packages and the collector stores their reports with the package id. This module
joins the two and returns, per profile, the median of measured p50 latency over the *uncorrected*
estimate: the factor the next compile multiplies its estimates by (``compile --fleet-db``).

``correction_factors`` is the pure part: (profile, measured, estimated) triples in, factors out.
``corrections_from_store`` is the I/O edge: it reads benchmark reports from a ``TelemetryStore``
and finds each package's manifest among the packages the store knows (``register_package``, as
rollouts do) or in directories the caller names (a compile's output directory).

Reports from simulated agents count only for host profiles (``kind: host``): a simulated
Raspberry Pi runs on the host's CPU, and its latency says nothing about a real Pi.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.package import read_manifest
from edgefleet.deploy.store import BenchmarkRow, TelemetryStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correction:
    """The factor for one profile and what it rests on."""

    profile: str
    factor: float
    """Median of measured / estimated latency; multiply estimates by it."""
    reports: int
    packages: int

    def to_dict(self) -> dict[str, object]:
        return {"profile": self.profile, "factor": self.factor, "reports": self.reports, "packages": self.packages}


@dataclass(frozen=True)
class Observation:
    profile: str
    package_id: str
    measured_ms: float
    estimated_ms: float
    """The cost model's estimate before any correction."""


def correction_factors(observations: Iterable[Observation], *, min_reports: int = 1) -> dict[str, Correction]:
    """Per profile, the median of measured / estimated over its observations (profiles with fewer than
    ``min_reports`` are left out). The median, because one throttled or busy device should not move it."""
    by_profile: dict[str, list[Observation]] = {}
    for o in observations:
        if o.measured_ms > 0 and o.estimated_ms > 0:
            by_profile.setdefault(o.profile, []).append(o)
    return {
        profile: Correction(
            profile=profile,
            factor=statistics.median(o.measured_ms / o.estimated_ms for o in obs),
            reports=len(obs),
            packages=len({o.package_id for o in obs}),
        )
        for profile, obs in sorted(by_profile.items())
        if len(obs) >= min_reports
    }


def observations(rows: Iterable[BenchmarkRow], estimates: Mapping[str, float],
                 *, trust_simulated: Callable[[str], bool]) -> list[Observation]:
    """Pair each benchmark with its package's uncorrected estimate; rows without one are left out."""
    out: list[Observation] = []
    for row in rows:
        estimate = estimates.get(row.package_id)
        if estimate is None or (row.simulated and not trust_simulated(row.profile)):
            continue
        out.append(Observation(row.profile, row.package_id, row.p50_ms, estimate))
    return out


def package_estimates(paths: Iterable[Path]) -> dict[str, float]:
    """Uncorrected estimated latency (ms) by package id, from packages' manifests; packages without one are skipped."""
    found: dict[str, float] = {}
    for path in paths:
        try:
            manifest = read_manifest(path)
        except (OSError, EdgefleetError, ValueError) as exc:
            log.info("%s: not a readable package (%s); skipped", path, exc)
            continue
        cost = manifest.report.get("cost_estimate") if isinstance(manifest.report, dict) else None
        if not isinstance(cost, dict) or not cost.get("latency_ms"):
            continue
        found[manifest.package_id] = float(cost["latency_ms"]) / float(cost.get("correction") or 1.0)
    return found


def corrections_from_store(store: TelemetryStore, *, package_dirs: Iterable[Path] = (), since: float | None = None,
                           min_reports: int = 1) -> dict[str, Correction]:
    """Correction factors from the store's benchmark reports (see the module docstring)."""
    rows = list(store.iter_benchmarks(since=since))
    paths = [Path(d) / p.name for d in package_dirs for p in Path(d).glob("*.efpkg")]
    for package_id in sorted({r.package_id for r in rows}):
        record = store.package(package_id)
        if record is not None:
            paths.append(Path(record.path))
    estimates = package_estimates(paths)
    return correction_factors(observations(rows, estimates, trust_simulated=_is_host_profile), min_reports=min_reports)


def _is_host_profile(name: str) -> bool:
    from edgefleet.hardware_profiles import ProfileError, load_profile
    from edgefleet.hardware_profiles.schema import DeviceKind

    try:
        return load_profile(name).kind is DeviceKind.HOST
    except ProfileError:
        return False
