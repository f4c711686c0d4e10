r"""The one sampling loop.

[`sample`][sde_diffusion.sample.sample] resolves the solver, the controller and the grid, prepares (or fetches from the
cache) the float64 coefficient plan, then runs the loop: one ``solver.step`` per step.

* **Fixed grid** ([`FixedGrid`][sde_diffusion.solvers.controllers.FixedGrid], the default of every fixed-step solver):
  the grid is known before the loop; inside it there is no ``.item()``, no indexing of device tensors by device scalars,
  no host decision and no host/device synchronisation; ``check_finite`` keeps a device-side record (one sum per step)
  and inspects it once, after the loop.
* **Adaptive** (a controller with ``adaptive = True``, the default of ``adaptive_multistep`` and
  ``dpm_solver_adaptive``): the solver returns an error estimate with each step
  ([`EmbeddedStep`][sde_diffusion.solvers.base.EmbeddedStep]) and the controller accepts or rejects it and proposes the
  next step -- one host/device synchronisation per attempted step (reading the scaled error).

For users who own the loop, [`Sampler`][sde_diffusion.sample.Sampler] exposes the fixed-grid pieces: ``init`` and
``step``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .grids import make_grid
from .models import AnalyticFirstStep, Model, Predictor
from .solvers.base import (
    EmbeddedStep,
    NoiseSource,
    Plan,
    Solver,
    StepNoise,
    clear_plan_cache,
    get_solver,
    make_noise_source,
    prepare_plan,
)
from .solvers.controllers import Controller
from .solvers.table import GridTable

__all__ = ["SampleResult", "Sampler", "sample", "NonFiniteError", "clear_caches", "DEFAULT_SOLVER"]

#: the solver of [`sample`][sde_diffusion.sample.sample], [`Sampler`][sde_diffusion.sample.Sampler] and
#: ``sde-diffusion sample`` when none is named (ranked best across the accuracy benchmark's problems at NFE 10-20)
DEFAULT_SOLVER = "ipndm"


class NonFiniteError(FloatingPointError):
    """Raised when a step produced a non-finite state; ``step`` is the index of the first such step."""

    def __init__(self, step: int, t_from: float, t_to: float):
        self.step = step
        super().__init__(f"non-finite state after step {step} (t = {t_from:.6g} -> {t_to:.6g})")


@dataclass
class SampleResult:
    """``x`` the final state, ``ts`` the float64 grid used (the accepted times under an adaptive controller), ``nfe``
    the model evaluations actually spent, ``trajectory`` the states at every grid point (when asked), ``info``
    extras: under an adaptive controller ``accepted``, ``rejected``, ``rejected_nfe``, ``nfe``, the accepted steps
    ``h`` (in lambda), the ``error_estimates`` and the controller's options."""

    x: torch.Tensor
    ts: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] | None = None
    info: dict | None = None


_GRID_CACHE: OrderedDict = OrderedDict()
#: the grid cache holds at most this many float64 grid points in all
_GRID_CACHE_POINTS = 2**20


def clear_caches() -> None:
    """Drop every cached grid and coefficient plan (both caches are bounded in bytes; this frees them now)."""
    _GRID_CACHE.clear()
    clear_plan_cache()


def _make_grid_cached(schedule, grid, steps, t_start, t_end, rho, decreasing) -> torch.Tensor:
    """[`make_grid`][sde_diffusion.grids.make_grid], memoised for named grids (building one costs tens of microseconds,
    which a 50-step call would pay as ~1 us per step). Keyed like the plan cache: schedule identity and ``repr``, grid
    spec."""
    if not isinstance(grid, str):
        return make_grid(schedule, grid, steps, t_start, t_end, rho=rho, decreasing=decreasing)
    key = (id(schedule), repr(schedule), grid, steps, t_start, t_end, rho, decreasing)
    hit = _GRID_CACHE.get(key)
    if hit is not None and hit[0] is schedule:
        _GRID_CACHE.move_to_end(key)
        return hit[1]
    ts = make_grid(schedule, grid, steps, t_start, t_end, rho=rho, decreasing=decreasing)
    if ts.numel() <= _GRID_CACHE_POINTS:
        _GRID_CACHE[key] = (schedule, ts)
        while sum(v[1].numel() for v in _GRID_CACHE.values()) > _GRID_CACHE_POINTS:
            _GRID_CACHE.popitem(last=False)
    return ts


