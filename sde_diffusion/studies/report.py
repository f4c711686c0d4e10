r"""Text reports of studies: markdown tables and a JSON bundle of several studies.

* :func:`error_table` -- one row per solver configuration, one column per NFE budget (the actual NFE spent is shown
  where it differs from the budget, e.g. Heun's ``2N - 1``);
* :func:`order_table` -- declared order, asymptotic fit ``order ± standard error (NFE range)``, pre-asymptotic fit,
  points excluded as floor;
* :func:`study_markdown` -- both, with a header naming the problem, the reference and its estimated accuracy;
* :func:`bundle` / :func:`load_bundle` -- several studies in one versioned JSON document (what ``sde-diffusion study``
  writes to ``study.json``).
"""

from __future__ import annotations

import json
from typing import Any

from .fitting import _describe
from .results import SCHEMA_VERSION, StudyResult

__all__ = ["error_table", "order_table", "study_markdown", "bundle", "load_bundle", "format_error"]

_BUNDLE_KIND = "sde_diffusion.study_bundle"


def format_error(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def error_table(result: StudyResult, metric: str = "error") -> str:
    """Markdown table of ``metric`` (``"error"``, ``"dist_error"``, ``"wall_time"``) by solver and NFE budget."""
    budgets = result.budgets
    lines = [_row(["solver"] + [f"NFE {b}" for b in budgets]), _row(["---"] * (len(budgets) + 1))]
    for label in result.labels:
        by_budget = {r.nfe_budget: r for r in result.runs_of(label)}
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


def order_table(result: StudyResult, metric: str = "error") -> str:
    """Markdown table of declared and fitted orders."""
    lines = [
        _row(["solver", "declared", "fitted order (asymptotic)", "pre-asymptotic", "floor excluded"]),
        _row(["---"] * 5),
    ]
    for label in result.labels:
        f = result.fit(label, metric)
        declared = "-" if f is None or f.declared is None else f"{f.declared:g}"
        excluded = "-" if f is None or not f.excluded else ", ".join(map(str, f.excluded))
        lines.append(
            _row(
                [
                    f"`{label}`",
                    declared,
                    "-" if f is None else _describe(f.asymptotic),
                    "-" if f is None else _describe(f.pre_asymptotic),
                    excluded,
                ]
            )
        )
    return "\n".join(lines)


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
    """Header, error table and order table of one study."""
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
    if metric != "wall_time":
        parts += ["", "Fitted orders of the " + what + ":", "", order_table(result, metric)]
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
    """The studies of a document written by :func:`bundle` (a JSON string or the parsed dict)."""
    d = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    if d.get("kind") != _BUNDLE_KIND or d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a version-{SCHEMA_VERSION} study bundle")
    return {name: StudyResult.from_dict(s) for name, s in d["studies"].items()}
