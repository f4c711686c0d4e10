r"""Accuracy benchmark (issue 4): our deterministic solvers against diffusers' schedulers on exact Gaussian mixtures.

What is measured
----------------
Problems (from :mod:`sde_diffusion.studies.problems`): ``ring`` (2-D, 8 narrow modes) and ``gmm64`` (64-D mixture of
10 diagonal Gaussians), each on two schedules:

* ``vp-discrete`` -- DDPM linear betas (1e-4 .. 0.02), 1000 steps, with ``alphas_cumprod`` accumulated in float32
  exactly as diffusers does (``torch.cumprod(1 - linspace(..., dtype=float32))``), then held in float64 by
  :class:`~sde_diffusion.schedules.VPDiscrete`. (The registry's ``vp-discrete`` recomputes the product in float64,
  which moves ``sigma`` near ``t_min`` by ~1e-5 relative; using diffusers' own table keeps that difference out of
  diffusers' error.)
* ``edm`` -- ``alpha = 1``, ``sigma = t`` from 80 down to 0.002.

The network is the exact noise (or data) prediction of the mixture. Every run starts from the exact marginal at
``t_max`` (the same batch ``x_T`` for every run) or -- for a diffusers configuration whose first timestep is below
``t_max`` (``"leading"`` spacing) -- from the exact probability-flow state at that time on the *same* trajectory,
so that every run aims at the same end point. The reference is
:func:`~sde_diffusion.reference.probability_flow_reference` (torchdiffeq dopri5, float64, ``rtol = atol = 1e-10``,
every needed time stepped onto exactly); its error is estimated by a second solve at ``1e-8``.

Two outputs, both at the common end time ``t_min`` (``t = 1/N``, i.e. ``alphas_cumprod[0]``, or ``sigma = 0.002``):

* ``state`` -- the state at ``t_min`` against the reference state there (ours: integrate ``t_max -> t_min``;
  diffusers: ``final_sigmas_type="sigma_min"``, DDIM/PNDM with ``set_alpha_to_one=False``, DEIS);
* ``x0`` -- the data prediction at the last evaluation time, against the exact data prediction ``D(x_ref(t_last))``
  at the exact state (ours: ``denoise_to_zero=True``, i.e. ``NFE - 1`` evaluations to ``t_min`` and one
  denoising evaluation; diffusers: ``final_sigmas_type="zero"``, DDIM ``set_alpha_to_one=True``, Euler/Heun,
  whose final update to ``sigma = 0`` is exactly that data prediction). diffusers runs whose last evaluation is not
  at ``t_min`` (``"trailing"``/``"leading"`` spacing to zero) are measured against their own exact target but are
  not eligible as "best": they solve a shorter problem and return a blurred posterior mean.

Error: RMS over the batch and the coordinates (:func:`~sde_diffusion.studies.metrics.rms_error`), and the median
over the batch of the per-sample RMS (insensitive to the few samples that a solver sends to another mode).

Feeding diffusers the same problem: its model input at (integer) timestep ``k`` is our continuous time
``t = (k + 1)/N`` (``alphas_cumprod[k]``); the exact network is evaluated there (for fractional timesteps, e.g.
``EulerDiscreteScheduler`` with Karras sigmas, on our continuous interpolation). When diffusers pairs a Karras /
exponential noise level with a *rounded* timestep, the network sees the rounded one -- as a real network would. EDM
schedulers get the output that their own ``precondition_outputs`` maps to the exact data prediction at the sigma of
the current step. Budgets: the largest ``num_inference_steps`` whose number of model calls (``len(timesteps)``) fits.

Optimised grids (``grid = "optimised"``): for a few of our configurations (:data:`OPTIMISED_CONFIGS`) at NFE 10
and 20, :func:`~sde_diffusion.studies.grid_optimizer.optimise_grid` fits the interior lambda knots on a *pilot* batch
drawn from another seed (``opt_seed``; its validation batch ``opt_seed + 1``) -- the evaluation batch ``x_T``
(``seed``) is never seen -- starting from the fixed grid that is best on the pilot; the grid is kept if it also lowers
the validation error, else the start grid is used. The resulting grid is then run on ``x_T`` exactly like the fixed
grids (same reference, same metric; the ``x0`` output at NFE ``n`` uses the grid optimised for the state at
``n - 1``). The summary reports the ratio to diffusers' best both without and with these runs.

Precision: for a few of our solvers, the network output cast to float16 / bfloat16 / float32 and back (float32
state) against the float64 run of the same configuration, at NFE 10 and 50.

Usage::

    python benchmarks/accuracy.py --out benchmarks/results            # full (~3-5 min on 2 cores)
    python benchmarks/accuracy.py --out /tmp/acc --quick              # seconds: smoke run

Writes ``accuracy.json`` (schema ``SCHEMA_VERSION``, every run) and ``accuracy.md`` (summary tables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sde_diffusion.models import Model  # noqa: E402
from sde_diffusion.reference import probability_flow_reference  # noqa: E402
from sde_diffusion.sample import sample  # noqa: E402
from sde_diffusion.schedules import VPDiscrete  # noqa: E402
from sde_diffusion.solvers.dpm_solver import DPMSolverFast  # noqa: E402
from sde_diffusion.studies.grid_optimizer import optimise_grid  # noqa: E402
from sde_diffusion.studies.metrics import median_error, rms_error  # noqa: E402
from sde_diffusion.studies.problems import PROBLEMS, Problem  # noqa: E402
from sde_diffusion.studies.specs import parse_solver_spec, steps_for_nfe  # noqa: E402

SCHEMA_VERSION = 1
KIND = "sde_diffusion.accuracy_benchmark"
N_TRAIN = 1000
VP_CONFIG = dict(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
GRIDS = ("logsnr", "time_uniform", "time_quadratic", "karras")
MODEL_DTYPES = ("float32", "float16", "bfloat16")
#: diffusers classes whose ``step`` rounds the state to float32 (``sample.to(torch.float32)``) whatever its dtype
ROUNDS_STATE = ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EDMEulerScheduler")


# ---------------------------------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------------------------------


def our_configs() -> list[str]:
    """Every deterministic fixed-budget configuration of ours (run on each grid of :data:`GRIDS`)."""
    c = ["ddim", "euler", "heun", "heun:variable=sigma"]
    for lof in ("true", "false"):
        c += [f"dpm_solver++:order=2,multistep=true,update={v},lower_order_final={lof}" for v in ("paper", "exact")]
        c += [
            f"dpm_solver++:order=3,multistep=true,update={v},lower_order_final={lof}"
            for v in ("paper", "heun", "exact")
        ]
    c += [
        "dpm_solver++:order=2,multistep=false,update=paper",
        "dpm_solver++:order=2,multistep=false,update=heun",
        "dpm_solver++:order=3,multistep=false,update=paper",
        "dpm_solver++:order=3,multistep=false,update=exact",
        "dpm_solver++:order=2,multistep=false,stages=grid",
        "dpm_solver++:order=3,multistep=false,stages=grid",
    ]
    c += [f"dpm_solver:order={o},multistep=true,update={v}" for o in (2, 3) for v in ("paper", "exact")]
    c += ["dpm_solver:order=2", "dpm_solver:order=3", "dpm_solver:order=3,update=exact"]
    c += ["dpm_solver_fast:order=2", "dpm_solver_fast:order=3"]
    c += [f"deis:method={v},order={o}" for v in ("tab", "rhoab", "logrho") for o in (2, 3)]
    c += [f"deis:method=rhork,tableau={t}" for t in ("heun", "kutta3", "rk4")]
    c += [
        f"unipc:predictor_order={o},b_h={v},lower_order_final={lof}"
        for o in (2, 3)
        for v in ("bh1", "bh2")
        for lof in ("false", "true")
    ]
    c += [f"unipc:predictor_order={o},b_h={v},prediction=eps" for o in (2, 3) for v in ("bh1", "bh2")]
    c += [
        "unipc:predictor_order=1,b_h=bh1",
        "unipc:predictor_order=1,b_h=bh2",
        "unipc:predictor_order=2,disable_corrector=true",
        "unipc:predictor_order=3,disable_corrector=true",
    ]
    c += ["pndm:warmup=heun", "pndm:warmup=rk4", "plms", "ipndm:ab_order=2", "ipndm:ab_order=3", "ipndm:ab_order=4"]
    return c


#: our configurations whose grid is optimised (the top of the fixed-grid ranking at NFE 10-20 and the new UniPC
#: default); see :func:`run_optimised`
OPTIMISED_CONFIGS = (
    "ipndm:ab_order=3",
    "deis:method=logrho,order=3",
    "unipc:predictor_order=2,b_h=bh1,prediction=eps",
    "unipc:predictor_order=3",
)

PRECISION_CONFIGS = (
    "ddim",
    "heun:variable=sigma",
    "dpm_solver++:order=2,multistep=true",
    "dpm_solver++:order=3,multistep=true",
    "unipc:predictor_order=3,b_h=bh2",
    "deis:order=3",
    "ipndm:ab_order=4",
)


@dataclass(frozen=True)
class DiffusersConfig:
    """One diffusers scheduler configuration: class, options, the grid label, what it returns and in which space
    its state lives (``vp``: ``x_t``; ``ve``: ``x_t/alpha``; ``edm``: EDM's ``x``)."""

    cls: str
    kwargs: tuple
    grid: str
    output: str
    space: str = "vp"

    @property
    def label(self) -> str:
        short = self.cls.replace("Scheduler", "")
        return f"{short}({', '.join(f'{k}={v}' for k, v in self.kwargs)})"


def _dc(cls: str, grid: str, output: str, space: str = "vp", **kw) -> DiffusersConfig:
    return DiffusersConfig(cls, tuple(kw.items()), grid, output, space)


#: diffusers grid options: label -> scheduler keywords
_VP_SPACINGS = {
    "linspace": dict(timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading"),
    "leading+1": dict(timestep_spacing="leading", steps_offset=1),
    "trailing": dict(timestep_spacing="trailing"),
}
_SIGMAS = {"karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True)}
#: (final_sigmas_type, lower_order_final) pairs; "zero" with lower_order_final=False is rewritten by diffusers itself
_FINALS = (("zero", True), ("sigma_min", True), ("sigma_min", False))


def _vp_grids(*names):
    table = {**_VP_SPACINGS, **_SIGMAS, "lu": dict(use_lu_lambdas=True)}
    return [(n, table[n]) for n in names]


def diffusers_configs(schedule: str, quick: bool = False) -> list[DiffusersConfig]:
    """The diffusers sweep for a schedule (``quick``: a handful)."""
    if schedule == "edm":
        if quick:
            return [
                _dc(
                    "EDMDPMSolverMultistepScheduler",
                    "karras",
                    "state",
                    "edm",
                    solver_order=2,
                    final_sigmas_type="sigma_min",
                ),
                _dc("EDMEulerScheduler", "karras", "x0", "edm", final_sigmas_type="zero"),
            ]
        out = [
            _dc("EDMEulerScheduler", s, "x0" if f == "zero" else "state", "edm", sigma_schedule=s, final_sigmas_type=f)
            for s in ("karras", "exponential")
            for f in ("zero", "sigma_min")
        ]
        out += [
            _dc(
                "EDMDPMSolverMultistepScheduler",
                s,
                "x0" if f == "zero" else "state",
                "edm",
                solver_order=o,
                solver_type=st,
                sigma_schedule=s,
                final_sigmas_type=f,
                lower_order_final=lof,
            )
            for o in (2, 3)
            for st in ("midpoint", "heun")
            for s in ("karras", "exponential")
            for f, lof in _FINALS
        ]
        return out
    if quick:
        return [
            _dc("DDIMScheduler", "trailing", "state", timestep_spacing="trailing", set_alpha_to_one=False),
            _dc(
                "DPMSolverMultistepScheduler",
                "karras",
                "state",
                solver_order=2,
                use_karras_sigmas=True,
                final_sigmas_type="sigma_min",
            ),
            _dc(
                "UniPCMultistepScheduler",
                "karras",
                "x0",
                solver_order=3,
                use_karras_sigmas=True,
                final_sigmas_type="zero",
            ),
        ]
    out = []
    for g, kw in _vp_grids("linspace", "leading", "leading+1", "trailing"):
        out += [_dc("DDIMScheduler", g, "x0" if one else "state", set_alpha_to_one=one, **kw) for one in (False, True)]
        out += [
            _dc("PNDMScheduler", g, "state", skip_prk_steps=skip, set_alpha_to_one=False, **kw)
            for skip in (True, False)
        ]
    for g, kw in _vp_grids("linspace", "leading", "trailing", "karras", "exponential", "lu"):
        out += [
            _dc(
                "DPMSolverMultistepScheduler",
                g,
                "x0" if f == "zero" else "state",
                algorithm_type=a,
                solver_order=o,
                solver_type=st,
                final_sigmas_type=f,
                lower_order_final=lof,
                **kw,
            )
            for a in ("dpmsolver++", "dpmsolver")
            for o in (2, 3)
            for st in ("midpoint", "heun")
            for f, lof in _FINALS
            if not (a == "dpmsolver" and f == "zero")
        ]  # diffusers refuses that pair
    for g, kw in [("linspace", {})] + _vp_grids("karras", "exponential"):
        out += [
            _dc(
                "DPMSolverSinglestepScheduler",
                g,
                "x0" if f == "zero" else "state",
                algorithm_type=a,
                solver_order=o,
                solver_type=st,
                final_sigmas_type=f,
                lower_order_final=lof,
                **kw,
            )
            for a in ("dpmsolver++", "dpmsolver")
            for o in (2, 3)
            for st in ("midpoint", "heun")
            for f, lof in _FINALS
            if not (a == "dpmsolver" and f == "zero")
        ]  # diffusers refuses that pair
    grids = _vp_grids("linspace", "leading", "trailing", "karras", "exponential")
    for g, kw in grids:
        out += [
            _dc(
                "UniPCMultistepScheduler",
                g,
                "x0" if f == "zero" else "state",
                solver_type=st,
                solver_order=o,
                final_sigmas_type=f,
                lower_order_final=lof,
                **({} if x0 else {"predict_x0": False}),
                **kw,
            )
            for st in ("bh1", "bh2")
            for o in (2, 3)
            for f, lof in _FINALS
            for x0 in (True, False)
        ]
        out += [
            _dc("DEISMultistepScheduler", g, "state", solver_order=o, lower_order_final=lof, **kw)
            for o in (2, 3)
            for lof in (True, False)
        ]
        out += [
            _dc("EulerDiscreteScheduler", g, "x0" if f == "zero" else "state", "ve", final_sigmas_type=f, **kw)
            for f in ("zero", "sigma_min")
        ]
        out.append(_dc("HeunDiscreteScheduler", g, "x0", "ve", **kw))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    problems: tuple = ("ring", "gmm64")
    schedules: tuple = ("vp-discrete", "edm")
    nfe: tuple = (5, 10, 20, 50)
    target_nfe: tuple = (10, 20)
    grids: tuple = GRIDS
    batch: tuple = (("ring", 512), ("gmm64", 128))
    rtol: float = 1e-10
    seed: int = 0
    ours: tuple = field(default_factory=lambda: tuple(our_configs()))
    precision_configs: tuple = PRECISION_CONFIGS
    precision_nfe: tuple = (10, 50)
    precision_grid: str = "logsnr"
    quick: bool = False
    diffusers: bool = True
    #: optimised grids: configurations, NFE, pilot batch per problem, pilot seed (the optimiser's own held-out
    #: validation batch uses ``opt_seed + 1``), the validation batch size, search limits and reference tolerance
    opt_configs: tuple = OPTIMISED_CONFIGS
    opt_nfe: tuple = (10, 20)
    opt_pilot: tuple = (("ring", 512), ("gmm64", 256))
    opt_seed: int = 1000
    opt_heldout: int = 256
    opt_max_evals: int = 150
    opt_min_step: float = 0.05
    opt_rtol: float = 1e-9

    def __post_init__(self):
        if self.seed in (self.opt_seed, self.opt_seed + 1):
            raise ValueError("the pilot / optimiser held-out seeds must differ from the evaluation seed")

    def n(self, problem: str) -> int:
        return dict(self.batch)[problem]

    def opt_budgets(self) -> list[int]:
        """Budgets whose grid is optimised: every ``opt_nfe`` (``state``) and ``opt_nfe - 1`` (``x0``)."""
        return sorted({b for n in self.opt_nfe for b in (n, n - 1) if b >= 1})

    def budgets(self) -> list[int]:
        """Our budgets: every NFE, and NFE - 1 (the ``x0`` output spends one evaluation on the denoising)."""
        return sorted({b for n in self.nfe for b in (n, n - 1) if b >= 1})


def quick_settings() -> Settings:
    return Settings(
        problems=("ring",),
        nfe=(10,),
        target_nfe=(10,),
        grids=("logsnr", "karras"),
        batch=(("ring", 64),),
        ours=("ddim", "dpm_solver++:order=2,multistep=true", "unipc:predictor_order=3"),
        precision_configs=("ddim",),
        precision_nfe=(10,),
        quick=True,
        opt_configs=("unipc:predictor_order=3",),
        opt_nfe=(10,),
        opt_pilot=(("ring", 32),),
        opt_heldout=16,
        opt_max_evals=24,
    )


# ---------------------------------------------------------------------------------------------------------------------
# problems and references
# ---------------------------------------------------------------------------------------------------------------------


def vp_discrete_schedule() -> VPDiscrete:
    """DDPM linear betas, 1000 steps, ``alphas_cumprod`` accumulated in float32 as diffusers does."""
    betas = torch.linspace(VP_CONFIG["beta_start"], VP_CONFIG["beta_end"], N_TRAIN, dtype=torch.float32)
    return VPDiscrete(alphas_cumprod=torch.cumprod(1.0 - betas, dim=0).double())


def make_problem(name: str, schedule: str) -> Problem:
    """A registry problem; ``vp-discrete`` with diffusers' float32-accumulated table (module docstring)."""
    entry = PROBLEMS[name]
    sch = vp_discrete_schedule() if schedule == "vp-discrete" else schedule
    p = Problem(name, entry.make(), sch, description=entry.description)
    p.schedule_name = schedule
    return p


def start_states(problem: Problem, n: int, seed: int) -> torch.Tensor:
    return problem.start(n, torch.Generator().manual_seed(seed))


def _key(t: float) -> float:
    return round(float(t), 12)


def _tvec(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), float(t), dtype=torch.float64)


def denoise(problem: Problem, x: torch.Tensor, t: float) -> torch.Tensor:
    """The exact data prediction ``D(x, t)`` (float64)."""
    x = x.to(torch.float64)
    return problem.model().predict(x, _tvec(t, x.shape[0]), "x0")


def reference(problem: Problem, x_T: torch.Tensor, times, rtol: float) -> tuple[dict, dict]:
    """The PF-ODE states at every time in ``times`` (and ``t_max``, ``t_min``) from ``x_T`` at ``t_max``, keyed by
    :func:`_key`, and a dict describing the reference (its error estimated by a solve at ``100 rtol``)."""
    ts = sorted({_key(t) for t in times} | {_key(problem.t_start), _key(problem.t_end)}, reverse=True)
    ts[0], ts[-1] = problem.t_start, problem.t_end
    grid = torch.tensor(ts, dtype=torch.float64)
    t0 = time.perf_counter()
    model = problem.model()
    tight = probability_flow_reference(model, x_T, grid, rtol=rtol, atol=rtol)
    loose = probability_flow_reference(problem.model(), x_T, grid, rtol=100 * rtol, atol=100 * rtol)
    est = max(rms_error(a, b) for a, b in zip(tight[1:], loose[1:]))
    info = {
        "method": "dopri5",
        "rtol": rtol,
        "atol": rtol,
        "times": len(ts),
        "nfe": model.nfe,
        "error_estimate": est,
        "seconds": time.perf_counter() - t0,
    }
    return {_key(t): tight[i] for i, t in enumerate(ts)}, info


# ---------------------------------------------------------------------------------------------------------------------
# our runs
# ---------------------------------------------------------------------------------------------------------------------


def _errors(x: torch.Tensor, target: torch.Tensor) -> dict:
    if not bool(torch.isfinite(x).all()):
        return {"error": None, "error_median": None, "failed": "non-finite output"}
    return {"error": rms_error(x, target), "error_median": median_error(x, target)}


def _our_solve(problem: Problem, spec, grid: str, budget: int, x_T: torch.Tensor, model: Model | None = None):
    """One run of ours at an NFE budget: ``(SampleResult, steps)``, or ``(None, 0)`` if the budget is too small."""
    model = problem.model() if model is None else model
    if spec.name == "dpm_solver_fast":
        try:
            solver = DPMSolverFast(nfe=budget, grid=grid, **spec.options)
        except ValueError:
            return None, 0
        return sample(model, x_T, solver=solver), len(solver.orders)
    solver = spec.build()
    steps = steps_for_nfe(solver, budget)
    if steps == 0:
        return None, 0
    return sample(model, x_T, solver=solver, steps=steps, grid=grid), steps


def _targets(problem: Problem, ref: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference state at ``t_min`` and its exact data prediction (the ``state`` and ``x0`` targets)."""
    state = ref[_key(problem.t_end)]
    return state, denoise(problem, state, problem.t_end)


def _records(
    problem: Problem, base: dict, res, steps: int, budget: int, fail: str | None, targets, want_state, want_x0
) -> list[dict]:
    """The ``state`` record of a run at ``budget`` (if wanted) and its ``x0`` record at ``budget + 1`` (the run,
    then the exact denoising at ``t_min``; if wanted)."""
    out = []
    if budget in want_state:
        rec = {**base, "output": "state", "nfe_budget": budget, "steps": steps}
        rec.update(
            {"nfe": res.nfe, **_errors(res.x, targets[0])}
            if res is not None
            else {"nfe": None, "error": None, "error_median": None, "failed": fail}
        )
        out.append(rec)
    if budget in want_x0:
        rec = {**base, "output": "x0", "nfe_budget": budget + 1, "steps": steps}
        if res is not None and bool(torch.isfinite(res.x).all()):
            rec.update({"nfe": res.nfe + 1, **_errors(denoise(problem, res.x, problem.t_end), targets[1])})
        else:
            rec.update({"nfe": None, "error": None, "error_median": None, "failed": fail or "non-finite output"})
        out.append(rec)
    return out


def _base(problem: Problem, spec, grid: str) -> dict:
    return dict(
        library="ours",
        problem=problem.name,
        schedule=problem.schedule_name,
        config=spec.label,
        family=spec.name,
        grid=grid,
        t_start=problem.t_start,
        t_end=problem.t_end,
        eligible=True,
    )


def run_ours(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings) -> list[dict]:
    """Every configuration x grid x budget; ``state`` records at each NFE and ``x0`` records (run at NFE - 1, then
    the exact denoising at ``t_min``)."""
    targets = _targets(problem, ref)
    want_state, want_x0 = set(settings.nfe), {n - 1 for n in settings.nfe}
    out = []
    for text in settings.ours:
        spec = parse_solver_spec(text)
        for grid in settings.grids:
            for budget in settings.budgets():
                try:
                    res, steps = _our_solve(problem, spec, grid, budget, x_T)
                except (ValueError, FloatingPointError, RuntimeError) as e:
                    res, steps, fail = None, 0, f"{type(e).__name__}: {e}"
                else:
                    fail = None
                if res is None and fail is None:
                    continue  # the budget is too small for this solver
                out += _records(
                    problem, _base(problem, spec, grid), res, steps, budget, fail, targets, want_state, want_x0
                )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# our runs on optimised grids
# ---------------------------------------------------------------------------------------------------------------------


class PilotProblem(Problem):
    """The benchmark problem with its torchdiffeq reference at ``t_min`` memoised and exposed as the "exact flow",
    so that :func:`~sde_diffusion.studies.grid_optimizer.optimise_grid` computes the pilot (and its held-out)
    reference once per batch instead of once per call."""

    def __init__(self, problem: Problem, rtol: float):
        super().__init__(problem.name, problem.data, problem.schedule, description=problem.description)
        self.schedule_name, self.rtol, self._memo = problem.schedule_name, rtol, []

    @property
    def has_exact_flow(self) -> bool:
        return True

    def exact_flow(self, x: torch.Tensor, t_from: float | None = None, t_to: float | None = None) -> torch.Tensor:
        if (t_from, t_to) != (None, None):
            raise ValueError("PilotProblem only maps t_max -> t_min")
        for xs, ref in self._memo:
            if xs.shape == x.shape and torch.equal(xs, x):
                return ref.clone()
        ts = torch.tensor([self.t_start, self.t_end], dtype=torch.float64)
        ref = probability_flow_reference(self.model(), x, ts, rtol=self.rtol, atol=self.rtol)[-1]
        self._memo.append((x.clone(), ref))
        return ref.clone()


def run_optimised(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings, config: str) -> list[dict]:
    """One configuration on grids optimised by :func:`~sde_diffusion.studies.grid_optimizer.optimise_grid`, at each
    budget of :meth:`Settings.opt_budgets`, evaluated on the benchmark batch ``x_T`` exactly like the fixed grids.

    Honest hold-out: everything the optimiser sees is a *pilot* batch drawn from ``opt_seed`` (its own held-out
    check from ``opt_seed + 1``), never ``x_T`` (``seed``). The search starts from the fixed grid of
    :data:`Settings.grids` with the smallest pilot error (chosen on the pilot too) and minimises the RMS state error
    at ``t_min`` for the budget's number of steps; the ``x0`` record at NFE ``n`` uses the grid optimised for the
    state at budget ``n - 1`` (then the exact denoising, one evaluation), as the fixed-grid ``x0`` runs do.
    The optimised grid is kept only if it also lowers the error on the optimiser's own held-out (validation) batch
    (``opt_seed + 1``); otherwise the run uses the start grid (``accepted = False``): on ``gmm64`` the RMS error is
    set by the few samples near a component boundary, and a grid fitted to a pilot batch can move another batch's
    samples across one.
    """
    spec, pilot = parse_solver_spec(config), PilotProblem(problem, settings.opt_rtol)
    n_pilot = dict(settings.opt_pilot)[problem.name]
    xp = start_states(problem, n_pilot, settings.opt_seed)
    rp = pilot.exact_flow(xp)
    targets = _targets(problem, ref)
    want_state, want_x0 = set(settings.opt_nfe), {n - 1 for n in settings.opt_nfe}
    out = []
    for budget in settings.opt_budgets():
        steps = steps_for_nfe(spec.build(), budget)
        if steps < 2:
            continue  # nothing to optimise
        pilot_err = {}
        for g in settings.grids:
            e = rms_error(sample(problem.model(), xp, solver=spec.build(), steps=steps, grid=g).x, rp)
            pilot_err[g] = e if math.isfinite(e) else math.inf
        init = min(pilot_err, key=pilot_err.get)
        t0 = time.perf_counter()
        opt = optimise_grid(
            pilot,
            config,
            budget,
            init=init,
            pilot=n_pilot,
            heldout=settings.opt_heldout,
            seed=settings.opt_seed,
            reference="exact",
            min_step=settings.opt_min_step,
            max_evals=settings.opt_max_evals,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        accepted = opt.heldout_error < opt.heldout_error_init
        res_init = sample(problem.model(), x_T, solver=spec.build(), steps=steps, grid=init)
        res = sample(problem.model(), x_T, solver=spec.build(), steps=steps, grid=opt.grid) if accepted else res_init
        base = {
            **_base(problem, spec, "optimised"),
            "init_grid": init,
            "pilot_seed": settings.opt_seed,
            "pilot_n": n_pilot,
            "pilot_error_init": opt.pilot_error_init,
            "pilot_error": opt.pilot_error,
            "opt_heldout_error_init": opt.heldout_error_init,
            "opt_heldout_error": opt.heldout_error,
            "opt_evaluations": opt.evaluations,
            "opt_seconds": seconds,
            "accepted": accepted,
            "grid_times": (opt.grid if accepted else opt.init_grid).tolist(),
        }
        recs = _records(problem, base, res, steps, budget, None, targets, want_state, want_x0)
        init_recs = _records(problem, base, res_init, steps, budget, None, targets, want_state, want_x0)
        for r, ri in zip(recs, init_recs):
            r["error_init_grid"], r["error_median_init_grid"] = ri["error"], ri["error_median"]
        out += recs
    return out


def run_precision(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings) -> list[dict]:
    """Network output cast to each of :data:`MODEL_DTYPES` and back to float32 (float32 state), against the float64
    run of the same configuration."""
    base_fn = problem.model().fn
    target = ref[_key(problem.t_end)]
    out = []
    for text in settings.precision_configs:
        spec = parse_solver_spec(text)
        for budget in settings.precision_nfe:
            res64, steps = _our_solve(problem, spec, settings.precision_grid, budget, x_T)
            if res64 is None:
                continue
            for name in MODEL_DTYPES:
                dt = getattr(torch, name)

                def fn(x, t, dt=dt):
                    return base_fn(x.double(), t.double()).to(dt).to(torch.float32)

                model = Model(fn, problem.schedule, "eps")
                res = _our_solve(problem, spec, settings.precision_grid, budget, x_T.float(), model)[0]
                out.append(
                    dict(
                        problem=problem.name,
                        schedule=problem.schedule_name,
                        config=spec.label,
                        grid=settings.precision_grid,
                        nfe_budget=budget,
                        nfe=res.nfe,
                        model_dtype=name,
                        state_dtype="float32",
                        error_vs_float64=rms_error(res.x, res64.x),
                        median_vs_float64=median_error(res.x, res64.x),
                        solver_error=rms_error(res64.x, target),
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def diffusers_version() -> str | None:
    try:
        import diffusers
    except Exception:  # pragma: no cover - optional dependency
        return None
    return diffusers.__version__


def _make_scheduler(cfg: DiffusersConfig):
    import diffusers

    base = {} if cfg.space == "edm" else VP_CONFIG
    with _quiet():
        return getattr(diffusers, cfg.cls)(**base, **dict(cfg.kwargs))


@dataclass
class DiffusersPlan:
    """A configuration at a budget: steps, the start time, the output's time and whether that is ``t_min``."""

    cfg: DiffusersConfig
    budget: int
    steps: int
    nfe: int
    t_start: float
    t_out: float
    at_t_min: bool


def _snap(t: float, problem: Problem) -> float:
    """EDM's float32 sigma table: the end points diffusers means are ``sigma_min``/``sigma_max`` exactly."""
    for ref in (problem.t_start, problem.t_end):
        if abs(t / ref - 1.0) < 1e-6:
            return ref
    return t


def _time_of(cfg: DiffusersConfig, sched, i: int, problem: Problem) -> float:
    """Our time of diffusers' ``i``-th model call: ``(k + 1)/N`` for DDPM timesteps, ``sigma`` for EDM."""
    if cfg.space == "edm":
        return _snap(float(sched.sigmas[i]), problem)
    return (float(sched.timesteps[i]) + 1.0) / N_TRAIN


def plan_diffusers(cfg: DiffusersConfig, budget: int, problem: Problem) -> DiffusersPlan | None:
    """The largest ``num_inference_steps`` whose number of model calls fits ``budget`` (``None`` if none)."""
    for steps in range(budget, 0, -1):
        sched = _make_scheduler(cfg)
        with _quiet():
            sched.set_timesteps(steps)
        calls = len(sched.timesteps)
        if calls <= budget:
            t_out = problem.t_end if cfg.output == "state" else _time_of(cfg, sched, calls - 1, problem)
            return DiffusersPlan(
                cfg,
                budget,
                steps,
                calls,
                _time_of(cfg, sched, 0, problem),
                t_out,
                abs(t_out / problem.t_end - 1.0) < 1e-9,
            )
    return None


def _diffusers_loop(plan: DiffusersPlan, problem: Problem, x_start: torch.Tensor) -> torch.Tensor:
    """Run one diffusers scheduler on the exact network; returns its final state in our variables."""
    cfg, model, n = plan.cfg, problem.model(), x_start.shape[0]
    sched = _make_scheduler(cfg)
    with _quiet():
        sched.set_timesteps(plan.steps)
    x = x_start / problem.schedule.alpha(plan.t_start) if cfg.space == "ve" else x_start.clone()
    for k in sched.timesteps:
        xin = sched.scale_model_input(x, k)
        if cfg.space == "edm":
            sigma = sched.sigmas[sched.step_index]
            d = model.predict(x, _tvec(_snap(float(sigma), problem), n), "x0")
            skip = sched.precondition_outputs(x, torch.zeros_like(x), sigma)  # c_skip x
            c_out = sched.precondition_outputs(torch.zeros_like(x), torch.ones_like(x), sigma)
            out = (d - skip) / c_out
        else:
            out = model.predict(xin, _tvec((float(k) + 1.0) / N_TRAIN, n), "eps")
        with _quiet():
            x = sched.step(out, k, x).prev_sample
    if cfg.space == "ve" and cfg.output == "state":
        x = x * problem.schedule.alpha(problem.t_end)
    return x


def run_diffusers_one(plan: DiffusersPlan, problem: Problem, ref: dict) -> dict:
    """One diffusers run; float64 state and default dtype where diffusers allows it, else float32 defaults."""
    cfg = plan.cfg
    target = ref[_key(problem.t_end)] if cfg.output == "state" else denoise(problem, ref[_key(plan.t_out)], plan.t_out)
    rec = dict(
        library="diffusers",
        problem=problem.name,
        schedule=problem.schedule_name,
        config=cfg.label,
        family=cfg.cls,
        grid=cfg.grid,
        output=cfg.output,
        nfe_budget=plan.budget,
        nfe=plan.nfe,
        steps=plan.steps,
        t_start=plan.t_start,
        t_end=plan.t_out,
        eligible=plan.at_t_min,
        state_dtype="float32 (rounded in step)" if cfg.cls in ROUNDS_STATE else "float64",
    )
    x_start = ref[_key(plan.t_start)]
    for dtype in (torch.float64, torch.float32):
        try:
            with _default_dtype(dtype):
                x = _diffusers_loop(plan, problem, x_start)
        except RuntimeError as e:  # e.g. UniPC mixes float32 sigmas with default-dtype tensors in linalg.solve
            if dtype == torch.float32:
                rec.update(error=None, error_median=None, failed=f"RuntimeError: {e}")
                return rec
            continue
        rec["default_dtype"] = str(dtype)[6:]
        rec.update(_errors(x, target))
        if cfg.output == "x0" and rec["error"] is not None:  # distance to the denoised exact state at t_min
            rec["error_vs_t_min"] = rms_error(x, denoise(problem, ref[_key(problem.t_end)], problem.t_end))
        return rec
    return rec


def diffusers_plans(problem: Problem, settings: Settings) -> tuple[list[DiffusersPlan], list[dict]]:
    plans, skipped = [], []
    for cfg in diffusers_configs(problem.schedule_name, settings.quick):
        for budget in settings.nfe:
            try:
                p = plan_diffusers(cfg, budget, problem)
            except Exception as e:  # invalid option combination for this diffusers version
                skipped.append({"config": cfg.label, "nfe_budget": budget, "reason": f"{type(e).__name__}: {e}"})
                continue
            if p is None:
                skipped.append({"config": cfg.label, "nfe_budget": budget, "reason": "budget too small"})
            else:
                plans.append(p)
    return plans, skipped


def check_vp_table() -> bool:
    """diffusers' ``alphas_cumprod`` equals our vp-discrete table (float64 of the same float32 numbers)."""
    import diffusers

    ours = vp_discrete_schedule().alphas_cumprod
    theirs = diffusers.DDPMScheduler(**VP_CONFIG).alphas_cumprod.double()
    return bool(torch.allclose(ours, theirs, rtol=1e-13, atol=0))


# ---------------------------------------------------------------------------------------------------------------------
# the units of work (one process each)
# ---------------------------------------------------------------------------------------------------------------------


def _setup_worker():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except Exception:  # pragma: no cover - optional dependency
        pass


def unit_reference(problem_name: str, schedule: str, settings: Settings) -> dict:
    _setup_worker()
    problem = make_problem(problem_name, schedule)
    x_T = start_states(problem, settings.n(problem_name), settings.seed)
    times = []
    if settings.diffusers and diffusers_version() is not None:
        plans, _ = diffusers_plans(problem, settings)
        times = [t for p in plans for t in (p.t_start, p.t_out)]
    ref, info = reference(problem, x_T, times, settings.rtol)
    return {"ref": ref, "info": info}


def unit_part(problem_name: str, schedule: str, part: str, ref: dict, settings: Settings) -> dict:
    _setup_worker()
    t0 = time.perf_counter()
    problem = make_problem(problem_name, schedule)
    x_T = start_states(problem, settings.n(problem_name), settings.seed)
    out: dict = {"runs": [], "precision": [], "skipped": []}
    if part == "ours":
        out["runs"] = run_ours(problem, x_T, ref, settings)
    elif part.startswith("optimised:"):
        out["runs"] = run_optimised(problem, x_T, ref, settings, part.split(":", 1)[1])
    elif part == "precision":
        out["precision"] = run_precision(problem, x_T, ref, settings)
    else:
        plans, out["skipped"] = diffusers_plans(problem, settings)
        out["runs"] = [run_diffusers_one(p, problem, ref) for p in plans]
    out["seconds"] = time.perf_counter() - t0
    return out


class _Ready:
    """An already computed result with a future's ``result()`` (the in-process path, ``jobs=1``)."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def run_benchmark(settings: Settings, jobs: int = 1, log=print) -> dict:
    """Run everything (``jobs`` worker processes) and return the JSON-ready result."""
    t0 = time.perf_counter()
    version = diffusers_version() if settings.diffusers else None
    settings = Settings(**{**settings.__dict__, "diffusers": version is not None})
    units = [(p, s) for p in sorted(settings.problems, key=lambda p: p != "gmm64") for s in settings.schedules]
    parts = ["ours", *(f"optimised:{c}" for c in settings.opt_configs), "precision"] + (
        ["diffusers"] if settings.diffusers else []
    )
    pool = ProcessPoolExecutor(jobs) if jobs > 1 else None

    def submit(fn, *args):
        return _Ready(fn(*args)) if pool is None else pool.submit(fn, *args)

    try:
        refs = {u: submit(unit_reference, *u, settings) for u in units}
        refs = {u: f.result() for u, f in refs.items()}
        log(f"references done ({time.perf_counter() - t0:.1f} s)")
        futs = {(u, part): submit(unit_part, *u, part, refs[u]["ref"], settings) for u in units for part in parts}
        done = {k: f.result() for k, f in futs.items()}
    finally:
        if pool is not None:
            pool.shutdown()
    runs, precision, skipped, problems, seconds = [], [], [], [], {}
    for u in units:
        problem = make_problem(*u)
        problems.append(
            {
                "problem": u[0],
                "schedule": u[1],
                "description": problem.description,
                "dim": problem.dim,
                "n": settings.n(u[0]),
                "t_start": problem.t_start,
                "t_end": problem.t_end,
                "reference": refs[u]["info"],
            }
        )
        for part in parts:
            r = done[(u, part)]
            runs += r["runs"]
            precision += r["precision"]
            skipped += [{"problem": u[0], "schedule": u[1], **s} for s in r["skipped"]]
            seconds[f"{u[0]}/{u[1]}/{part}"] = r["seconds"]
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in settings.__dict__.items()
            if k not in ("ours", "batch", "opt_pilot")
        }
        | {"batch": dict(settings.batch), "ours": list(settings.ours), "opt_pilot": dict(settings.opt_pilot)},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": version,
            "platform": platform.platform(),
            "jobs": jobs,
            "cpus": os.cpu_count(),
            "vp_table_matches_diffusers": check_vp_table() if version else None,
        },
        "problems": problems,
        "runs": runs,
        "precision": precision,
        "diffusers_skipped": skipped,
    }
    result["summary"] = summarise(result)
    result["timing"] = {"total_s": time.perf_counter() - t0, "parts_s": seconds}
    return result


# ---------------------------------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------------------------------


def _ok(r: dict) -> bool:
    e = r.get("error")
    return e is not None and math.isfinite(e)


def _cells(result: dict):
    return [(p["problem"], p["schedule"]) for p in result["problems"]]


def fixed(runs: list[dict]) -> list[dict]:
    """The runs on fixed (named) grids: everything but the optimised-grid runs."""
    return [r for r in runs if r["grid"] != "optimised"]


def best_runs(runs: list[dict], library: str) -> dict:
    """``(problem, schedule, output, nfe) -> best eligible run`` of a library (smallest RMS error)."""
    best: dict = {}
    for r in runs:
        if r["library"] != library or not r["eligible"] or not _ok(r):
            continue
        k = (r["problem"], r["schedule"], r["output"], r["nfe_budget"])
        if k not in best or r["error"] < best[k]["error"]:
            best[k] = r
    return best


def _geo(xs) -> float:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan


def _short(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {
        k: r.get(k)
        for k in ("config", "grid", "error", "error_median", "nfe", "steps", "t_start", "state_dtype", "default_dtype")
        if k in r
    }


def _regrets(runs: list[dict], output: str, metric: str = "error") -> dict:
    """``(config, grid) -> {(problem, schedule, output, nfe): metric / best metric of ours in that cell}``."""
    best: dict = {}
    for r in runs:
        if r["library"] == "ours" and r["output"] == output and _ok(r):
            k = (r["problem"], r["schedule"], output, r["nfe_budget"])
            best[k] = min(best.get(k, math.inf), r[metric])
    ratios: dict = defaultdict(dict)
    for r in runs:
        k = (r["problem"], r["schedule"], output, r["nfe_budget"])
        if r["library"] == "ours" and r["output"] == output and k in best:
            ratios[(r["config"], r["grid"])][k] = r[metric] / best[k] if _ok(r) else math.inf
    return ratios


def _regret(v: dict, need: set) -> tuple[float, float] | None:
    """Geometric mean and maximum of the ratios over the cells ``need`` (``None`` if one is missing)."""
    if not need <= set(v):
        return None
    xs = [v[k] for k in need]
    return (_geo(xs) if all(math.isfinite(x) for x in xs) else math.inf), max(xs)


def rank_ours(runs: list[dict], cells, output: str, nfes, metric: str = "error") -> list[dict]:
    """Our (config, grid) pairs ranked by the geometric mean over ``cells x nfes`` of ``metric / best metric of ours
    in that cell`` (1 = best everywhere; ``metric`` is ``"error"`` (RMS) or ``"error_median"``); a pair missing a
    cell is not ranked."""
    need = {(p, s, output, n) for p, s in cells for n in nfes}
    rows = []
    for (c, g), v in _regrets(runs, output, metric).items():
        reg = _regret(v, need)
        if reg is not None:
            rows.append({"config": c, "grid": g, "regret": reg[0], "worst": reg[1]})
    return sorted(rows, key=lambda r: (r["regret"], r["worst"]))


#: configurations compared in the "Recommended defaults" table (those present in a run are reported)
CANDIDATES = (
    "deis:method=logrho,order=3",
    "dpm_solver:order=3,multistep=true,update=exact",
    "ipndm:ab_order=3",
    "ipndm:ab_order=4",
    "unipc:predictor_order=2,b_h=bh1,prediction=eps",
    "unipc:predictor_order=3,b_h=bh2,prediction=eps",
    "unipc:predictor_order=2,b_h=bh2,lower_order_final=true",
    "unipc:predictor_order=3,b_h=bh2,lower_order_final=true",
    "dpm_solver++:order=2,multistep=true,update=paper,lower_order_final=true",
    "dpm_solver++:order=3,multistep=true,update=paper,lower_order_final=true",
    "heun:variable=sigma",
    "ddim",
)


def candidate_table(runs: list[dict], cells, nfes, output: str = "state", grids=("logsnr", "karras")) -> list[dict]:
    """For each candidate and grid: the RMS and median regrets (see :func:`rank_ours`) at each NFE separately."""
    reg = {m: _regrets(runs, output, m) for m in ("error", "error_median")}
    rows = []
    for c in CANDIDATES:
        for g in grids:
            row = {"config": c, "grid": g}
            for n in nfes:
                need = {(p, s, output, n) for p, s in cells}
                for m, key in (("error", "rms"), ("error_median", "median")):
                    got = _regret(reg[m].get((c, g), {}), need)
                    row[f"{key}_{n}"] = None if got is None else got[0]
            if any(v is not None for k, v in row.items() if k not in ("config", "grid")):
                rows.append(row)
    return rows


def lof_effect(runs: list[dict], grids=None) -> list[dict]:
    """Geometric mean of ``error(lower_order_final=true) / error(... = false)`` per family and NFE (same grid,
    problem, schedule, output; only ``grids`` if given)."""
    by = {}
    for r in runs:
        if (
            r["library"] == "ours"
            and _ok(r)
            and "lower_order_final=" in r["config"]
            and (grids is None or r["grid"] in grids)
        ):
            by[(r["config"], r["grid"], r["problem"], r["schedule"], r["output"], r["nfe_budget"])] = r["error"]
    acc: dict = defaultdict(list)
    for (c, g, p, s, o, n), e in by.items():
        if "lower_order_final=true" in c:
            other = by.get((c.replace("lower_order_final=true", "lower_order_final=false"), g, p, s, o, n))
            if other:
                acc[(c.split(":")[0] + ":" + c.split(":")[1].split(",")[0], n)].append(e / other)
    return [
        {"family": f, "nfe": n, "ratio_true_over_false": _geo(v), "cases": len(v)} for (f, n), v in sorted(acc.items())
    ]


def grid_wins(runs: list[dict]) -> list[dict]:
    """For each schedule and NFE: how often each grid is the best grid of a configuration (state output)."""
    best: dict = {}
    for r in runs:
        if r["library"] == "ours" and r["output"] == "state" and _ok(r):
            k = (r["config"], r["problem"], r["schedule"], r["nfe_budget"])
            if k not in best or r["error"] < best[k][1]:
                best[k] = (r["grid"], r["error"])
    count: dict = defaultdict(lambda: defaultdict(int))
    for (_, _, s, n), (g, _) in best.items():
        count[(s, n)][g] += 1
    return [
        {"schedule": s, "nfe": n, "wins": dict(sorted(c.items(), key=lambda kv: -kv[1]))}
        for (s, n), c in sorted(count.items())
    ]


#: diffusers' out-of-the-box choice: ``DPMSolverMultistepScheduler()`` (DPM-Solver++(2M), midpoint, "linspace",
#: ``final_sigmas_type="zero"``, ``lower_order_final=True``)
DIFFUSERS_DEFAULT = _dc(
    "DPMSolverMultistepScheduler",
    "linspace",
    "x0",
    algorithm_type="dpmsolver++",
    solver_order=2,
    solver_type="midpoint",
    final_sigmas_type="zero",
    lower_order_final=True,
    timestep_spacing="linspace",
)


def _lookup(runs: list[dict], library: str, config: str, grid: str) -> dict:
    return {
        (r["problem"], r["schedule"], r["output"], r["nfe_budget"]): r
        for r in runs
        if r["library"] == library and r["config"] == config and r["grid"] == grid
    }


def failures(runs: list[dict]) -> list[dict]:
    """Failed (non-finite or raising) runs grouped by library, family, grid and final-step option."""
    count: dict = defaultdict(lambda: [0, set(), ""])
    for r in runs:
        if r.get("failed"):
            final = next((f for f in ("final_sigmas_type=zero", "final_sigmas_type=sigma_min") if f in r["config"]), "")
            c = count[(r["library"], r["family"], r["grid"], final)]
            c[0] += 1
            c[1].add(r["nfe_budget"])
            c[2] = r["failed"][:80]
    return [
        {
            "library": k[0],
            "family": k[1],
            "grid": k[2],
            "final": k[3],
            "runs": v[0],
            "nfe": sorted(v[1]),
            "reason": v[2],
        }
        for k, v in sorted(count.items())
    ]


def optimised_table(runs: list[dict]) -> list[dict]:
    """Each optimised-grid run with the error of its starting (pilot-chosen fixed) grid on the evaluation batch."""
    keys = (
        "problem",
        "schedule",
        "output",
        "nfe_budget",
        "config",
        "init_grid",
        "pilot_n",
        "pilot_error_init",
        "pilot_error",
        "opt_heldout_error_init",
        "opt_heldout_error",
        "accepted",
        "opt_evaluations",
        "opt_seconds",
        "error_init_grid",
        "error",
        "error_median_init_grid",
        "error_median",
    )
    rows = [{k: r.get(k) for k in keys} for r in runs if r["grid"] == "optimised"]
    for r in rows:
        r["improvement"] = r["error_init_grid"] / r["error"] if r["error"] and r["error_init_grid"] else None
    return rows


def summarise(result: dict) -> dict:
    runs, settings = result["runs"], result["settings"]
    fixed_runs = fixed(runs)
    ours, ours_opt, theirs = best_runs(fixed_runs, "ours"), best_runs(runs, "ours"), best_runs(runs, "diffusers")
    cells = _cells(result)
    ranking = {
        out: {
            "target_nfe": rank_ours(fixed_runs, cells, out, settings["target_nfe"])[:15],
            "target_nfe_median": rank_ours(fixed_runs, cells, out, settings["target_nfe"], "error_median")[:8],
            **{f"nfe_{n}": rank_ours(fixed_runs, cells, out, (n,))[:5] for n in settings["nfe"]},
        }
        for out in ("state", "x0")
    }
    top = ranking["state"]["target_nfe"][0] if ranking["state"]["target_nfe"] else None
    top_runs = _lookup(runs, "ours", top["config"], top["grid"]) if top else {}
    dd_runs = _lookup(runs, "diffusers", DIFFUSERS_DEFAULT.label, DIFFUSERS_DEFAULT.grid)
    head = []
    for p, s in cells:
        for output in ("state", "x0"):
            for n in settings["nfe"]:
                k = (p, s, output, n)
                o, oo, d, t, dd = ours.get(k), ours_opt.get(k), theirs.get(k), top_runs.get(k), dd_runs.get(k)
                ratio = o["error"] / d["error"] if o and d else None
                ratio_opt = oo["error"] / d["error"] if oo and d else None
                target = n in settings["target_nfe"]
                head.append(
                    {
                        "problem": p,
                        "schedule": s,
                        "output": output,
                        "nfe": n,
                        "ours": _short(o),
                        "ours_optimised": _short(oo),
                        "diffusers": _short(d),
                        "ratio": ratio,
                        "ratio_optimised": ratio_opt,
                        "target_met": (ratio <= 0.5) if ratio is not None and target else None,
                        "target_met_optimised": (ratio_opt <= 0.5) if ratio_opt is not None and target else None,
                        "top_ranked": _short(t) if t and _ok(t) else None,
                        "top_ranked_ratio": t["error"] / d["error"] if t and _ok(t) and d else None,
                        "diffusers_default": (
                            {**_short(dd), "t_end": dd["t_end"], "error_vs_t_min": dd.get("error_vs_t_min")}
                            if dd and _ok(dd)
                            else None
                        ),
                    }
                )
    target = [h for h in head if h["target_met"] is not None]
    return {
        "headline": head,
        "target": {
            "criterion": "best of ours <= 0.5 x best of diffusers at NFE in target_nfe, per problem, "
            "schedule and output",
            "cells": len(target),
            "met": sum(bool(h["target_met"]) for h in target),
            "met_optimised": sum(bool(h["target_met_optimised"]) for h in target),
        },
        "ranking": ranking,
        "candidates": candidate_table(fixed_runs, cells, settings["nfe"]),
        "optimised": optimised_table(runs),
        "top_ranked": top,
        "lower_order_final": lof_effect(fixed_runs),
        "lower_order_final_logsnr": lof_effect(fixed_runs, ("logsnr",)),
        "grid_wins": grid_wins(fixed_runs),
        "failures": failures(runs),
    }


# ---------------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------------


def _e(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2e}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cfg(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"`{r['config']}` @ {r['grid']}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows
    ]


_MET = {True: "met", False: "**not met**", None: ""}


def _md_target(result: dict) -> list[str]:
    s, summ = result["settings"], result["summary"]
    lines = [
        "## Target cells",
        "",
        "Ratio = best of ours / best of diffusers (RMS), at NFE "
        + ", ".join(map(str, s["target_nfe"]))
        + "; fixed = our named grids only; optimised = also our grids optimised on a pilot batch (seed "
        f"{s['opt_seed']}, not the evaluation batch's seed {s['seed']}; see 'Optimised grids').",
        "",
    ]
    rows = [
        [
            h["problem"],
            h["schedule"],
            h["output"],
            h["nfe"],
            _ratio(h["ratio"]),
            _MET[h["target_met"]],
            _ratio(h["ratio_optimised"]),
            _MET[h["target_met_optimised"]],
            _cfg(h["ours_optimised"]) if h["ours_optimised"] != h["ours"] else "(fixed grid)",
        ]
        for h in summ["headline"]
        if h["target_met"] is not None
    ]
    return lines + _table(
        [
            "problem",
            "schedule",
            "output",
            "NFE",
            "ratio (fixed)",
            "target",
            "ratio (optimised)",
            "target",
            "best with optimised grids",
        ],
        rows,
    )


def _md_head(result: dict) -> list[str]:
    s, summ = result["settings"], result["summary"]
    top = summ["top_ranked"]
    lines = [
        "",
        "## Best of ours vs best of diffusers",
        "",
        "RMS error at the common end time (`state`: the state at `t_min`; `x0`: the data prediction at `t_min`), "
        "median over the batch in parentheses; ours = our best on a fixed grid; ratio = ours / diffusers, "
        "target <= 0.5 at NFE " + ", ".join(map(str, s["target_nfe"])) + "; ratio (opt.) = the same with our "
        "optimised-grid runs included."
        + (
            f" Top-ranked = our top-ranked configuration (`{top['config']}` @ {top['grid']}, see the ranking), "
            "its error and its ratio to diffusers' best."
            if top
            else ""
        )
        + f" diffusers default = `{DIFFUSERS_DEFAULT.label}`: its last evaluation (time in parentheses) is "
        "above t_min, so it is not eligible; shown is the distance of its output to the x0 target (the exact "
        "denoised state at t_min).",
        "",
    ]
    rows = []
    for h in summ["headline"]:
        o, d, t, dd = h["ours"], h["diffusers"], h["top_ranked"], h["diffusers_default"]
        rows.append(
            [
                h["problem"],
                h["schedule"],
                h["output"],
                h["nfe"],
                f"{_cfg(o)}: {_e(o and o['error'])} ({_e(o and o['error_median'])})",
                f"{_cfg(d)}: {_e(d and d['error'])} ({_e(d and d['error_median'])})",
                _ratio(h["ratio"]),
                _MET[h["target_met"]],
                _ratio(h["ratio_optimised"]),
                _MET[h["target_met_optimised"]],
                f"{_e(t and t['error'])} ({_ratio(h['top_ranked_ratio'])})",
                f"{_e(dd['error_vs_t_min'])} (t = {dd['t_end']:.3g})" if dd else "-",
            ]
        )
    return lines + _table(
        [
            "problem",
            "schedule",
            "output",
            "NFE",
            "ours: best fixed grid (error, median)",
            "diffusers: best (error, median)",
            "ratio",
            "target",
            "ratio (opt.)",
            "target (opt.)",
            "top-ranked (ratio)",
            "diffusers default",
        ],
        rows,
    )


def _md_optimised(result: dict) -> list[str]:
    s, rows = result["settings"], result["summary"]["optimised"]
    if not rows:
        return []
    pilot = ", ".join(f"{k} {v}" for k, v in s["opt_pilot"].items())
    lines = [
        "",
        "## Optimised grids",
        "",
        f"`optimise_grid` (coordinate descent on the interior lambda knots) on a pilot batch ({pilot} samples, "
        f"seed {s['opt_seed']}; evaluation batch seed {s['seed']}), at most {s['opt_max_evals']} pilot solves, "
        f"min_step {s['opt_min_step']}, pilot reference rtol {s['opt_rtol']:g}; started from the fixed grid with "
        f"the smallest pilot error, and kept only if it also lowers the error on a validation batch "
        f"({s['opt_heldout']} samples, seed {s['opt_seed'] + 1}; else the start grid is used: kept = no). The "
        "`x0` row at NFE n uses the grid optimised for the state at n - 1. Errors on the evaluation batch "
        "(RMS, median in parentheses): start grid -> optimised grid; gain = start / optimised; pilot and "
        "validation: RMS, start -> optimised.",
        "",
    ]
    return lines + _table(
        [
            "problem",
            "schedule",
            "output",
            "NFE",
            "configuration",
            "start grid",
            "error: start -> optimised",
            "gain",
            "pilot",
            "validation",
            "kept",
            "solves",
            "s",
        ],
        [
            [
                r["problem"],
                r["schedule"],
                r["output"],
                r["nfe_budget"],
                f"`{r['config']}`",
                r["init_grid"],
                f"{_e(r['error_init_grid'])} ({_e(r['error_median_init_grid'])}) -> {_e(r['error'])} "
                f"({_e(r['error_median'])})",
                _ratio(r["improvement"]),
                f"{_e(r['pilot_error_init'])} -> {_e(r['pilot_error'])}",
                f"{_e(r['opt_heldout_error_init'])} -> {_e(r['opt_heldout_error'])}",
                "yes" if r["accepted"] else "no",
                r["opt_evaluations"],
                f"{r['opt_seconds']:.1f}",
            ]
            for r in rows
        ],
    )


def _md_ranking(result: dict) -> list[str]:
    s, summ, lines = result["settings"], result["summary"], []
    nfes = ", ".join(map(str, s["target_nfe"]))
    for out in ("state", "x0"):
        rk = summ["ranking"][out]
        lines += [
            "",
            f"## Our configurations ranked ({out} output)",
            "",
            "Regret = geometric mean over problems x schedules x NFE of error / (best error of ours in that "
            "cell); worst = the largest such ratio.",
            "",
            f"By RMS error, NFE {nfes}:",
            "",
        ]
        lines += _table(
            ["rank", "configuration", "grid", "regret", "worst"],
            [
                [i + 1, f"`{r['config']}`", r["grid"], f"{r['regret']:.2f}", f"{r['worst']:.1f}"]
                for i, r in enumerate(rk["target_nfe"])
            ],
        )
        lines += [
            "",
            f"By median error, NFE {nfes}: "
            + "; ".join(f"`{r['config']}` @ {r['grid']} ({r['regret']:.2f})" for r in rk["target_nfe_median"]),
        ]
        for n in s["nfe"]:
            lines += [
                "",
                f"Top 5 at NFE {n}: "
                + "; ".join(f"`{r['config']}` @ {r['grid']} ({r['regret']:.2f})" for r in rk[f"nfe_{n}"]),
            ]
    return lines


def _md_candidates(result: dict) -> list[str]:
    s, rows = result["settings"], result["summary"]["candidates"]
    if not rows:
        return []
    lines = [
        "",
        "## Candidate defaults",
        "",
        "Regret (state output) at each NFE separately, over all problems and "
        "schedules: RMS-error regret / median-error regret (1 = the best of ours in every cell).",
        "",
    ]
    return lines + _table(
        ["configuration", "grid", *(f"NFE {n}" for n in s["nfe"])],
        [
            [
                f"`{r['config']}`",
                r["grid"],
                *(f"{_ratio(r[f'rms_{n}'])} / {_ratio(r[f'median_{n}'])}" for n in s["nfe"]),
            ]
            for r in rows
        ],
    )


def _md_precision(result: dict) -> list[str]:
    s = result["settings"]
    prec: dict = defaultdict(dict)
    for r in result["precision"]:
        k = (r["problem"], r["schedule"], r["config"], r["nfe_budget"])
        prec[k][r["model_dtype"]] = f"{_e(r['error_vs_float64'])} ({_e(r.get('median_vs_float64'))})"
        prec[k]["solver"] = r["solver_error"]
    lines = [
        "",
        "## Precision of the network output",
        "",
        f"Network output cast to the dtype and back (float32 state), grid {s['precision_grid']}: RMS (median) "
        "difference to the float64 run of the same configuration; solver error = float64 run vs reference.",
        "",
    ]
    return lines + _table(
        ["problem", "schedule", "configuration", "NFE", "solver error", *MODEL_DTYPES],
        [
            [p, sc, f"`{c}`", n, _e(v["solver"]), *(v.get(d, "-") for d in MODEL_DTYPES)]
            for (p, sc, c, n), v in prec.items()
        ],
    )


def _md_notes(result: dict) -> list[str]:
    runs, summ = result["runs"], result["summary"]
    f32 = sorted({r["family"] for r in runs if r.get("default_dtype") == "float32"})
    lines = [
        "",
        "## lower_order_final",
        "",
        "Geometric mean of error(true) / error(false) over grids, problems, schedules and outputs.",
        "",
    ]
    logsnr = {(r["family"], r["nfe"]): r["ratio_true_over_false"] for r in summ["lower_order_final_logsnr"]}
    lines += _table(
        ["family", "NFE", "ratio (all grids)", "cases", "ratio (logsnr grid)"],
        [
            [
                f"`{r['family']}`",
                r["nfe"],
                f"{r['ratio_true_over_false']:.3f}",
                r["cases"],
                _ratio(logsnr.get((r["family"], r["nfe"]))),
            ]
            for r in summ["lower_order_final"]
        ],
    )
    lines += [
        "",
        "## Which grid wins",
        "",
        "Number of our configurations whose best grid is each grid (state output, summed over problems).",
        "",
    ]
    lines += _table(
        ["schedule", "NFE", "wins"],
        [[r["schedule"], r["nfe"], ", ".join(f"{g} {c}" for g, c in r["wins"].items())] for r in summ["grid_wins"]],
    )
    lines += ["", "## Failed runs", ""]
    lines += (
        _table(
            ["library", "family", "grid", "final", "runs", "NFE", "reason"],
            [
                [
                    f["library"],
                    f["family"],
                    f["grid"],
                    f["final"] or "-",
                    f["runs"],
                    ", ".join(map(str, f["nfe"])),
                    f["reason"],
                ]
                for f in summ["failures"]
            ],
        )
        if summ["failures"]
        else ["none"]
    )
    skipped = defaultdict(set)
    for k in result["diffusers_skipped"]:
        skipped[k["reason"][:100]].add(k["config"].split("(")[0])
    lines += [
        "",
        "## Notes",
        "",
        f"- diffusers runs: {sum(r['library'] == 'diffusers' for r in runs)} "
        f"({sum(r['library'] == 'diffusers' and not r['eligible'] for r in runs)} whose last evaluation is "
        f"above t_min: not eligible as best); ours: {sum(r['library'] == 'ours' for r in runs)}.",
        f"- diffusers classes that round the state to float32 inside `step`: {', '.join(ROUNDS_STATE)}; every "
        "diffusers sigma table is float32.",
        f"- diffusers classes that fail with a float64 default dtype (run with float32 defaults, float64 "
        f"state): {', '.join(f32) if f32 else 'none'}.",
    ]
    lines += [f"- skipped diffusers (config, budget) pairs ({', '.join(sorted(v))}): {k}" for k, v in skipped.items()]
    return lines + [""]


def to_markdown(result: dict) -> str:
    env, summ = result["environment"], result["summary"]
    lines = [
        "# Accuracy benchmark",
        "",
        f"Command: `{result.get('command', 'python benchmarks/accuracy.py')}` -- "
        f"{result['timing']['total_s']:.0f} s ({env['jobs']} processes, {env['cpus']} CPUs), torch "
        f"{env['torch']}, diffusers {env['diffusers']}.",
        "",
        f"Target: {summ['target']['criterion']} -- met in **{summ['target']['met']} of "
        f"{summ['target']['cells']}** cells with fixed grids, **{summ['target']['met_optimised']} of "
        f"{summ['target']['cells']}** with optimised grids included.",
        "",
        "## Problems and references",
        "",
    ]
    lines += _table(
        [
            "problem",
            "schedule",
            "dim",
            "batch",
            "t_start -> t_end",
            "reference (dopri5) NFE",
            "reference error estimate",
        ],
        [
            [
                p["problem"],
                p["schedule"],
                p["dim"],
                p["n"],
                f"{p['t_start']:g} -> {p['t_end']:g}",
                p["reference"]["nfe"],
                _e(p["reference"]["error_estimate"]),
            ]
            for p in result["problems"]
        ],
    )
    lines.append("")
    for part in (_md_target, _md_head, _md_optimised, _md_ranking, _md_candidates, _md_precision, _md_notes):
        lines += part(result)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------------


def _json_safe(o):
    """Non-finite floats to ``None``, floats to 7 significant digits (the file holds ~10^4 runs)."""
    if isinstance(o, float):
        return float(f"{o:.7g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def dumps(result: dict) -> str:
    """The result as JSON: everything indented, except one line per run."""
    safe = _json_safe(result)
    head = json.dumps({k: v for k, v in safe.items() if k != "runs"}, indent=1)
    runs = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in safe["runs"])
    return head[:-2] + ',\n "runs": [\n' + runs + "\n ]\n}\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke run (ring only, NFE 10, a few configs)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default 2; 1 with --quick)")
    ap.add_argument("--no-diffusers", action="store_true", help="skip diffusers (ours only)")
    args = ap.parse_args(argv)
    settings = quick_settings() if args.quick else Settings()
    if args.no_diffusers:
        settings = Settings(**{**settings.__dict__, "diffusers": False})
    jobs = args.jobs or (1 if args.quick else 2)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    result = run_benchmark(settings, jobs=jobs, log=lambda m: print(m, file=sys.stderr))
    result["command"] = "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(dumps(result))
    md = to_markdown(result)
    (args.out / "accuracy.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
