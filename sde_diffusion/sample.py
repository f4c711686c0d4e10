r"""The one sampling loop.

:func:`sample` resolves the solver and the grid, prepares (or fetches from the cache) the float64 coefficient plan,
then runs the loop: one ``solver.step`` per grid interval. Inside the loop there is no ``.item()``, no indexing of
device tensors by device scalars and no host/device synchronisation; ``check_finite`` keeps a device-side record
(one float64 sum per step) and inspects it once, after the loop.

For users who own the loop, :class:`Sampler` exposes the same pieces: ``init`` and ``step``.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .grids import make_grid
from .models import Model
from .solvers.base import NoiseSource, Plan, Solver, StepNoise, get_solver, make_noise_source, prepare_plan

__all__ = ["SampleResult", "Sampler", "sample", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Raised when a step produced a non-finite state; ``step`` is the index of the first such step."""

    def __init__(self, step: int, t_from: float, t_to: float):
        self.step = step
        super().__init__(f"non-finite state after step {step} (t = {t_from:.6g} -> {t_to:.6g})")


@dataclass
class SampleResult:
    """``x`` the final state, ``ts`` the float64 grid used, ``nfe`` the model evaluations actually spent,
    ``trajectory`` the states at every grid point (when asked), ``info`` solver-specific extras."""

    x: torch.Tensor
    ts: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] | None = None
    info: dict | None = None


_GRID_CACHE: OrderedDict = OrderedDict()
_GRID_CACHE_SIZE = 32


def _make_grid_cached(schedule, grid, steps, t_start, t_end, rho, decreasing) -> torch.Tensor:
    """:func:`make_grid`, memoised for named grids (building one costs tens of microseconds, which a 50-step call
    would pay as ~1 us per step). Keyed like the plan cache: schedule identity and ``repr``, grid spec."""
    if not isinstance(grid, str):
        return make_grid(schedule, grid, steps, t_start, t_end, rho=rho, decreasing=decreasing)
    key = (id(schedule), repr(schedule), grid, steps, t_start, t_end, rho, decreasing)
    hit = _GRID_CACHE.get(key)
    if hit is not None and hit[0] is schedule:
        _GRID_CACHE.move_to_end(key)
        return hit[1]
    ts = make_grid(schedule, grid, steps, t_start, t_end, rho=rho, decreasing=decreasing)
    _GRID_CACHE[key] = (schedule, ts)
    while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
        _GRID_CACHE.popitem(last=False)
    return ts


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