#: per-step finiteness sums are folded into one device vector every this many steps
_SUMS_BLOCK = 256


def _finite_probe(x: torch.Tensor) -> Callable:
    """The per-step finiteness record: the sum of the state (any NaN/inf makes it non-finite), one reduction kernel
    on the device. Summed in the state's own precision for float32/float64 -- a float64 accumulator would double the
    cost of the check for float32 states -- and in float32 for half types (which would overflow early); a float32
    state counts as non-finite if its sum overflows float32 (``|sum| > 3.4e38``)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return functools.partial(torch.sum, dtype=torch.float32)
    return torch.sum


@contextlib.contextmanager
def _sync_debug(enabled: bool, device: torch.device):
    if not (enabled and device.type == "cuda"):
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def check_state(x_T) -> None:
    """Front-door check of an initial state: a floating-point tensor with a non-empty batch dimension."""
    if not isinstance(x_T, torch.Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}")
    if x_T.ndim == 0:
        raise ValueError("x_T must have a batch dimension (shape (B, ...)), got a 0-d tensor")
    if x_T.shape[0] == 0:
        raise ValueError(f"x_T has an empty batch (shape {tuple(x_T.shape)}): nothing to sample")


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _resolve_controller(solver: Solver, controller) -> Controller:
    if controller is None:
        return solver.default_controller()
    if not isinstance(controller, Controller):
        raise TypeError(f"controller must be a Controller (FixedGrid(), PIController(...), ...), got {controller!r}")
    if controller.adaptive and not solver.embedded:
        raise ValueError(
            f"controller {controller!r} needs an error estimate; solver {solver.name!r} has none "
            "(embedded solvers: adaptive_multistep, dpm_solver_adaptive)"
        )
    return controller


def _refuse(solver: Solver, why: str, steps, grid) -> None:
    for name, value in (("steps", steps), ("grid", grid)):
        if value is not None:
            raise ValueError(f"{name}= cannot be honoured: solver {solver.name!r} {why}")


class Sampler:
    """Manual stepping over a prepared grid: ``x, state = s.init(x_T)``, then ``x, state = s.step(x, state, i)``
    for ``i in range(s.num_steps)``, and optionally ``s.denoise(x)``.

    Args mirror [`sample`][sde_diffusion.sample.sample] (fixed grids only). The plan (coefficients for the grid) is
    computed once, in float64, on creation.
    """

    def __init__(
        self,
        model: Model,
        x_like: torch.Tensor,
        *,
        solver=DEFAULT_SOLVER,
        steps: int | None = None,
        grid=None,
        t_start=None,
        t_end=None,
        rho: float = 7.0,
        analytic_first_step: bool = False,
        generator=None,
        noise=None,
        **solver_options,
    ):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a sde_diffusion.Model, got {type(model).__name__}")
        check_state(x_like)
        _check_generator(generator)
        self.model = model
        self.solver: Solver = get_solver(solver, **solver_options)
        sch = model.schedule
        own = self.solver.own_grid(sch, t_start, t_end)
        if own is not None:
            _refuse(self.solver, "fixes its own grid (see its options)", steps, grid)
            self.ts = own
        else:
            grid = "logsnr" if grid is None else grid
            forward = self.solver.direction == "forward"
            if forward and isinstance(grid, str):
                t_start = sch.t_min if t_start is None else t_start
                t_end = sch.t_max if t_end is None else t_end
            self.ts = _make_grid_cached(sch, grid, steps, t_start, t_end, rho, not forward)
            if self.ts.ndim == 1 and (self.ts[0] > self.ts[-1]) == forward:
                word = "increasing (t_min -> t_max)" if forward else "decreasing (t_max -> t_min)"
                raise ValueError(f"solver {self.solver.name!r} needs a grid that is {word}")
        self.noise = make_noise_source(noise, generator)
        if self.solver.stochastic and self.noise is None:
            raise ValueError(
                f"solver {self.solver.name!r} is stochastic: pass generator=torch.Generator() or noise= "
                "(a tensor of normals or a torchsde Brownian path)"
            )
        self.plan: Plan = prepare_plan(self.solver, sch, self.ts, x_like)
        if not isinstance(analytic_first_step, bool):
            raise TypeError(f"analytic_first_step must be a bool, got {analytic_first_step!r}")
        if analytic_first_step and self.solver.direction == "forward":
            raise ValueError(f"analytic_first_step: solver {self.solver.name!r} runs forward (t_min -> t_max)")
        self.analytic_first_step = analytic_first_step

    @property
    def num_steps(self) -> int:
        return self.plan.num_steps

    def init(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        return x, self.solver.init_state(x)

    def model_for_step(self, i: int, x: torch.Tensor) -> Predictor:
        """What step ``i`` from ``x`` evaluates: the model, or for step 0 with ``analytic_first_step`` the
        [`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep] stand-in."""
        return AnalyticFirstStep(self.model, x) if i == 0 and self.analytic_first_step else self.model

    def step(self, x: torch.Tensor, state: tuple, i: int) -> tuple[torch.Tensor, tuple]:
        """Step ``i`` (``0 <= i < num_steps``) from ``x``; returns ``(x_next, state_next)``."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"i must be an int step index, got {type(i).__name__}")
        if not 0 <= i < self.num_steps:
            raise ValueError(f"i={i} is not a step index of this grid (0 <= i < {self.num_steps})")
        noise = StepNoise(self.noise, i, self.ts) if self.noise is not None else None
        out = self.solver.step(self.model_for_step(i, x), x, state, self.plan.row(i), noise)
        return (out.x, out.state) if isinstance(out, EmbeddedStep) else out

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """One data prediction at ``t_end`` (counted as one NFE)."""
        f = self.plan.final
        return self.model.predict(x, f.t, "x0", f.alpha, f.sigma)


def sample(
    model: Model,
    x_T: torch.Tensor,
    *,
    solver: str | type[Solver] | Solver = DEFAULT_SOLVER,
    steps: int | None = None,
    grid: str | torch.Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    controller: Controller | None = None,
    denoise_to_zero: bool = False,
    analytic_first_step: bool = False,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | NoiseSource | Callable | None = None,
    callback: Callable | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    check_finite: bool = True,
    sync_debug: bool = False,
    **solver_options,
) -> SampleResult:
    r"""Integrate from ``t_start`` (default ``t_max``) to ``t_end`` (default ``t_min``) with one solver.

    Args:
        model: a [`Model`][sde_diffusion.models.Model].
        x_T: the initial state, a floating-point tensor ``(B, ...)`` (e.g.
            ``ForwardSDE(schedule).prior_sample(shape)``).
        solver: registry name, class or instance (``get_solver`` options may be passed as keywords).
        steps: number of steps (intervals) for a named grid.
        grid: ``"time_uniform"``, ``"time_quadratic"``, ``"logsnr"`` (the default), ``"karras"`` (with ``rho``), or an
            explicit tensor of times ``(steps+1,)`` -- or ``(steps+1, B)`` for one grid per sample.
        t_start: first time (default ``t_max``; ``t_min`` for a forward solver such as ``ddim_inverse``).
        t_end: last time (default ``t_min``; ``t_max`` for a forward solver).
        rho: the exponent of the ``"karras"`` grid.
        controller: the step-size controller (default: the solver's own, ``solver.default_controller()``):
            [`FixedGrid`][sde_diffusion.solvers.controllers.FixedGrid],
            [`PIController`][sde_diffusion.solvers.controllers.PIController] or
            [`DPMSolverStepRule`][sde_diffusion.solvers.controllers.DPMSolverStepRule] (the last two need a solver with
            an embedded error estimate). ``steps``/``grid`` are refused under an adaptive controller.
        denoise_to_zero: finish with one x0 prediction at ``t_end`` (one more NFE).
        analytic_first_step: replace the first model evaluation by its large-noise limit
            ([`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep], AMED, arXiv:2312.00094): one NFE
            less (``solver.final_nfe(steps) - 1``; at a budget of ``n`` evaluations take
            ``solver.steps_for_nfe(n + 1)`` steps). Fixed grids, ``t_start`` at high noise.
        generator: randomness of stochastic solvers, as independent normals.
        noise: randomness of stochastic solvers, given instead of (or, for a Brownian path, besides) ``generator``:
            a tensor of standard normals of shape ``(steps, *x.shape)``, a torchsde Brownian path indexed by
            \(s = -t\) (see [`brownian_path`][sde_diffusion.reference.brownian_path]) or a
            [`NoiseSource`][sde_diffusion.solvers.base.NoiseSource].
        callback: ``callback(i, t, x)`` after every (accepted) step (``t`` the new time; may synchronise, it is yours).
        return_trajectory: keep the state at every grid point.
        progress: show a tqdm bar (fixed grids).
        check_finite: raise [`NonFiniteError`][sde_diffusion.sample.NonFiniteError] naming the first non-finite step
            (checked after the loop on a fixed grid, at once under an adaptive controller).
        sync_debug: on CUDA, run a fixed-grid loop under ``torch.cuda.set_sync_debug_mode("error")``.

    Returns:
        [`SampleResult`][sde_diffusion.sample.SampleResult] with the exact number of model evaluations spent.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a sde_diffusion.Model, got {type(model).__name__}")
    check_state(x_T)
    _check_generator(generator)
    solver = get_solver(solver, **solver_options)
    ctrl = _resolve_controller(solver, controller)
    if ctrl.adaptive:
        _refuse(solver, f"chooses its own steps under {ctrl!r} (pass controller=FixedGrid() for a grid)", steps, grid)
        if analytic_first_step:
            raise ValueError(f"analytic_first_step needs a fixed grid; {ctrl!r} chooses the steps")
        return _adaptive_loop(
            model, x_T, solver, ctrl, t_start, t_end, denoise_to_zero, noise, callback, return_trajectory, check_finite
        )
    s = Sampler(
        model,
        x_T,
        solver=solver,
        steps=steps,
        grid=grid,
        t_start=t_start,
        t_end=t_end,
        rho=rho,
        analytic_first_step=analytic_first_step,
        generator=generator,
        noise=noise,
    )
    nfe0 = model.nfe
    x, state = s.init(x_T)
    trajectory = [x] if return_trajectory else None
    sums: list[torch.Tensor] | None = [] if check_finite else None
    blocks: list[torch.Tensor] = []
    probe = _finite_probe(x)
    # hot loop: locals only, no per-step wrapper objects unless the solver draws noise
    step, src, ts = s.solver.step, s.noise, s.ts
    rows = s.plan.iter_rows()
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=s.num_steps, desc=f"{s.solver.name}", leave=False)
    if s.solver.embedded:  # on a fixed grid the error estimate is not needed

        def step(model, x, state, c, noise, _step=s.solver.step):
            return _step(model, x, state, c, noise)[:2]

    fold = s.num_steps >= _SUMS_BLOCK
    first = s.model_for_step(0, x)
    with _sync_debug(sync_debug, x.device):
        for c in rows:
            x, state = step(first, x, state, c, None if src is None else StepNoise(src, c.index, ts))
            first = model
            if sums is not None:
                sums.append(probe(x))
                if fold and len(sums) == _SUMS_BLOCK:  # fold into one device vector: no Python object per step kept
                    blocks.append(torch.stack(sums))
                    sums.clear()
            if trajectory is not None:
                trajectory.append(x)
            if callback is not None:
                callback(c.index, ts[c.index + 1], x)
        if denoise_to_zero:
            x = s.denoise(x)
            if sums is not None:
                sums.append(probe(x))
    if sums is not None and (sums or blocks):
        bad = ~torch.isfinite(torch.cat(blocks + ([torch.stack(sums)] if sums else [])))
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            ts = s.ts if s.ts.ndim == 1 else s.ts[:, 0]
            if k >= s.num_steps:
                raise NonFiniteError(k, float(ts[-1]), float(ts[-1]))
            raise NonFiniteError(k, float(ts[k]), float(ts[k + 1]))
    return SampleResult(x=x, ts=s.ts.clone(), nfe=model.nfe - nfe0, trajectory=trajectory)


