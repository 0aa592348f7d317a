"""Retention: keep recent benchmarks raw, and older ones as per-bucket aggregates.

``TelemetryStore.prune_benchmarks(cutoff, bucket_seconds)`` (``edgefleet telemetry prune``):

* Benchmark reports sent at or after ``cutoff`` are kept as they are.
* The newest report of each package on each device is always kept, however old: it is what
  ``edgefleet telemetry`` shows and what a rollout takes as the baseline of the package it replaces.
* Every other older report is deleted. With ``bucket_seconds`` it is first folded into one row of
  ``benchmark_rollups`` per device, package and bucket (``bucket_start`` a multiple of
  ``bucket_seconds``), holding what ``aggregate`` computes below. Without it, it is just deleted.
* Device rows, deployment events, rollouts and existing rollups are not touched.

Percentiles of percentiles use the nearest-rank method on the reports' own figures: the bucket's
``p90_ms`` is the p90 of the reports' p90s, not the p90 of all the inferences (the store never had
those). If reports arrive for a bucket already rolled up (an agent's outbox delivering late), a
later prune merges them into that row, weighting the two by their counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.deploy.store import BenchmarkRow, RollupRow

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30d`` -> seconds; units s, m, h, d, w (a bare number is seconds). ValueError if not a duration."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: write e.g. 90s, 15m, 1h, 30d or 2w")
    return float(m.group(1)) * _SECONDS[(m.group(2) or "s").lower()]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def bucket_start(ts: float, bucket_seconds: float) -> float:
    return math.floor(ts / bucket_seconds) * bucket_seconds


def aggregate(rows: Sequence[BenchmarkRow], bucket_seconds: float) -> RollupRow:
    """One rollup of ``rows``: benchmarks of one package on one device in one bucket."""
    from edgefleet.deploy.store import RollupRow

    first, n = rows[0], len(rows)
    return RollupRow(
        device_id=first.device_id,
        package_id=first.package_id,
        bucket_seconds=bucket_seconds,
        bucket_start=bucket_start(first.ts, bucket_seconds),
        profile=first.profile,
        simulated=first.simulated,
        model_name=first.model_name,
        model_version=first.model_version,
        runtime=first.runtime,
        count=n,
        first_ts=min(r.ts for r in rows),
        last_ts=max(r.ts for r in rows),
        mean_ms=sum(r.mean_ms for r in rows) / n,
        p50_ms=percentile([r.p50_ms for r in rows], 0.50),
        p90_ms=percentile([r.p90_ms for r in rows], 0.90),
        p99_ms=percentile([r.p99_ms for r in rows], 0.99),
        max_p99_ms=max(r.p99_ms for r in rows),
        throughput_ips=sum(r.throughput_ips for r in rows) / n,
        peak_rss_mb=max(r.peak_rss_mb for r in rows),
        power_w=sum(r.power_w for r in rows) / n,
        energy_mj=sum(r.energy_mj for r in rows) / n,
    )


def merge(old: RollupRow, new: RollupRow) -> RollupRow:
    """Two rollups of the same bucket as one: means and percentiles weighted by count."""
    a, b = old.count, new.count

    def w(x: float, y: float) -> float:
        return (x * a + y * b) / (a + b)

    return replace(
        new,
        count=a + b,
        first_ts=min(old.first_ts, new.first_ts),
        last_ts=max(old.last_ts, new.last_ts),
        mean_ms=w(old.mean_ms, new.mean_ms),
        p50_ms=w(old.p50_ms, new.p50_ms),
        p90_ms=w(old.p90_ms, new.p90_ms),
        p99_ms=w(old.p99_ms, new.p99_ms),
        max_p99_ms=max(old.max_p99_ms, new.max_p99_ms),
        throughput_ips=w(old.throughput_ips, new.throughput_ips),
        peak_rss_mb=max(old.peak_rss_mb, new.peak_rss_mb),
        power_w=w(old.power_w, new.power_w),
        energy_mj=w(old.energy_mj, new.energy_mj),
    )