class Sampler:
    """Manual stepping over a prepared grid: ``x, state = s.init(x_T)``, then ``x, state = s.step(x, state, i)``
    for ``i in range(s.num_steps)``, and optionally ``s.denoise(x)``.

    Args mirror :func:`sample`. The plan (coefficients for the grid) is computed once, in float64, on creation.
    """

    def __init__(
        self,
        model: Model,
        x_like: torch.Tensor,
        *,
        solver="ddim",
        steps: int | None = None,
        grid="logsnr",
        t_start=None,
        t_end=None,
        rho: float = 7.0,
        generator=None,
        noise=None,
        **solver_options,
    ):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a sde_diffusion.Model, got {type(model).__name__}")
        self.model = model
        self.solver: Solver = get_solver(solver, **solver_options)
        sch = model.schedule
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

    @property
    def num_steps(self) -> int:
        return len(self.plan.steps)

    def init(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        return x, self.solver.init_state(x)

    def step(self, x: torch.Tensor, state: tuple, i: int) -> tuple[torch.Tensor, tuple]:
        noise = StepNoise(self.noise, i, self.ts) if self.noise is not None else None
        return self.solver.step(self.model, x, state, self.plan.steps[i], noise)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """One data prediction at ``t_end`` (counted as one NFE)."""
        f = self.plan.final
        return self.model.predict(x, f.t, "x0", f.alpha, f.sigma)


def sample(
    model: Model,
    x_T: torch.Tensor,
    *,
    solver: str | type[Solver] | Solver = "ddim",
    steps: int | None = None,
    grid: str | torch.Tensor = "logsnr",
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    denoise_to_zero: bool = False,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | NoiseSource | Callable | None = None,
    callback: Callable | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    check_finite: bool = True,
    sync_debug: bool = False,
    **solver_options,
) -> SampleResult:
    """Integrate from ``t_start`` (default ``t_max``) to ``t_end`` (default ``t_min``) with one solver.

    Args:
        model: a :class:`~sde_diffusion.models.Model`.
        x_T: the initial state (e.g. ``ForwardSDE(schedule).prior_sample(shape)``).
        solver: registry name, class or instance (``get_solver`` options may be passed as keywords).
        steps: number of steps (intervals) for a named grid.
        grid: ``"time_uniform"``, ``"time_quadratic"``, ``"logsnr"``, ``"karras"`` (with ``rho``), or an explicit
            tensor of times ``(steps+1,)`` -- or ``(steps+1, B)`` for one grid per sample.
        t_start: first time of a named grid (default ``t_max``; ``t_min`` for a forward solver such as
            ``ddim_inverse``).
        t_end: last time of a named grid (default ``t_min``; ``t_max`` for a forward solver).
        rho: the exponent of the ``"karras"`` grid.
        denoise_to_zero: finish with one x0 prediction at ``t_end`` (one more NFE).
        generator: randomness of stochastic solvers, as independent normals.
        noise: randomness of stochastic solvers, given instead of (or, for a Brownian path, besides) ``generator``:
            a tensor of standard normals of shape ``(steps, *x.shape)``, a torchsde Brownian path indexed by
            ``s = -t`` (see :func:`~sde_diffusion.reference.brownian_path`) or a
            :class:`~sde_diffusion.solvers.base.NoiseSource`.
        callback: ``callback(i, t, x)`` after every step (``t`` the new time; may synchronise, it is yours).
        return_trajectory: keep the state at every grid point.
        progress: show a tqdm bar.
        check_finite: raise :class:`NonFiniteError` naming the first non-finite step (checked after the loop).
        sync_debug: on CUDA, run the loop under ``torch.cuda.set_sync_debug_mode("error")``.

    Returns:
        :class:`SampleResult` with the exact number of model evaluations spent.
    """
    solver = get_solver(solver, **solver_options)
    if getattr(solver, "adaptive", False):
        return solver.solve(
            model,
            x_T,
            t_start=t_start,
            t_end=t_end,
            denoise_to_zero=denoise_to_zero,
            callback=callback,
            return_trajectory=return_trajectory,
            check_finite=check_finite,
            generator=generator,
            noise=noise,
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
        generator=generator,
        noise=noise,
    )
    nfe0 = model.nfe
    x, state = s.init(x_T)
    trajectory = [x] if return_trajectory else None
    sums = [] if check_finite else None
    probe = _finite_probe(x)
    # hot loop: locals only, no per-step wrapper objects unless the solver draws noise
    step, steps_, src, ts = s.solver.step, s.plan.steps, s.noise, s.ts
    indices = enumerate(steps_)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, total=len(steps_), desc=f"{s.solver.name}", leave=False)
    with _sync_debug(sync_debug, x.device):
        for i, c in indices:
            x, state = step(model, x, state, c, None if src is None else StepNoise(src, i, ts))
            if sums is not None:
                sums.append(probe(x))
            if trajectory is not None:
                trajectory.append(x)
            if callback is not None:
                callback(i, ts[i + 1], x)
        if denoise_to_zero:
            x = s.denoise(x)
            if sums is not None:
                sums.append(probe(x))
    if sums:
        bad = ~torch.isfinite(torch.stack(sums))
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            ts = s.ts if s.ts.ndim == 1 else s.ts[:, 0]
            if k >= s.num_steps:
                raise NonFiniteError(k, float(ts[-1]), float(ts[-1]))
            raise NonFiniteError(k, float(ts[k]), float(ts[k + 1]))
    return SampleResult(x=x, ts=s.ts.clone(), nfe=model.nfe - nfe0, trajectory=trajectory)
