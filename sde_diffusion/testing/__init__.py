r"""Property-testing toolkit: Hypothesis strategies and conformance checks for schedules and solvers.

Hypothesis is an optional dependency, imported when a strategy or check is first used::

    from hypothesis import given
    from sde_diffusion import testing

    @given(testing.schedules())
    def test_mine(schedule): ...

    testing.check_schedule(MySchedule())   # raises ScheduleCheckError naming the failed property
    testing.check_solver("ddim")           # raises SolverCheckError naming the failed property

Modules: ``strategies`` (schedules, times, grids, analytic data, predictions, solvers), ``schedule_checks``
(``check_schedule`` and ``SCHEDULE_PROPERTIES``), ``solver_checks`` (``check_solver`` and ``SOLVER_PROPERTIES``),
``order`` (``measure_order``: the fitted convergence order on Gaussian data). Both checks return a ``CheckReport``.
The project's own test-suite uses exactly these strategies and checks.
"""

from .common import CheckReport, PropertyCheckError, ScheduleCheckError, SolverCheckError
from .order import ORDER_NFE, OrderMeasurement, measure_order
from .schedule_checks import SCHEDULE_PROPERTIES, check_schedule
from .solver_checks import SOLVER_PROPERTIES, check_solver
from .strategies import (
    DATA_KINDS,
    GRID_KINDS,
    SCHEDULE_KINDS,
    SOLVER_OPTIONS,
    analytic_data,
    grids,
    predictions,
    schedules,
    solvers,
    times,
)

__all__ = [
    "PropertyCheckError",
    "ScheduleCheckError",
    "SolverCheckError",
    "CheckReport",
    "OrderMeasurement",
    "SCHEDULE_KINDS",
    "GRID_KINDS",
    "DATA_KINDS",
    "SOLVER_OPTIONS",
    "schedules",
    "times",
    "grids",
    "analytic_data",
    "predictions",
    "solvers",
    "SCHEDULE_PROPERTIES",
    "SOLVER_PROPERTIES",
    "check_schedule",
    "check_solver",
    "measure_order",
    "ORDER_NFE",
]
