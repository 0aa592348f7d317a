"""How the compiler writes sizes and ratios for people (reports, tables, reasons)."""

from __future__ import annotations


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; binary units, as profiles write memory sizes."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percent(x: float) -> str:
    return f"{100 * x:.2f}%"
