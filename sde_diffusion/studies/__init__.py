r"""Order and error studies: built-in problems, convergence studies, order fits, reports, plots, grid optimisation.

Quick start::

    from sde_diffusion.studies import convergence_study

    res = convergence_study("gauss2d", ["ddim", "heun", "dpm_solver++:order=2"], nfe=[24, 48, 96, 192], refine=True)
    print(res.to_markdown())            # errors by NFE, effective and asymptotic orders, verdicts, local orders
    res.plot().savefig("orders.png")    # log-log error vs NFE (Agg backend)
    open("study.json", "w").write(res.to_json())

Modules: [`problems`][sde_diffusion.studies.problems] (registry of problems and schedules),
[`specs`][sde_diffusion.studies.specs] (solver configurations, NFE budgets),
[`metrics`][sde_diffusion.studies.metrics] (RMS, Gaussian W2, sliced W2),
[`convergence`][sde_diffusion.studies.convergence] (the study and its automatic refinement),
[`fitting`][sde_diffusion.studies.fitting] (order fits, asymptotic-range verdicts, Richardson orders),
[`results`][sde_diffusion.studies.results] (result object and JSON schema), [`report`][sde_diffusion.studies.report]
(markdown), [`plots`][sde_diffusion.studies.plots] (figures),
[`grid_optimizer`][sde_diffusion.studies.grid_optimizer] (time-grid optimisation). Matplotlib and tqdm are imported
only when used.
"""

from .convergence import DEFAULT_NFE, convergence_study, fit_study, ode_reference, sde_reference
from .fitting import (
    ASYMPTOTIC_TOL,
    CONFIRM_TOL,
    LineFit,
    OrderFit,
    RichardsonEstimate,
    fit_line,
    fit_order,
    local_orders,
    richardson_orders,
)
from .grid_optimizer import GridOptResult, grid_from_lambdas, optimise_grid
from .metrics import gaussian_w2, max_error, rms_error, sliced_w2
from .problems import PROBLEMS, SCHEDULES, Problem, get_problem, get_schedule
from .report import bundle, error_table, load_bundle, local_order_table, order_table, study_markdown
from .results import SCHEMA_VERSION, Run, StudyResult
from .specs import SolverSpec, default_solvers, parse_solver_spec, parse_value, solver_info

__all__ = [
    "ASYMPTOTIC_TOL",
    "CONFIRM_TOL",
    "DEFAULT_NFE",
    "GridOptResult",
    "LineFit",
    "OrderFit",
    "PROBLEMS",
    "Problem",
    "RichardsonEstimate",
    "Run",
    "SCHEDULES",
    "SCHEMA_VERSION",
    "SolverSpec",
    "StudyResult",
    "bundle",
    "convergence_study",
    "default_solvers",
    "error_table",
    "fit_line",
    "fit_order",
    "fit_study",
    "gaussian_w2",
    "get_problem",
    "get_schedule",
    "grid_from_lambdas",
    "load_bundle",
    "local_order_table",
    "local_orders",
    "max_error",
    "ode_reference",
    "optimise_grid",
    "order_table",
    "parse_solver_spec",
    "parse_value",
    "richardson_orders",
    "rms_error",
    "sde_reference",
    "sliced_w2",
    "solver_info",
    "study_markdown",
]
