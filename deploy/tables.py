"""Plain-text tables, and the telemetry table that ``edgefleet telemetry`` and the demo print.

``render_table`` aligns columns with spaces; no dependency, no colour, so the output reads the
same in a terminal, a log file and a README. ``telemetry_records`` turns store rows into plain
dicts (the ``--json`` output), ``render_telemetry`` prints those dicts as the table, and
``telemetry_table`` does both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.deploy.store import BenchmarkRow, DeviceRow

EMPTY = "-"


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    align: Literal["left", "right"] = "left"


def render_table(columns: Sequence[Column | str], rows: Iterable[Sequence[object]]) -> str:
    """Header, a rule, then one line per row; ``None`` cells print as ``-``. No trailing spaces."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[EMPTY if v is None else str(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(cols):
            raise ValueError(f"row has {len(row)} cells for {len(cols)} columns: {row}")
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if c.align == "right" else v.ljust(w) for v, w, c in zip(values, widths, cols, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line([c.header for c in cols]), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


# --- the telemetry table -----------------------------------------------------------------


def telemetry_records(benchmarks: Sequence[BenchmarkRow], devices: Sequence[DeviceRow] = ()) -> list[dict[str, Any]]:
    """One dict per (device, package) benchmarked, plus one per known device never benchmarked.

    Sorted by device; a device's benchmarks newest first. Figures are numbers (``None`` when
    there are none), ready for JSON.
    """
    status = {d.device_id: d.status for d in devices}
    records = [
        {
            "device": b.device_id,
            "profile": b.profile,
            "simulated": b.simulated,
            "status": status.get(b.device_id),
            "package_id": b.package_id,
            "model": f"{b.model_name}@{b.model_version}",
            "runtime": f"{b.runtime} {b.runtime_version}".strip(),
            "p50_ms": b.p50_ms,
            "p90_ms": b.p90_ms,
            "p99_ms": b.p99_ms,
            "throughput_ips": b.throughput_ips,
            "peak_rss_mb": b.peak_rss_mb,
            "power_w": b.power_w,
            "power_source": b.power_source,
            "energy_mj": b.energy_mj,
            "ts": b.ts,
        }
        for b in benchmarks
    ]
    benchmarked = {b.device_id for b in benchmarks}
    for d in devices:
        if d.device_id in benchmarked:
            continue
        records.append(
            {
                "device": d.device_id,
                "profile": d.profile,
                "simulated": d.simulated,
                "status": d.status,
                "package_id": d.package_id,
                "model": f"{d.model_name}@{d.model_version}" if d.model_name else None,
                "runtime": d.runtime,
                **dict.fromkeys(
                    ("p50_ms", "p90_ms", "p99_ms", "throughput_ips", "peak_rss_mb", "power_w", "power_source", "energy_mj")
                ),
                "ts": d.last_seen,
            }
        )
    # Stable sort: the store already orders one device's benchmarks newest first.
    records.sort(key=lambda r: str(r["device"]))
    return records


TELEMETRY_COLUMNS = (
    Column("DEVICE"),
    Column("PROFILE"),
    Column("MODEL"),
    Column("P50 MS", "right"),
    Column("P90 MS", "right"),
    Column("P99 MS", "right"),
    Column("INF/S", "right"),
    Column("PEAK RSS MB", "right"),
    Column("POWER W", "right"),
    Column("POWER SOURCE"),
    Column("MJ/INF", "right"),
)


def render_telemetry(records: Sequence[dict[str, Any]]) -> str:
    """The telemetry table for records from ``telemetry_records``."""
    rows = [
        (
            r["device"],
            (r["profile"] or EMPTY) + (" (sim)" if r["simulated"] else ""),
            r["model"],
            format_number(r["p50_ms"]),
            format_number(r["p90_ms"]),
            format_number(r["p99_ms"]),
            format_number(r["throughput_ips"]),
            format_number(r["peak_rss_mb"]),
            format_number(r["power_w"]),
            r["power_source"],
            format_number(r["energy_mj"]),
        )
        for r in records
    ]
    return render_table(TELEMETRY_COLUMNS, rows)


def telemetry_table(benchmarks: Sequence[BenchmarkRow], devices: Sequence[DeviceRow] = ()) -> str:
    """Store rows straight to the table: ``telemetry_table(store.latest_benchmarks(), store.devices())``."""
    return render_telemetry(telemetry_records(benchmarks, devices))


def format_number(x: float | None) -> str | None:
    """Three significant figures or so, without scientific notation: 812, 45.2, 1.23, 0.042."""
    if x is None:
        return None
    magnitude = abs(x)
    if magnitude >= 100:
        return f"{x:.0f}"
    if magnitude >= 10:
        return f"{x:.1f}"
    if magnitude >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
