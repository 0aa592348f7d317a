"""The candidate table: one row per candidate for a profile, as a dict (JSON, manifest) or as text,
and the Pareto plot of the candidates (SVG, matplotlib).

The same rows go into the package manifest's ``report``, the ``--json`` output and the table the
CLI prints, so what a person reads and what a device carries never disagree. Latency and energy
are the cost model's estimates for the profile (``cost_model``); ``pareto`` marks the candidates
no other runnable candidate beats on both the objective and fidelity loss.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from edgefleet.compiler.planner import Plan, Verdict, fidelity_loss, objective_value
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
        "reference_accuracy": f.reference_accuracy,
        "estimated_latency_ms": round(v.estimate.latency_ms, 6) if v.estimate else None,
        "estimated_energy_mj": round(v.estimate.energy_mj, 6) if v.estimate else None,
        "estimated_on": v.estimate.unit if v.estimate else None,
        "macs": v.estimate.macs if v.estimate else None,
        "measured_latency_ms": v.measured_ms,
        "pareto": v.pareto,
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
        "objective": plan.objective,
        "best_effort": plan.best_effort,
        "budget": plan.budget.to_dict(),
        "candidates": [candidate_row(v, chosen=v.candidate is plan.chosen, reference_size=reference_size) for v in plan.verdicts],
    }


def render(plan: Plan, *, reference_size: int, explain: bool = True) -> str:
    """A short text table of the candidates, which one was chosen, and (``explain``) why."""
    headers = ["candidate", "size", "smaller", "top-1 agr.", "SQNR dB", "cosine", "RAM ~", "est. ms", "est. mJ", "verdict"]
    rows: list[list[str]] = []
    shown = _shown(plan)
    for v in shown:
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
                (f"{v.estimate.latency_ms:.3g}" + ("" if v.estimate.unit == "CPU" else f" ({v.estimate.unit})")) if v.estimate else "-",
                f"{v.estimate.energy_mj:.3g}" if v.estimate else "-",
                verdict + (" *" if v.pareto and plan.objective else ""),
            ]
        )
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    if len(shown) < len(plan.verdicts):
        lines.append(f"  ... {len(plan.verdicts) - len(shown)} more candidates (all in --json and the manifest's report)")
    title = f"{plan.profile} ({plan.runtime}): " + (f"chose {plan.chosen.scheme}" if plan.chosen else "no candidate fits")
    if plan.objective:
        title += f" (objective: {plan.objective}; * = on the Pareto front)"
    if plan.best_effort:
        title += " [best effort: misses a limit]"
    why = textwrap.fill(plan.reason, width=100, initial_indent="  why: ", subsequent_indent="       ")
    return "\n".join([title, *lines, why] if explain else [title, *lines])


def _shown(plan: Plan, limit: int = 16) -> list[Verdict]:
    """The rows a person reads: every row of a short table; of a long one the chosen, the Pareto front,
    then the first others up to ``limit``."""
    if len(plan.verdicts) <= limit:
        return list(plan.verdicts)
    first = [v for v in plan.verdicts if v.candidate is plan.chosen or v.pareto]
    rest = [v for v in plan.verdicts if not (v.candidate is plan.chosen or v.pareto)]
    keep = {id(v) for v in [*first, *rest[: max(0, limit - len(first))]]}
    return [v for v in plan.verdicts if id(v) in keep]


def write_pareto_svg(plan: Plan, path: Path) -> Path:
    """Plot objective against fidelity loss for every candidate of ``plan``; the front joined, the choice ringed."""
    import matplotlib

    matplotlib.use("Agg")  # no display: this runs in CI and over SSH
    import matplotlib.pyplot as plt

    objective = plan.objective or "size"
    points = [(v, objective_value(v, objective), 100 * fidelity_loss(v.candidate.fidelity)) for v in plan.verdicts]
    points = [(v, x, y) for v, x, y in points if x != float("inf")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for feasible, colour, label in ((True, "tab:blue", "meets the budget"), (False, "tab:gray", "out")):
        xs = [x for v, x, _ in points if v.feasible is feasible]
        ys = [y for v, _, y in points if v.feasible is feasible]
        ax.scatter(xs, ys, c=colour, s=22, label=label, zorder=2)
    front = sorted((x, y) for v, x, y in points if v.pareto)
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", c="tab:orange", lw=1, label="Pareto front", zorder=1)
    for v, x, y in points:
        if v.candidate is plan.chosen:
            ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", linewidths=1.5, label=f"chosen: {v.candidate.scheme}", zorder=3)
    unit = {"latency": "estimated latency (ms)", "energy": "estimated energy per inference (mJ)", "size": "model size (bytes)"}[objective]
    classifier = any(v.candidate.fidelity.is_classifier for v in plan.verdicts)
    ax.set_xlabel(unit)
    ax.set_ylabel("accuracy / top-1 agreement drop (%)" if classifier else "noise power / signal power (%)")
    ax.set_xscale("log")
    ax.set_title(f"{plan.profile} ({plan.runtime}): {len(points)} candidates")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path
