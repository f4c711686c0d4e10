r"""Text reports of studies: markdown tables and a JSON bundle of several studies.

* [`error_table`][sde_diffusion.studies.report.error_table] -- one row per solver configuration, one column per
  requested NFE budget (the practical range;
  the actual NFE spent is shown where it differs from the budget, e.g. Heun's ``2N - 1``);
* [`order_table`][sde_diffusion.studies.report.order_table] -- declared order, the *effective* order over the requested
  NFE range (a plain fit: in the
  pre-asymptotic range it describes the practical range, not the method), the asymptotic fit with its range when
  one was claimed, the reference-free Richardson estimate, and the one-line verdict;
* [`local_order_table`][sde_diffusion.studies.report.local_order_table] -- the local orders between successive NFE
  values (the evidence for the verdict);
* [`study_markdown`][sde_diffusion.studies.report.study_markdown] -- all three, with a header naming the problem, the
  reference and its estimated accuracy;
* [`bundle`][sde_diffusion.studies.report.bundle] / [`load_bundle`][sde_diffusion.studies.report.load_bundle] --
  several studies in one versioned JSON document (what ``sde-diffusion study``
  writes to ``study.json``).
"""

from __future__ import annotations

import json
from typing import Any

from .results import SCHEMA_VERSION, StudyResult, document_fields

__all__ = [
    "error_table",
    "order_table",
    "local_order_table",
    "study_markdown",
    "bundle",
    "load_bundle",
    "format_error",
]

_BUNDLE_KIND = "sde_diffusion.study_bundle"


