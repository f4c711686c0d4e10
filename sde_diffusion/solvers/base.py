r"""The solver contract, the registry, per-grid coefficient plans and noise sources.

How to write a solver
=====================

A solver is a small object holding only its options; it says how to take *one* step. The one loop is
[`sample`][sde_diffusion.sample.sample]; a solver never loops over steps and never calls a schedule.

**Metadata** (class attributes declared on [`Solver`][sde_diffusion.solvers.base.Solver], overridden where they differ):
``order`` (ODE global order; weak order for stochastic solvers), ``strong_order``, ``nfe_per_step`` (nominal;
``final_nfe(steps)`` is exact), ``stochastic``, ``memory`` (past model outputs kept in the state), ``direction``
(``"backward"`` t_max -> t_min, ``"forward"`` for inversion), ``exact_for_point_mass`` (exact at any step count on
point-mass data), ``couples_batch`` (a step mixes samples of the batch, so per-sample results depend on the batch),
``adaptive`` (its default controller chooses the steps: ``steps=``/``grid=`` are refused), ``embedded`` (``step``
also returns an error estimate, so it can run under an adaptive controller), ``reference`` (arXiv id).

**Coefficients, before the loop.** ``coefficients(schedule, ts, table) -> dict[str, column]`` returns every
per-step number beyond the [`GridTable`][sde_diffusion.solvers.table.GridTable] ``table`` (float64, whole grid at once:
columns ``(N,)``, or ``(N, B)`` for one grid per sample; integer/bool columns stay on the host; wrap a multiplier
column in [`host_scalars`][sde_diffusion.solvers.base.host_scalars], a column of ``K`` values per step in
[`vector_column`][sde_diffusion.solvers.base.vector_column] -- then ``c.w[j]``, not ``K`` fields named by f-strings;
``scalars=True`` for ``K`` multipliers -- and ``K x M`` values per step in
[`matrix_column`][sde_diffusion.solvers.base.matrix_column] -- then ``c.w_stage[j][m]``; record fields have fixed
names, read as plain attributes, never ``getattr(c, ...)``).
Stage points come from ``table.at_lambda(lam) -> (t, alpha, sigma)``; the ``schedule`` argument is there for its options
only -- a solver calls none of its methods.

**The step record.** The plan turns the columns into one typed record per step (a slots dataclass derived from
[`StepCoefficients`][sde_diffusion.solvers.base.StepCoefficients], fields fixed per solver: the base fields below plus
the solver's own keys):

* ``index`` (int), ``last`` (bool);
* ``t``, ``t_next`` -- *model-time inputs*: device tensors ``(B,)`` in the state's dtype, for ``model.predict``;
* ``t_host``, ``t_next_host`` -- the same times as numbers: Python floats for a shared grid, device tensors
  ``(B, 1, ..., 1)`` for per-sample grids (like every other coefficient);
* ``alpha``, ``sigma``, ``alpha_next``, ``sigma_next``, ``lam``, ``lam_next``, ``h = lam_next - lam`` -- floats
  for a shared grid (0-d host tensors where marked with [`host_scalars`][sde_diffusion.solvers.base.host_scalars]),
  ``(B, 1, ..., 1)`` device tensors for per-sample grids;
* the solver's own fields, one per key of ``coefficients``: a value as above per plain column, a tuple of values per
  vector column, a tuple of tuples per matrix column.

**The step.** ``step(model, x, state, c, noise) -> (x_next, state_next)``; all history travels in ``state`` (a tuple
from ``init_state(x)``), never in the solver. ``noise`` is a [`StepNoise`][sde_diffusion.solvers.base.StepNoise]
(``None`` for deterministic solvers). An *embedded* solver (``embedded = True``) returns an
[`EmbeddedStep`][sde_diffusion.solvers.base.EmbeddedStep] instead: ``(x_next, state_next, error, error_order,
retry_state)`` -- ``error`` the estimate of the local error (a tensor like ``x``; for a pair of solutions ``x_high -
x_low``), ``error_order`` the power of ``h`` it scales with, and ``retry_state`` the state to retry from when the step
is rejected (e.g. keeping a model output already paid for). On a fixed grid the loop keeps ``x_next`` and ``state_next``
only.

**Controllers.** ``solver.default_controller()`` names the controller ``sample`` uses when none is given
([`FixedGrid`][sde_diffusion.solvers.controllers.FixedGrid] for all fixed-step solvers;
[`PIController`][sde_diffusion.solvers.controllers.PIController] / ``DPMSolverStepRule`` for the adaptive ones, built
from their ``rtol``/``atol`` options). ``sample(..., controller=...)`` overrides it.

**Budgets.** ``final_nfe(steps)`` is the exact model-evaluation count; ``steps_for_nfe(nfe)`` the largest step count
within a budget (bounded search; the one rule used by studies and the CLI).

A complete solver (DDIM with ``eta = 0``)::

    @register("my_ddim")
    class MyDDIM(Solver):
        order, nfe_per_step, exact_for_point_mass = 1.0, 1, True

        def coefficients(self, schedule, ts, table):
            ratio = host_scalars(table.alpha_next / table.alpha)
            return {"ratio": ratio, "c_eps": -table.sigma_next * torch.expm1(table.h)}

        def step(self, model, x, state, c, noise):
            eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
            return lincomb(c.ratio, x, c.c_eps, eps), state

Plans are stored as a structure of float64 arrays (one column per coefficient); the per-step records are built from
them for the state's device and dtype and cached (bounded in bytes,
[`clear_plan_cache`][sde_diffusion.solvers.base.clear_plan_cache]) -- for grids longer than
[`ROWS_CACHED_UP_TO`][sde_diffusion.solvers.base.ROWS_CACHED_UP_TO] steps they are built in chunks as the loop advances,
so memory does not grow with the step count.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .._ops import lincomb
from ..models import Predictor
from ..schedules import NoiseSchedule
from .table import STEP_COLUMNS, GridTable

__all__ = [
    "Solver",
    "EmbeddedStep",
    "StepCoefficients",
    "FinalPoint",
    "register",
    "get_solver",
    "registered_solvers",
    "Plan",
    "prepare_plan",
    "clear_plan_cache",
    "plan_cache_bytes",
    "NoiseSource",
    "GeneratorNoise",
    "TensorNoise",
    "BrownianNoise",
    "StepNoise",
    "make_noise_source",
    "base_coefficients",
    "lincomb",
    "host_scalars",
    "HostScalars",
    "vector_column",
    "matrix_column",
    "VectorColumn",
    "GridTable",
]


class EmbeddedStep(NamedTuple):
    """What the ``step`` of an embedded solver returns (see "How to write a solver")."""

    x: torch.Tensor
    state: tuple
    error: torch.Tensor
    error_order: float
    retry_state: tuple


class Solver:
    """Base class of every sampler. Subclasses set the class attributes and implement ``step`` (and usually
    ``coefficients``); see the module docstring for the contract."""

    name: str = "solver"
    order: float = 1.0
    strong_order: float | None = None
    nfe_per_step: int = 1
    stochastic: bool = False
    memory: int = 0
    #: "backward" integrates from t_max to t_min (sampling), "forward" the other way (inversion / encoding)
    direction: str = "backward"
    #: exact at any step count when the data distribution is a point mass (the model output is then constant along
    #: the flow in the solver's own variable)
    exact_for_point_mass: bool = False
    #: a step mixes the samples of the batch (so a sample's result depends on the rest of the batch)
    couples_batch: bool = False
    #: the default controller chooses the steps: ``steps=``/``grid=`` are refused unless a fixed grid is asked for
    adaptive: bool = False
    #: ``step`` returns an [`EmbeddedStep`][sde_diffusion.solvers.base.EmbeddedStep] (with an error estimate)
    embedded: bool = False
    #: arXiv reference of the method
    reference: str = ""

    def options(self) -> dict[str, Any]:
        """The solver's options (what identifies its coefficients)."""
        return {}

    def coefficients(self, schedule: NoiseSchedule, ts: torch.Tensor, table: GridTable) -> dict[str, Any]:
        """Per-step float64 coefficients beyond ``table`` (a [`GridTable`][sde_diffusion.solvers.table.GridTable] for
        ``ts``)."""
        return {}

    def init_state(self, x: torch.Tensor) -> tuple:
        return ()

    def step(self, model: Predictor, x: torch.Tensor, state: tuple, c: StepCoefficients, noise: StepNoise | None):
        raise NotImplementedError

    def final_nfe(self, steps: int) -> int:
        """Exact number of model evaluations for ``steps`` steps (without a final denoising)."""
        return self.nfe_per_step * steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest step count whose exact cost ``final_nfe(steps)`` is at most ``nfe`` (0 when even one step
        costs more). ``final_nfe`` is non-decreasing and every step costs at least one evaluation, so the answer lies
        in ``[0, nfe]``: a bisection, ``O(log nfe)`` calls, never an unbounded loop."""
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"an NFE budget must be a positive int, got {nfe!r}")
        lo, hi = 0, nfe  # final_nfe(lo) <= nfe holds for lo = 0; find the largest such lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.final_nfe(mid) <= nfe:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def own_grid(self, schedule: NoiseSchedule, t_start: float | None, t_end: float | None) -> torch.Tensor | None:
        """A grid the solver fixes itself (then ``steps=``/``grid=`` are refused); ``None`` for most solvers."""
        return None

    def default_controller(self):
        """The step-size controller ``sample`` uses when none is given."""
        from .controllers import FixedGrid

        return FixedGrid()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def key(self) -> tuple:
        return (type(self), tuple(sorted((k, repr(v)) for k, v in self.options().items())))


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Solver]] = {}


def register(name: str) -> Callable[[type[Solver]], type[Solver]]:
    """Class decorator: register a solver class under a snake_case name."""

    def deco(cls: type[Solver]) -> type[Solver]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"solver name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def registered_solvers() -> dict[str, type[Solver]]:
    """Name -> class of every registered solver."""
    return dict(_REGISTRY)


def get_solver(solver: str | type[Solver] | Solver = "ddim", **options: Any) -> Solver:
    """The one registry: a name (with options), a class (with options) or an instance (no options)."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError("options cannot be given together with a solver instance")
        return solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        return solver(**options)
    if isinstance(solver, str):
        if solver not in _REGISTRY:
            raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(sorted(_REGISTRY))}")
        cls = _REGISTRY[solver]
        try:
            return cls(**options)
        except TypeError as e:
            raise TypeError(f"bad options for solver {solver!r}: {e}") from e
    raise TypeError(f"solver must be a name, a Solver class or instance, got {type(solver).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# step records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StepCoefficients:
    """The base fields of every step record (see the module docstring for their types and conventions)."""

    index: int
    last: bool
    t: torch.Tensor
    t_next: torch.Tensor
    t_host: Any
    t_next_host: Any
    alpha: Any
    sigma: Any
    alpha_next: Any
    sigma_next: Any
    lam: Any
    lam_next: Any
    h: Any


_BASE_FIELDS = tuple(f.name for f in dataclasses.fields(StepCoefficients))
_RECORD_TYPES: dict[tuple[str, ...], type] = {}


def record_type(extra: tuple[str, ...]) -> type:
    """The record class with the base fields plus ``extra`` (one class per field set, created once)."""
    cls = _RECORD_TYPES.get(extra)
    if cls is None:
        if not extra:
            cls = StepCoefficients
        else:
            cls = dataclasses.make_dataclass(
                "StepCoefficients_" + "_".join(extra)[:60],
                [(k, Any) for k in extra],
                bases=(StepCoefficients,),
                slots=True,
            )
        _RECORD_TYPES[extra] = cls
    return cls


@dataclass(frozen=True)
class FinalPoint:
    """Model-time input and ``alpha``/``sigma`` at the grid's last point (for the final denoising)."""

    t: torch.Tensor
    alpha: Any
    sigma: Any


# ---------------------------------------------------------------------------------------------------------------------
# coefficient plans
# ---------------------------------------------------------------------------------------------------------------------


def base_coefficients(schedule: NoiseSchedule, ts: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64 per-step ``t, t_next, alpha, sigma, alpha_next, sigma_next, lam, lam_next, h`` for a grid (the
    columns of its [`GridTable`][sde_diffusion.solvers.table.GridTable])."""
    return GridTable(schedule, ts).columns()


class VectorColumn:
    """Marker for a per-step *vector* (``depth = 1``) or *matrix* (``depth = 2``) of coefficients (see
    [`vector_column`][sde_diffusion.solvers.base.vector_column] and
    [`matrix_column`][sde_diffusion.solvers.base.matrix_column]): the last ``depth`` dimensions of ``values`` index the
    entries of one step."""

    __slots__ = ("values", "depth", "scalars")

    def __init__(self, values: torch.Tensor, depth: int = 1, scalars: bool = False):
        if depth not in (1, 2) or values.ndim < depth + 1:
            raise ValueError(f"a column of depth {depth} needs at least {depth + 1} dimensions, got {values.ndim}")
        self.values = values
        self.depth = depth
        self.scalars = scalars

    @property
    def entries(self) -> int:
        """Number of values per step (per sample) -- the product of the last ``depth`` dimensions."""
        return math.prod(self.values.shape[-self.depth :])


def vector_column(v: torch.Tensor, scalars: bool = False) -> VectorColumn:
    """Mark a column of ``K`` coefficients per step -- shape ``(N, K)`` for a shared grid, ``(N, B, K)`` per sample:
    each step record gets a tuple of ``K`` values (floats, or device tensors ``(B, 1, ..., 1)``), so a method keeps
    e.g. its weights as ``c.w[j]`` instead of ``K`` fields named ``w0, w1, ...``. Integer/bool columns give host
    values, as plain columns do. ``scalars=True`` marks *multipliers* (the ``a`` of
    [`lincomb`][sde_diffusion.solvers.base.lincomb]): on a shared grid each entry is handed over as
    [`host_scalars`][sde_diffusion.solvers.base.host_scalars] hands over a plain column."""
    return VectorColumn(v, 1, scalars)


def matrix_column(v: torch.Tensor) -> VectorColumn:
    """Mark a column of ``K x M`` coefficients per step -- shape ``(N, K, M)`` for a shared grid, ``(N, B, K, M)`` per
    sample: each step record gets a ``K``-tuple of ``M``-tuples, ``c.w_stage[j][m]``. Meant for ragged data padded to
    a rectangle (stage ``j`` of a singlestep method combines ``j + 1`` outputs; the padding is never read and must
    be finite)."""
    return VectorColumn(v, 2)


class HostScalars:
    """Marker for a per-step multiplier column (see [`host_scalars`][sde_diffusion.solvers.base.host_scalars])."""

    __slots__ = ("values",)

    def __init__(self, values: torch.Tensor):
        self.values = values


def host_scalars(v: torch.Tensor) -> HostScalars | torch.Tensor:
    """Mark a per-step *multiplier* column ``(N,)`` of a shared grid: the plan hands it to the loop as ``N``
    zero-dimensional host tensors of the state's dtype (a per-sample ``(N, B)`` column is returned unchanged and
    becomes device tensors as usual).

    ``torch.mul(x, a)`` with a Python float wraps ``a`` into a tensor on every call (about 1 us on CPU, as much as the
    multiply of a 16k-element state itself), and a 0-d tensor of another dtype costs a conversion; a 0-d host tensor
    of the state's dtype is used as is -- on CUDA too, where it is passed to the kernel as a scalar argument (no
    copy, no synchronisation). Entries exactly equal to 1 (VE schedules) become the float ``1.0``, which
    [`lincomb`][sde_diffusion.solvers.base.lincomb] skips. Meant for the ``a`` of
    [`lincomb`][sde_diffusion.solvers.base.lincomb]; weights ``w`` stay floats (``add_(y, alpha=w)`` takes them
    unwrapped)."""
    return HostScalars(v) if v.ndim == 1 else v


#: per-step records are cached with the plan for grids up to this many steps; longer grids build them in chunks of
#: [`ROW_CHUNK`][sde_diffusion.solvers.base.ROW_CHUNK] as the loop advances (their memory then does not grow with the
#: step count)
ROWS_CACHED_UP_TO = 4096
ROW_CHUNK = 256
#: the plan cache holds at most this many bytes (estimated; see
#: [`plan_cache_bytes`][sde_diffusion.solvers.base.plan_cache_bytes])
PLAN_CACHE_BYTES = 32 * 2**20
#: estimated bytes of one per-step value held in a record (a float, a 0-d tensor or a device-tensor view)
_BYTES_PER_FLOAT, _BYTES_PER_TENSOR = 24, 400


@dataclass
class Plan:
    """Everything the loop needs for one grid, as a structure of arrays: the float64 (or integer) ``columns`` of the
    solver's coefficients (``(N,)`` or ``(N, B)``; a [`HostScalars`][sde_diffusion.solvers.base.HostScalars] column
    keeps its marker), the [`GridTable`][sde_diffusion.solvers.table.GridTable], and the per-step records for the
    state's device and dtype -- cached in ``rows`` for grids up to
    [`ROWS_CACHED_UP_TO`][sde_diffusion.solvers.base.ROWS_CACHED_UP_TO] steps, built in chunks by
    [`iter_rows`][sde_diffusion.solvers.base.Plan.iter_rows] otherwise."""

    ts: torch.Tensor
    table: GridTable
    columns: dict[str, Any]
    per_sample: bool
    final: FinalPoint
    record: type
    device: torch.device
    dtype: torch.dtype
    ndim: int
    batch: int
    rows: list | None = None

    @property
    def num_steps(self) -> int:
        return self.ts.shape[0] - 1

    @property
    def steps(self) -> list:
        """All per-step records (built now if they are not cached)."""
        return self.rows if self.rows is not None else self.build_rows(0, self.num_steps)

    def iter_rows(self) -> Iterator:
        """The per-step records in order (the cached list, or chunks built as the loop advances)."""
        if self.rows is not None:
            return iter(self.rows)
        return (c for lo in range(0, self.num_steps, ROW_CHUNK) for c in self.build_rows(lo, lo + ROW_CHUNK))

    def row(self, i: int):
        """The record of step ``i`` (``0 <= i < num_steps``)."""
        return self.rows[i] if self.rows is not None else self.build_rows(i, i + 1)[0]

    def build_rows(self, lo: int, hi: int) -> list:
        """Records of steps ``lo .. hi-1``: one transfer per column to the device, then one object per step."""
        n = self.num_steps
        hi = min(hi, n)
        m = hi - lo
        tdev = _model_times(self.ts[lo : hi + 1], self.per_sample, self.batch, self.device, self.dtype)
        t_rows = list(tdev.unbind(0))
        cols = [
            _to_step_values(v, lo, hi, self.per_sample, self.device, self.dtype, self.ndim)
            for v in self.columns.values()
        ]
        idx = range(lo, hi)
        last = [i == n - 1 for i in idx]
        rec = self.record
        return [rec(*v) for v in zip(idx, last, t_rows[:m], t_rows[1:], *cols)]

    def nbytes(self) -> int:
        """Estimated bytes held by the plan: the columns exactly, the cached records approximately."""
        total = sum(_column_bytes(v) for v in self.columns.values()) + self.ts.numel() * 8
        if self.rows is not None:
            per_value = _BYTES_PER_TENSOR if self.per_sample else _BYTES_PER_FLOAT
            values = sum(v.entries if isinstance(v, VectorColumn) else 1 for v in self.columns.values())
            total += len(self.rows) * (64 + values * (8 + per_value) + 2 * (8 + _BYTES_PER_TENSOR))
        return total


def _column_bytes(v: Any) -> int:
    if isinstance(v, (HostScalars, VectorColumn)):
        v = v.values
    return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else sys.getsizeof(v)


def _model_times(ts: torch.Tensor, per_sample: bool, batch: int, device, dtype) -> torch.Tensor:
    """Model-time inputs ``(M, B)`` on the device for grid points ``ts`` (moved in one transfer)."""
    tdev = ts.to(dtype)
    tdev = tdev[:, None].expand(-1, batch) if not per_sample else tdev
    tdev = tdev.contiguous()
    return tdev.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tdev.to(device)


def _to_step_values(v: Any, lo: int, hi: int, per_sample: bool, device, dtype, ndim: int) -> list:
    m = hi - lo
    if isinstance(v, VectorColumn):
        cols: Any = v.values.unbind(-v.depth)
        if v.depth > 1:
            cols = [VectorColumn(col, v.depth - 1, v.scalars) for col in cols]
        elif v.scalars:
            cols = [host_scalars(col) for col in cols]
        parts = [_to_step_values(col, lo, hi, per_sample, device, dtype, ndim) for col in cols]
        return [tuple(p) for p in zip(*parts)]
    if isinstance(v, HostScalars):
        col = v.values[lo:hi]
        return [1.0 if one else e for e, one in zip(col.to(dtype).unbind(0), (col == 1.0).tolist())]
    if not isinstance(v, torch.Tensor):
        return list(v[lo:hi]) if isinstance(v, (list, tuple)) else [v] * m
    v = v[lo:hi]
    if v.dtype in (torch.int64, torch.int32, torch.bool):
        return v.tolist()
    if not per_sample:
        return v.tolist()
    # (M, B, ...) -> per step (B, 1, ..., 1) on the device; one transfer for the whole chunk
    dev = v.to(dtype=dtype).reshape(v.shape[:2] + (1,) * (ndim - 1))
    dev = dev.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else dev.to(device)
    return list(dev.unbind(0))


_PLAN_CACHE: OrderedDict = OrderedDict()
plan_cache_stats = {"hits": 0, "misses": 0}


def plan_cache_bytes() -> int:
    """Estimated bytes held by the plan cache now."""
    return sum(entry[2] for entry in _PLAN_CACHE.values())


def clear_plan_cache() -> None:
    """Drop every cached plan."""
    _PLAN_CACHE.clear()


def prepare_plan(
    solver: Solver, schedule: NoiseSchedule, ts: torch.Tensor, x: torch.Tensor, *, cache: bool = True
) -> Plan:
    """Compute (or fetch from the cache) the coefficient plan of ``solver`` on grid ``ts`` for states like ``x``."""
    per_sample = ts.ndim == 2
    if per_sample and ts.shape[1] != x.shape[0]:
        raise ValueError(f"per-sample grid has {ts.shape[1]} columns for a batch of {x.shape[0]}")
    key = None
    if cache:
        key = (
            solver.key(),
            id(schedule),
            repr(schedule),
            ts.shape,
            hash(ts.numpy().tobytes()),
            x.device,
            x.dtype,
            x.ndim,
            x.shape[0],
        )
        hit = _PLAN_CACHE.get(key)
        if hit is not None and hit[0] is schedule:
            _PLAN_CACHE.move_to_end(key)
            plan_cache_stats["hits"] += 1
            return hit[1]
        plan_cache_stats["misses"] += 1
    n = ts.shape[0] - 1
    with torch.no_grad():
        table = GridTable(schedule, ts)
        extra = solver.coefficients(schedule, ts, table)
    columns: dict[str, Any] = {
        "t_host": table.t,
        "t_next_host": table.t_next,
        **{k: getattr(table, k) for k in STEP_COLUMNS[2:]},
    }
    columns.update(extra)
    names = tuple(k for k in columns if k not in _BASE_FIELDS)
    ordered = {k: columns[k] for k in _BASE_FIELDS[4:]} | {k: columns[k] for k in names}
    end = _to_step_values(table.alpha_grid[-1:], 0, 1, per_sample, x.device, x.dtype, x.ndim)[0]
    end_s = _to_step_values(table.sigma_grid[-1:], 0, 1, per_sample, x.device, x.dtype, x.ndim)[0]
    t_end = _model_times(ts[-1:], per_sample, x.shape[0], x.device, x.dtype)[0]
    plan = Plan(
        ts=ts,
        table=table,
        columns=ordered,
        per_sample=per_sample,
        final=FinalPoint(t_end, end, end_s),
        record=record_type(names),
        device=x.device,
        dtype=x.dtype,
        ndim=x.ndim,
        batch=x.shape[0],
    )
    if n <= ROWS_CACHED_UP_TO:
        plan.rows = plan.build_rows(0, n)
    if cache:
        size = plan.nbytes()
        if size <= PLAN_CACHE_BYTES:
            _PLAN_CACHE[key] = (schedule, plan, size)
            while plan_cache_bytes() > PLAN_CACHE_BYTES:
                _PLAN_CACHE.popitem(last=False)
    return plan


# ---------------------------------------------------------------------------------------------------------------------
# noise sources
# ---------------------------------------------------------------------------------------------------------------------


class NoiseSource:
    """Where a stochastic solver's randomness comes from.

    ``increment(i, ts, x)`` is the standard-normal increment of the driving Brownian motion over step ``i``
    (``(W(s_{i+1}) - W(s_i)) / sqrt(t_i - t_{i+1})`` in ``s = -t``); ``normal(i, k, x)`` is an independent
    standard normal (e.g. for Langevin correctors), ``k`` numbering the draws within a step.
    """

    def increment(self, i: int, ts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, i: int, k: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GeneratorNoise(NoiseSource):
    """Independent normals from a ``torch.Generator`` (on the device of ``x``)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def _draw(self, x):
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def increment(self, i, ts, x):
        return self._draw(x)

    def normal(self, i, k, x):
        return self._draw(x)


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` with ``x``'s dtype and device; a host tensor goes to a CUDA device through pinned memory,
    asynchronously (a pageable host-to-device copy would synchronise)."""
    if t.device == x.device and t.dtype == x.dtype:
        return t
    t = t.to(dtype=x.dtype)
    if x.device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(x.device, non_blocking=True)
    return t.to(x.device)


class TensorNoise(NoiseSource):
    """Pre-drawn normals: ``noise[i]`` is step ``i``'s increment; extra draws come from ``extra[i][k]`` if given,
    else from ``generator``. The tensors are converted to the state's dtype and device once, at the first draw (not
    once per step)."""

    def __init__(
        self, noise: torch.Tensor, extra: torch.Tensor | None = None, generator: torch.Generator | None = None
    ):
        self.noise, self.extra, self.generator = noise, extra, generator

    def increment(self, i, ts, x):
        if i >= self.noise.shape[0]:
            raise ValueError(f"noise has {self.noise.shape[0]} steps; step {i} needs one more")
        if self.noise.shape[1:] != x.shape:
            raise ValueError(f"noise[{i}] has shape {tuple(self.noise.shape[1:])}, state has {tuple(x.shape)}")
        self.noise = _like(self.noise, x)
        return self.noise[i]

    def normal(self, i, k, x):
        if self.extra is None:
            if self.generator is None:
                raise ValueError(
                    "this solver needs independent normals besides `noise`: pass generator= as well "
                    "(or TensorNoise(noise, extra))"
                )
            return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        self.extra = _like(self.extra, x)
        return self.extra[i][k]


class BrownianNoise(NoiseSource):
    """Increments of a torchsde Brownian path (``BrownianInterval`` / ``BrownianTree`` / ``BrownianPath``) indexed
    by ``s = -t``, so that runs with different grids share one path; ``generator`` supplies extra normals."""

    def __init__(self, bm, generator: torch.Generator | None = None):
        self.bm = bm
        self.generator = generator

    def increment(self, i, ts, x):
        if ts.ndim != 1:
            raise ValueError("a Brownian path needs one grid shared by the batch (per-sample grids are not supported)")
        ta, tb = float(ts[i]), float(ts[i + 1])
        dw = self.bm(-ta, -tb)
        return (dw / math.sqrt(ta - tb)).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def normal(self, i, k, x):
        if self.generator is None:
            raise ValueError("this solver needs independent normals besides the Brownian path: pass a generator")
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)


@dataclass
class StepNoise:
    """The noise handle a solver gets for one step."""

    source: NoiseSource
    i: int
    ts: torch.Tensor

    def increment(self, x: torch.Tensor) -> torch.Tensor:
        return self.source.increment(self.i, self.ts, x)

    def normal(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        return self.source.normal(self.i, k, x)


def make_noise_source(noise=None, generator: torch.Generator | None = None) -> NoiseSource | None:
    """Build a [`NoiseSource`][sde_diffusion.solvers.base.NoiseSource] from what the user passed to ``sample``.

    ``noise`` may be a [`NoiseSource`][sde_diffusion.solvers.base.NoiseSource], a tensor of shape ``(steps, *x.shape)``
    of standard normals, or a torchsde Brownian object (anything callable as ``bm(ta, tb)``); ``generator`` alone gives
    independent draws.
    """
    if noise is None:
        return None if generator is None else GeneratorNoise(generator)
    if isinstance(noise, NoiseSource):
        return noise
    if isinstance(noise, torch.Tensor):
        return TensorNoise(noise, generator=generator)
    if callable(noise):
        return BrownianNoise(noise, generator)
    raise TypeError(f"noise must be a tensor, a Brownian path or a NoiseSource, got {type(noise).__name__}")
