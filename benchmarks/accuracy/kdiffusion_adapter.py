"""k-diffusion's samplers fed the benchmark's problem (the second peer; optional, ``pip install --no-deps
k-diffusion``, loaded without its package ``__init__`` by
[`load_kdiffusion_sampling`][sde_diffusion.studies.stochastic.load_kdiffusion_sampling]).

k-diffusion integrates in VE variables: ``x_ve = x / alpha`` and ``sigma = sigma_ve = exp(-lambda)``, with the
denoiser ``D(x_ve, sigma) = x0(alpha x_ve, t(sigma))``. Runs start at ``sigma_ve(t_max)`` from the benchmark's own
``x_T``; the ``state`` output ends at ``sigma_ve(t_min)`` (mapped back by ``alpha(t_min)``), the ``x0`` output
appends ``sigma = 0`` (k-diffusion's final denoising: the data prediction at ``t_min``). The budget is met by the
largest number of steps whose counted model calls fit.
"""

from __future__ import annotations

import torch

from sde_diffusion.studies.problems import Problem
from sde_diffusion.studies.stochastic import load_kdiffusion_sampling

from .configurations import KDiffusionConfig, Settings, kdiffusion_configs
from .problems import denoise, error_record, run_header, time_key

__all__ = ["kdiffusion_version", "kdiffusion_run", "run_kdiffusion"]


def kdiffusion_version() -> str | None:
    if load_kdiffusion_sampling() is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k-diffusion")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _sigmas(cfg: KDiffusionConfig, k, steps: int, smin: float, smax: float, to_zero: bool) -> torch.Tensor:
    n = steps + 1 if not to_zero else steps  # k-diffusion's builders append the zero themselves
    if cfg.grid == "karras":
        s = k.get_sigmas_karras(n, smin, smax, rho=7.0)
    else:
        s = k.get_sigmas_exponential(n, smin, smax)
    s = s.to(torch.float64)
    return s if to_zero else s[:-1]


def _denoiser(problem: Problem, counter: list):
    model, sch = problem.model(), problem.schedule

    def d(x_ve, sigma):
        counter[0] += 1
        sig = sigma.to(torch.float64).reshape(-1)[:1].expand(x_ve.shape[0])
        t = sch.inverse_lambda(-torch.log(sig))
        t = torch.where(torch.isclose(t, torch.full_like(t, problem.t_end), rtol=1e-9), problem.t_end, t)
        t = torch.where(torch.isclose(t, torch.full_like(t, problem.t_start), rtol=1e-9), problem.t_start, t)
        a = sch.alpha(t).reshape(-1, *([1] * (x_ve.ndim - 1)))
        return model.predict(a * x_ve, t, "x0")

    return d


def kdiffusion_run(cfg: KDiffusionConfig, problem: Problem, x_T: torch.Tensor, steps: int, to_zero: bool):
    k = load_kdiffusion_sampling()
    sch = problem.schedule
    ends = torch.tensor([problem.t_start, problem.t_end], dtype=torch.float64)
    smax, smin = (float(v) for v in sch.sigma_ve(ends))
    sigmas = _sigmas(cfg, k, steps, smin, smax, to_zero)
    sigmas[0] = smax  # exact end points
    if not to_zero:
        sigmas[-1] = smin
    counter = [0]
    x = x_T / sch.alpha(ends[:1])
    out = getattr(k, cfg.sampler)(_denoiser(problem, counter), x, sigmas, disable=True, **dict(cfg.kwargs))
    if not to_zero:
        out = out * sch.alpha(ends[1:])
    return out, counter[0]


def run_kdiffusion(problem: Problem, x_T: torch.Tensor, ref: dict, settings: Settings) -> list[dict]:
    """Every k-diffusion configuration at every budget and output; the largest step count that fits the budget."""
    target_state = ref[time_key(problem.t_end)]
    target_x0 = denoise(problem, target_state, problem.t_end)
    probe = x_T[:2]
    out = []
    for cfg in kdiffusion_configs(settings.quick):
        for output, target in (("state", target_state), ("x0", target_x0)):
            to_zero = output == "x0"
            for budget in settings.nfe:
                steps = next(
                    (s for s in range(budget, 0, -1) if kdiffusion_run(cfg, problem, probe, s, to_zero)[1] <= budget), 0
                )
                if steps == 0:
                    continue
                x, nfe = kdiffusion_run(cfg, problem, x_T, steps, to_zero)
                out.append(
                    dict(
                        **run_header(problem, "k-diffusion", cfg.label, cfg.sampler, cfg.grid),
                        output=output,
                        nfe_budget=budget,
                        nfe=nfe,
                        steps=steps,
                        **error_record(x, target),
                    )
                )
    return out
