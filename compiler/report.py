"""The candidate table: one row per candidate for a profile, as a dict (JSON, manifest) or as text.

The same rows go into the package manifest's ``report``, the ``--json`` output and the table the
CLI prints, so what a person reads and what a device carries never disagree.
"""

from __future__ import annotations

import textwrap
from typing import Any

from edgefleet.compiler.planner import Plan, Verdict
from edgefleet.compiler.units import human_bytes, percent


def candidate_row(v: Verdict, *, chosen: bool, reference_size: int) -> dict[str, Any]:
    c, f = v.candidate, v.candidate.fidelity
    return {
        "scheme": c.scheme,
        "number_format": c.number_format.value,
        "size_bytes": c.size_bytes,
        "smaller_by": round(reference_size / c.size_bytes, 2) if c.size_bytes else None,
        "ram_bytes": c.ram_bytes,
        "params": c.params,
        "nonzero_params": c.nonzero_params,
        "top1_agreement": f.top1_agreement,
        "sqnr_db": f.sqnr_db,
        "cosine": f.cosine,
        "max_abs_error": f.max_abs_error,
        "accuracy": f.accuracy,
        "fast": v.fast,
        "feasible": v.feasible,
        "chosen": chosen,
        "problems": list(v.problems),
        "notes": list(c.notes),
        "config": c.config,
    }


def plan_to_dict(plan: Plan, *, reference_size: int) -> dict[str, Any]:
    return {
        "profile": plan.profile,
        "runtime": plan.runtime,
        "chosen": plan.chosen.scheme if plan.chosen else None,
        "reason": plan.reason,
        "budget": plan.budget.to_dict(),
        "candidates": [candidate_row(v, chosen=v.candidate is plan.chosen, reference_size=reference_size) for v in plan.verdicts],
    }


def render(plan: Plan, *, reference_size: int) -> str:
    """A short text table of the candidates, which one was chosen, and why."""
    headers = ["candidate", "size", "smaller", "top-1 agr.", "SQNR dB", "cosine", "RAM ~", "verdict"]
    rows: list[list[str]] = []
    for v in plan.verdicts:
        c, f = v.candidate, v.candidate.fidelity
        if v.candidate is plan.chosen:
            verdict = "chosen"
        elif v.feasible:
            verdict = "fits"
        else:
            verdict = "out: " + "; ".join(v.problems)
        rows.append(
            [
                c.scheme,
                human_bytes(c.size_bytes),
                f"{reference_size / c.size_bytes:.2f}x" if c.size_bytes else "-",
                percent(f.top1_agreement) if f.top1_agreement is not None else "-",
                "exact" if f.sqnr_db is None else f"{f.sqnr_db:.1f}",
                f"{f.cosine:.5f}",
                human_bytes(c.ram_bytes),
                verdict,
            ]
        )
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    title = f"{plan.profile} ({plan.runtime}): " + (f"chose {plan.chosen.scheme}" if plan.chosen else "no candidate fits")
    why = textwrap.fill(plan.reason, width=100, initial_indent="  why: ", subsequent_indent="       ")
    return "\n".join([title, *lines, why])