def _adaptive_loop(
    model, x_T, solver, ctrl, t_start, t_end, denoise_to_zero, noise, callback, return_trajectory, check_finite
) -> SampleResult:
    """The loop under an adaptive controller (see the module docstring): one plan per attempted step, built on the
    host from the two end points; one synchronisation per attempt (the scaled error)."""
    if noise is not None or solver.stochastic:
        raise ValueError(f"solver {solver.name!r} under an adaptive controller is deterministic: it takes no noise")
    sch = model.schedule
    t0 = sch.t_max if t_start is None else float(t_start)
    t1 = sch.t_min if t_end is None else float(t_end)
    ends = GridTable(sch, sch.check_t(torch.tensor([t0, t1], dtype=torch.float64), "t_start/t_end"))
    if not t0 > t1:
        raise ValueError(f"t_start={t0} must be larger than t_end={t1}")
    lam0, lam1 = float(ends.lam_grid[0]), float(ends.lam_grid[1])
    nfe0 = model.nfe
    x, state = x_T, solver.init_state(x_T)
    st = ctrl.start(lam0, lam1, x_T, abs(t0 - t1))
    t = t0
    times, hs, errs = [t0], [], []
    trajectory = [x] if return_trajectory else None
    n_acc = n_rej = attempts = 0
    while not ctrl.finished(st):
        if attempts >= ctrl.max_steps:
            raise RuntimeError(
                f"{solver.name}: no convergence within max_steps={ctrl.max_steps} attempts (t = {t:.6g})"
            )
        attempts += 1
        lam_target, land = ctrl.propose(st)
        t_next = t1 if land else float(ends.at_lambda(lam_target).t)
        plan = prepare_plan(solver, sch, torch.tensor([t, t_next], dtype=torch.float64), x, cache=False)
        c = plan.row(0)
        out: EmbeddedStep = solver.step(model, x, state, c, None)
        e = float(ctrl.error_norm(st, out.error, x, out.x))  # the one synchronisation of the attempt
        if not math.isfinite(e):
            if check_finite:
                raise NonFiniteError(n_acc, t, t_next)
            e = ctrl.nonfinite_error
        lam_new = float(plan.table.lam_grid[1])
        if ctrl.update(st, e, out.error_order, lam_new, abs(t_next - t1)):
            n_acc += 1
            hs.append(lam_new - float(plan.table.lam_grid[0]))
            errs.append(e)
            x, state, t = out.x, out.state, t_next
            times.append(t)
            if trajectory is not None:
                trajectory.append(x)
            if callback is not None:
                callback(n_acc - 1, torch.tensor(t, dtype=torch.float64), x)
        else:
            n_rej += 1
            state = out.retry_state
    # evaluations beyond what the accepted steps alone would cost (those of rejected attempts not reused)
    rej_nfe = model.nfe - nfe0 - solver.final_nfe(n_acc)
    if denoise_to_zero:
        end = GridTable(sch, torch.tensor([t], dtype=torch.float64))
        t_dev = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        x = model.predict(x, t_dev, "x0", float(end.alpha_grid[0]), float(end.sigma_grid[0]))
    nfe = model.nfe - nfe0
    info = {
        "accepted": n_acc,
        "rejected": n_rej,
        "rejected_nfe": rej_nfe,
        "nfe": nfe,
        "h": hs,
        "error_estimates": errs,
        "order": int(solver.order),
        "controller": repr(ctrl),
        **ctrl.options(),
    }
    return SampleResult(x=x, ts=torch.tensor(times, dtype=torch.float64), nfe=nfe, trajectory=trajectory, info=info)