def format_error(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def error_table(result: StudyResult, metric: str = "error") -> str:
    """Markdown table of ``metric`` (``"error"``, ``"dist_error"``, ``"wall_time"``) by solver and requested NFE
    budget (refined budgets are in [`local_order_table`][sde_diffusion.studies.report.local_order_table] and the
    JSON)."""
    budgets = result.budgets
    lines = [_row(["solver"] + [f"NFE {b}" for b in budgets]), _row(["---"] * (len(budgets) + 1))]
    for label in result.labels:
        by_budget = {r.nfe_budget: r for r in result.runs_of(label) if not r.refined}
        cells = [f"`{label}`"]
        for b in budgets:
            r = by_budget.get(b)
            if r is None:
                cells.append("-")
                continue
            v = getattr(r, metric)
            text = (f"{v * 1e3:.2f} ms" if metric == "wall_time" else format_error(v)) if v is not None else "-"
            cells.append(text if r.nfe == b else f"{text} ({r.nfe})")
        lines.append(_row(cells))
    return "\n".join(lines)


def _practical_span(result: StudyResult) -> str:
    b = result.budgets
    return f"NFE {b[0]}-{b[-1]}" if b else "NFE -"


def order_table(result: StudyResult, metric: str = "error") -> str:
    """Markdown table: declared order, effective order over the requested range, asymptotic fit (range), the
    Richardson estimate (for the pathwise error) and the verdict."""
    richardson = metric == "error" and any(result.richardson(label) for label in result.labels)
    head = ["solver", "declared", f"effective order over {_practical_span(result)}", "asymptotic order (range)"]
    head += ["Richardson (no reference)"] * richardson + ["verdict"]
    lines = [_row(head), _row(["---"] * len(head))]
    for label in result.labels:
        f = result.fit(label, metric)
        if f is None and metric == "error":  # no reference: the verdict of the Richardson differences
            f = result.fit(label, "richardson")
        if f is None:
            lines.append(_row([f"`{label}`"] + ["-"] * (len(head) - 1)))
            continue
        cells = [
            f"`{label}`",
            "-" if f.declared is None else f"{f.declared:g}",
            "-" if f.effective is None else f"{f.effective.order:.2f}",
            "-" if f.asymptotic is None else f.asymptotic.describe(),
        ]
        if richardson:
            est = result.richardson(label)
            cells.append(est[-1].describe() if est else "-")
        cells.append(f.verdict)
        lines.append(_row(cells))
    return "\n".join(lines)


def local_order_table(result: StudyResult, metric: str = "error", last: int = 8) -> str:
    """Markdown table of the local orders ``-dlog(error)/dlog(NFE)`` between successive budgets (the last ``last``
    segments, requested and refined budgets alike); ``-`` where a point is missing or excluded as floor."""
    budgets = result.all_budgets
    pairs = list(zip(budgets[:-1], budgets[1:]))[-last:]
    lines = [_row(["solver"] + [f"{a}-{b}" for a, b in pairs]), _row(["---"] * (len(pairs) + 1))]
    for label in result.labels:
        f = result.fit(label, metric)
        nfe_of = {r.nfe_budget: r.nfe for r in result.runs_of(label)}
        local: dict[tuple[int | None, int | None], float] = {}
        if f is not None:
            local = {(a, b): q for a, b, q in zip(f.nfe[:-1], f.nfe[1:], f.local)}
        cells = [f"`{label}`"]
        for a, b in pairs:
            q = local.get((nfe_of.get(a), nfe_of.get(b)))
            cells.append("-" if q is None else f"{q:.2f}")
        lines.append(_row(cells))
    return "\n".join(lines)


def _refinement_line(result: StudyResult) -> str:
    refined = [r for r in result.runs if r.refined]
    if not refined:
        return ""
    why = {
        "reached": "reached the asymptotic range",
        "floor": "hit a floor",
        "max_nfe": "stopped at the NFE limit",
        "time": "stopped at the time budget",
    }
    counts: dict[str, int] = {}
    for c in result.chains.values():
        counts[c.get("refinement_stop") or "-"] = counts.get(c.get("refinement_stop") or "-", 0) + 1
    parts = [f"{k} {why.get(s, s)}" for s, k in counts.items()]
    return (
        f"Refinement: budgets doubled past NFE {result.budgets[-1]} up to NFE "
        f"{max(r.nfe_budget for r in refined)}; of {len(result.chains)} solvers, {', '.join(parts)}."
    )


def _reference_line(result: StudyResult) -> str:
    parts = []
    for key, word in (("ode", "ODE"), ("sde", "SDE")):
        info = (result.reference or {}).get(key)
        if not info:
            continue
        est = info.get("error_estimate")
        if info["kind"] == "exact":
            parts.append(f"{word} reference: closed form")
        else:
            setting = f"rtol={info['rtol']:g}" if key == "ode" else f"{info['segments']}x{info['substeps']} SRK steps"
            parts.append(f"{word} reference: {info['kind']} ({setting}), estimated error {format_error(est)}")
    return "; ".join(parts) if parts else "no reference (distributional errors only)"


def study_markdown(result: StudyResult, metric: str = "error") -> str:
    """Header, error table (requested budgets), order table with verdicts, and local orders of one study."""
    what = {
        "error": "pathwise RMS error",
        "dist_error": f"distributional error ({result.dist_metric})",
        "error_median": "median per-sample error",
        "error_max": "largest coordinate error",
        "wall_time": "wall time",
    }.get(metric, metric)
    head = (
        f"**{result.problem}** on `{result.schedule}`, grid `{result.grid}`, n={result.n}, seed={result.seed}, "
        f"{result.dtype} on {result.device}. {_reference_line(result)}."
    )
    if result.dist_floor is not None:
        head += f" Sampling floor of {result.dist_metric}: {result.dist_floor:.2e}."
    parts = [
        head,
        "",
        f"{what.capitalize()} (actual NFE in brackets where it differs from the budget):",
        "",
        error_table(result, metric),
    ]
    if metric in ("error", "dist_error") and result.fits:
        parts += ["", f"Orders of the {what}:", "", order_table(result, metric)]
        parts += ["", f"Local orders of the {what} between successive NFE budgets:", ""]
        parts += [local_order_table(result, metric)]
        line = _refinement_line(result) if metric == "error" else ""
        if line:
            parts += ["", line]
    return "\n".join(parts)


def bundle(studies: dict[str, StudyResult], **meta: Any) -> dict[str, Any]:
    """Several named studies as one JSON-ready document with ``schema_version``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": _BUNDLE_KIND,
        **meta,
        "studies": {name: s.to_dict() for name, s in studies.items()},
    }


def load_bundle(text_or_dict) -> dict[str, StudyResult]:
    """The studies of a document written by [`bundle`][sde_diffusion.studies.report.bundle] (a JSON string or the
    parsed dict)."""
    d = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    studies = document_fields(d, _BUNDLE_KIND, SCHEMA_VERSION, "study bundle")["studies"]
    return {name: StudyResult.from_dict(s) for name, s in studies.items()}
