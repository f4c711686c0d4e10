"""diffusers' schedulers fed the benchmark's problem: the same times, the same network, in our variables."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from sde_diffusion.studies.metrics import rms_error
from sde_diffusion.studies.problems import Problem

from .configurations import N_TRAIN, ROUNDS_STATE, VP_CONFIG, DiffusersConfig, Settings, diffusers_configs
from .problems import denoise, error_record, run_header, time_key, tvec, vp_discrete_schedule

# ---------------------------------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def default_dtype(dtype):
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


def make_scheduler(cfg: DiffusersConfig):
    import diffusers

    base = {} if cfg.space == "edm" else VP_CONFIG
    with quiet():
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


def snap_time(t: float, problem: Problem) -> float:
    """EDM's float32 sigma table: the end points diffusers means are ``sigma_min``/``sigma_max`` exactly."""
    for ref in (problem.t_start, problem.t_end):
        if abs(t / ref - 1.0) < 1e-6:
            return ref
    return t


def time_of(cfg: DiffusersConfig, sched, i: int, problem: Problem) -> float:
    """Our time of diffusers' ``i``-th model call: ``(k + 1)/N`` for DDPM timesteps, ``sigma`` for EDM."""
    if cfg.space == "edm":
        return snap_time(float(sched.sigmas[i]), problem)
    return (float(sched.timesteps[i]) + 1.0) / N_TRAIN


def plan_diffusers(cfg: DiffusersConfig, budget: int, problem: Problem) -> DiffusersPlan | None:
    """The largest ``num_inference_steps`` whose number of model calls fits ``budget`` (``None`` if none)."""
    for steps in range(budget, 0, -1):
        sched = make_scheduler(cfg)
        with quiet():
            sched.set_timesteps(steps)
        calls = len(sched.timesteps)
        if calls <= budget:
            t_out = problem.t_end if cfg.output == "state" else time_of(cfg, sched, calls - 1, problem)
            return DiffusersPlan(
                cfg,
                budget,
                steps,
                calls,
                time_of(cfg, sched, 0, problem),
                t_out,
                abs(t_out / problem.t_end - 1.0) < 1e-9,
            )
    return None


def diffusers_loop(plan: DiffusersPlan, problem: Problem, x_start: torch.Tensor) -> torch.Tensor:
    """Run one diffusers scheduler on the exact network; returns its final state in our variables."""
    cfg, model, n = plan.cfg, problem.model(), x_start.shape[0]
    sched = make_scheduler(cfg)
    with quiet():
        sched.set_timesteps(plan.steps)
    x = x_start / problem.schedule.alpha(plan.t_start) if cfg.space == "ve" else x_start.clone()
    for k in sched.timesteps:
        xin = sched.scale_model_input(x, k)
        if cfg.space == "edm":
            sigma = sched.sigmas[sched.step_index]
            d = model.predict(x, tvec(snap_time(float(sigma), problem), n), "x0")
            skip = sched.precondition_outputs(x, torch.zeros_like(x), sigma)  # c_skip x
            c_out = sched.precondition_outputs(torch.zeros_like(x), torch.ones_like(x), sigma)
            out = (d - skip) / c_out
        else:
            out = model.predict(xin, tvec((float(k) + 1.0) / N_TRAIN, n), "eps")
        with quiet():
            x = sched.step(out, k, x).prev_sample
    if cfg.space == "ve" and cfg.output == "state":
        x = x * problem.schedule.alpha(problem.t_end)
    return x


def run_diffusers_one(plan: DiffusersPlan, problem: Problem, ref: dict) -> dict:
    """One diffusers run; float64 state and default dtype where diffusers allows it, else float32 defaults."""
    cfg = plan.cfg
    target = (
        ref[time_key(problem.t_end)]
        if cfg.output == "state"
        else denoise(problem, ref[time_key(plan.t_out)], plan.t_out)
    )
    rec = dict(
        **run_header(
            problem,
            "diffusers",
            cfg.label,
            cfg.cls,
            cfg.grid,
            t_start=plan.t_start,
            t_end=plan.t_out,
            eligible=plan.at_t_min,
        ),
        output=cfg.output,
        nfe_budget=plan.budget,
        nfe=plan.nfe,
        steps=plan.steps,
        state_dtype="float32 (rounded in step)" if cfg.cls in ROUNDS_STATE else "float64",
    )
    x_start = ref[time_key(plan.t_start)]
    for dtype in (torch.float64, torch.float32):
        try:
            with default_dtype(dtype):
                x = diffusers_loop(plan, problem, x_start)
        except RuntimeError as e:  # e.g. UniPC mixes float32 sigmas with default-dtype tensors in linalg.solve
            if dtype == torch.float32:
                rec.update(error=None, error_median=None, failed=f"RuntimeError: {e}")
                return rec
            continue
        rec["default_dtype"] = str(dtype)[6:]
        rec.update(error_record(x, target))
        if cfg.output == "x0" and rec["error"] is not None:  # distance to the denoised exact state at t_min
            rec["error_vs_t_min"] = rms_error(x, denoise(problem, ref[time_key(problem.t_end)], problem.t_end))
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
