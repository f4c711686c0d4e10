"""``sde-diffusion solvers``: every registered solver with its declared metadata."""

from __future__ import annotations

import argparse
import json

__all__ = ["HELP", "add_arguments", "run"]

HELP = "registered solvers with order, NFE per step, stochasticity, reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args) -> int:
    """Every registered solver (with its default options): order, strong order, NFE per step, memory, reference."""
    from ..solvers import registered_solvers
    from ..studies.specs import solver_info, solver_option_names

    rows = []
    for name, cls in sorted(registered_solvers().items()):
        try:
            info = solver_info(cls())
        except Exception:  # a solver without defaults for every option: its class attributes
            info = {
                "name": name,
                "options": {},
                "order": float(cls.order),
                "nfe_per_step": int(cls.nfe_per_step),
                "strong_order": None if cls.strong_order is None else float(cls.strong_order),
                "stochastic": bool(cls.stochastic),
                "memory": int(cls.memory),
                "reference": cls.reference,
                "adaptive": bool(cls.adaptive),
            }
        info["option_names"] = solver_option_names(cls)
        rows.append(info)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (
        f"{'name':<20} {'order':>5} {'strong':>6} {'NFE/step':>8} {'stochastic':>10} {'memory':>6}  "
        f"{'reference':<18} options"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        strong = "-" if r["strong_order"] is None else f"{r['strong_order']:g}"
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "-"
        print(
            f"{r['name']:<20} {r['order']:>5g} {strong:>6} {r['nfe_per_step']:>8} "
            f"{'yes' if r['stochastic'] else 'no':>10} {r['memory']:>6}  {r['reference'] or '-':<18} {opts}"
        )
    return 0
