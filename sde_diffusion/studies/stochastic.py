r"""The stochastic side of the studies: exact laws on Gaussian data, weak and strong errors, and the distribution
error per NFE of every solver (stochastic and deterministic), optionally beside k-diffusion's samplers.

**Exact law on Gaussian data.** With (diagonal) Gaussian data the exact model is affine in ``x``, and every sampler
here is affine in its start ``x_T`` and in the standard normals it draws: ``x_out = M x_T + b + sum_k C_k xi_k``
per coordinate. Running the solver on a batch of *probes* -- ``(x_T, xi) = (0, 0)``, ``(1, 0)`` and one unit
normal at a time, fed through [`TensorNoise`][sde_diffusion.solvers.base.TensorNoise] -- gives ``b``, ``M`` and every
``C_k``, hence the exact law ``N(M mu_T + b, M^2 v_T + sum_k C_k^2)`` of the output: no Monte-Carlo floor. The
distribution error is the exact W2 between that law and the true marginal ``p_{t_min}``
(``W2^2 = sum_i (m_i - m_i')^2 + (s_i - s_i')^2`` for diagonal Gaussians), and the weak order is its slope against
the step count. (Solvers whose step couples the batch, like ``pc`` with batch-mean norms, are estimated from
samples instead, [`gaussian_w2`][sde_diffusion.studies.metrics.gaussian_w2].)

**Mixtures.** Sliced W2 ([`sliced_w2`][sde_diffusion.studies.metrics.sliced_w2]) between ``n`` samples and ``n`` exact
samples of ``p_{t_min}``, beside its sampling *floor*: the sliced W2 between two independent exact sample sets.

**Strong error.** RMS distance at ``t_min`` to the torchsde reverse-SDE solution on the same Brownian path
([`sde_reference`][sde_diffusion.studies.convergence.sde_reference]).

Entry points: [`stochastic_study`][sde_diffusion.studies.stochastic.stochastic_study] (the distribution-error table
of ``sde-diffusion study --stochastic``) and [`order_table`][sde_diffusion.studies.stochastic.order_table] (measured
strong / weak orders); ``python -m sde_diffusion.studies.stochastic`` prints both.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..reference import brownian_path
from ..sample import sample
from ..solvers.base import BrownianNoise, Solver, TensorNoise, get_solver, registered_solvers
from .convergence import sde_reference
from .fitting import fit_line
from .metrics import gaussian_w2, rms_error, sliced_w2
from .problems import Problem, get_problem

__all__ = [
    "gaussian_law",
    "ProbeBrownian",
    "law_w2",
    "weak_errors",
    "strong_errors",
    "fitted_order",
    "default_study_solvers",
    "kdiffusion_samplers",
    "load_kdiffusion_sampling",
    "distribution_error",
    "stochastic_study",
    "order_table",
    "study_table",
    "plot_study",
    "kdiffusion_best",
    "FIGURE_LABELS",
]

#: extra normals per step that a probe run provides (``noise.normal(x, k)``, ``k <`` this)
PROBE_EXTRA = 4


def _gaussian_law(problem: Problem, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, covariance)`` of ``p_t`` for a problem with Gaussian (or point-mass) data."""
    law = problem.gaussian_marginal(t)
    assert law is not None, f"problem {problem.name!r} has no Gaussian marginals"
    return law


def _start_law(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    mean, cov = _gaussian_law(problem, problem.t_start)
    return mean, torch.diagonal(cov)


def _affine_law(run: Callable[[torch.Tensor, object], torch.Tensor], problem: Problem, slots: int, extra: int):
    """Exact (mean, variance) per coordinate of ``run(x_T, noise)`` for an affine sampler: ``slots`` step increments
    and ``extra`` normals per step (as [`TensorNoise`][sde_diffusion.solvers.base.TensorNoise]), probed one unit normal
    at a time."""
    d = problem.dim
    n_noise = slots * (1 + extra)
    p = 2 + n_noise
    x = torch.zeros((p, d), dtype=torch.float64)
    x[1] = 1.0
    unit = torch.zeros((n_noise, p, d), dtype=torch.float64)
    unit[torch.arange(n_noise), 2 + torch.arange(n_noise)] = 1.0
    out = run(x.reshape((p, *problem.event_shape)), unit).reshape(p, d)
    b = out[0]
    m = out[1] - b
    c = out[2:] - b
    mu_t, v_t = _start_law(problem)
    return m * mu_t + b, m * m * v_t + (c * c).sum(0)


def gaussian_law(problem: Problem, solver: Solver, steps: int, grid="logsnr") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(mean, variance)`` (flattened, float64) of ``solver``'s output on Gaussian data, started from the
    exact ``p_{t_max}``: see the module docstring."""
    model = problem.model()

    def run(x, unit):
        if not solver.stochastic:
            return sample(model, x, solver=solver, steps=steps, grid=grid).x
        steps_noise = unit[:: 1 + PROBE_EXTRA].reshape(steps, *x.shape)  # slot layout: (increment, extras...) per step
        extras = torch.stack([unit[k + 1 :: 1 + PROBE_EXTRA] for k in range(PROBE_EXTRA)], 1).reshape(
            steps, PROBE_EXTRA, *x.shape
        )
        return sample(model, x, solver=solver, steps=steps, grid=grid, noise=TensorNoise(steps_noise, extras)).x

    return _affine_law(run, problem, steps if solver.stochastic else 0, PROBE_EXTRA)


def law_w2(problem: Problem, mean: torch.Tensor, var: torch.Tensor) -> float:
    """Exact W2 between the diagonal Gaussians ``N(mean, var)`` and the true ``p_{t_min}``."""
    m, cov = _gaussian_law(problem, problem.t_end)
    v = torch.diagonal(cov)
    return float(torch.sqrt(((mean - m) ** 2).sum() + ((var.clamp_min(0).sqrt() - v.sqrt()) ** 2).sum()))


def weak_errors(problem: Problem, solver: Solver, steps_list: Sequence[int], grid="logsnr") -> list[float]:
    """Exact W2 of the output law against ``p_{t_min}`` for each step count (Gaussian data)."""
    return [law_w2(problem, *gaussian_law(problem, solver, n, grid)) for n in steps_list]


def strong_errors(
    problem: Problem,
    solver: Solver,
    steps_list: Sequence[int],
    *,
    batch: int = 32,
    seed: int = 0,
    grid="logsnr",
    reference: tuple[torch.Tensor, torch.Tensor, object] | None = None,
    segments: int = 16,
    substeps: int = 50,
) -> tuple[list[float], tuple]:
    """RMS error at ``t_min`` against torchsde's reverse-SDE solution on one Brownian path, for each step count.
    Returns the errors and ``(x_T, reference, bm)`` for reuse with other solvers."""
    if reference is None:
        g = torch.Generator().manual_seed(seed)
        x_t = problem.start(batch, g)
        bm = brownian_path(x_t, problem.t_end, problem.t_start, seed=seed, tol=1e-10)
        ref, _ = sde_reference(problem, x_t, bm, segments=segments, substeps=substeps, sweep=False)
        reference = (x_t, ref, bm)
    x_t, ref, bm = reference
    g = torch.Generator().manual_seed(seed + 1)
    errs = []
    for n in steps_list:
        x = sample(problem.model(), x_t, solver=solver, steps=n, grid=grid, noise=BrownianNoise(bm, g)).x
        errs.append(rms_error(x, ref))
    return errs, reference


def fitted_order(steps_list: Sequence[int], errors: Sequence[float]) -> float:
    """Order ``p`` of the least-squares fit ``log error = c - p log steps``."""
    return float(fit_line(list(steps_list), list(errors)).order)


# ---------------------------------------------------------------------------------------------------------------------
# k-diffusion (optional)
# ---------------------------------------------------------------------------------------------------------------------


def load_kdiffusion_sampling():
    """k-diffusion's ``sampling`` module, loaded without the package ``__init__`` (which imports its training
    dependencies); ``None`` if k-diffusion is not installed (``pip install --no-deps k-diffusion``). Its ``utils``
    imports torchvision; where that is missing, a stand-in module with ``append_dims`` (the one helper ``sampling``
    calls) is registered."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("k_diffusion", pkg)
    try:
        importlib.import_module("k_diffusion.utils")
    except ImportError:
        utils = types.ModuleType("k_diffusion.utils")

        def append_dims(x, target_dims):
            return x[(...,) + (None,) * (target_dims - x.ndim)]

        utils.append_dims = append_dims
        sys.modules["k_diffusion.utils"] = utils
        sys.modules["k_diffusion"].utils = utils
    return importlib.import_module("k_diffusion.sampling")


#: k-diffusion samplers in the study: name -> (function name, options, model evaluations for ``n`` sigmas steps)
KDIFFUSION: dict[str, tuple[str, dict[str, Any], Callable[[int], int]]] = {
    "kd:euler": ("sample_euler", {}, lambda n: n),
    "kd:heun": ("sample_heun", {}, lambda n: 2 * n),
    "kd:dpm_2": ("sample_dpm_2", {}, lambda n: 2 * n),
    "kd:lms": ("sample_lms", {}, lambda n: n),
    "kd:dpmpp_2m": ("sample_dpmpp_2m", {}, lambda n: n),
    "kd:euler_ancestral": ("sample_euler_ancestral", {}, lambda n: n),
    "kd:dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, lambda n: 2 * n),
    "kd:dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, lambda n: 2 * n),
    "kd:dpmpp_sde": ("sample_dpmpp_sde", {}, lambda n: 2 * n),
    "kd:dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, lambda n: n),
    "kd:dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, lambda n: n),
}


def kdiffusion_samplers() -> dict:
    """The k-diffusion samplers the study runs (empty if k-diffusion is not installed)."""
    return KDIFFUSION if load_kdiffusion_sampling() is not None else {}


def _kd_run(problem: Problem, name: str, ts: torch.Tensor, x_t: torch.Tensor, noise_sampler):
    """Run k-diffusion sampler ``name`` on our grid ``ts``: its state is ``y = x/alpha``, its sigma ``sigma_ve``."""
    kd = load_kdiffusion_sampling()
    fn, opts, _ = KDIFFUSION[name]
    sch, data = problem.schedule, problem.data
    sig = torch.exp(-sch.lambda_(ts))
    a0 = float(sch.alpha(ts[:1]))
    a1 = float(sch.alpha(ts[-1:]))

    def denoiser(y, sigma):
        t = sch.inverse_lambda_unchecked(-torch.log(sigma.to(torch.float64)))
        a = torch.exp(sch.log_alpha_unchecked(t)).reshape((-1,) + (1,) * (y.ndim - 1))
        return data.x0(a * y, t, sch)

    kw = dict(opts)
    if noise_sampler is not None and "noise_sampler" in inspect.signature(getattr(kd, fn)).parameters:
        kw["noise_sampler"] = noise_sampler
    return a1 * getattr(kd, fn)(denoiser, x_t / a0, sig, disable=True, **kw)


class ProbeBrownian:
    """A Brownian path whose values are linear combinations of unit normals, for probing k-diffusion's samplers:
    ``W`` at a new point is drawn from the Brownian bridge between its neighbours (or as a Brownian step beyond the
    ends) with one fresh unit normal, which is ``unit[k]`` for the ``k``-th fresh draw (``unit=None``: zeros, to
    count the draws). Called as k-diffusion's ``noise_sampler(sigma, sigma_next)``: the normalised increment."""

    def __init__(self, like: torch.Tensor, unit: torch.Tensor | None = None):
        self.like, self.unit, self.draws = like, unit, 0
        self.points: dict[float, torch.Tensor] = {}

    def _fresh(self) -> torch.Tensor:
        k, self.draws = self.draws, self.draws + 1
        return torch.zeros_like(self.like) if self.unit is None else self.unit[k]

    def _at(self, s: float) -> torch.Tensor:
        if s in self.points:
            return self.points[s]
        if not self.points:
            w = torch.zeros_like(self.like)
        else:
            lo = max((p for p in self.points if p < s), default=None)
            hi = min((p for p in self.points if p > s), default=None)
            if lo is None or hi is None:
                end = hi if lo is None else lo
                assert end is not None  # (self.points is not empty)
                w = self.points[end] + abs(s - end) ** 0.5 * self._fresh()
            else:
                f = (s - lo) / (hi - lo)
                w = (
                    (1 - f) * self.points[lo]
                    + f * self.points[hi]
                    + ((s - lo) * (hi - s) / (hi - lo)) ** 0.5 * self._fresh()
                )
        self.points[s] = w
        return w

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        return (self._at(b) - self._at(a)) / abs(b - a) ** 0.5


def _kd_gaussian_law(problem: Problem, name: str, ts: torch.Tensor):
    """Exact law of k-diffusion's sampler ``name``: its noise sampler is a
    [`ProbeBrownian`][sde_diffusion.studies.stochastic.ProbeBrownian] in ``sigma_ve``
    (the time of k-diffusion's ``BrownianTreeNoiseSampler``)."""
    counter = ProbeBrownian(torch.zeros((2, *problem.event_shape), dtype=torch.float64))
    _kd_run(problem, name, ts, counter.like, counter)

    def run(x, unit):
        return _kd_run(problem, name, ts, x, ProbeBrownian(x, unit))

    return _affine_law(run, problem, counter.draws, 0)


# ---------------------------------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------------------------------


def default_study_solvers() -> dict[str, Solver]:
    """Every registered fixed-grid sampling solver with its default options, the stochastic ones with their
    reverse-SDE setting (``eta = 1``), EDM with EDM's churn and Restart with one restart per run."""
    skip = {"ddim_inverse"}
    out = {}
    for name, cls in sorted(registered_solvers().items()):
        if name in skip or cls.adaptive or cls.direction != "backward":
            continue
        out[name] = get_solver(name)
    out["ddim(eta=1)"] = get_solver("ddim", eta=1.0)
    out["edm_stochastic"] = get_solver("edm_stochastic", s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    out["restart"] = get_solver("restart", intervals=((0.1, 2.0, 1, 0.25),))
    return out


def distribution_error(
    problem: Problem, solver, nfe: int, *, grid="karras", samples: int = 4000, seed: int = 0
) -> dict | None:
    """Distribution error of ``solver`` (a [`Solver`][sde_diffusion.solvers.base.Solver] or a k-diffusion name
    ``"kd:..."``) at a budget of ``nfe`` model evaluations: ``{"steps", "nfe", "error", "floor", "metric"}``;
    ``None`` if one step costs more."""
    is_kd = isinstance(solver, str)
    if is_kd:
        per = KDIFFUSION[solver][2]
        steps = max((n for n in range(1, nfe + 1) if per(n) <= nfe), default=0)
        used = per(steps)
    else:
        steps = solver.steps_for_nfe(nfe)
        used = solver.final_nfe(steps) if steps else 0
    if steps == 0:
        return None
    from ..grids import make_grid

    ts = make_grid(problem.schedule, grid, steps, problem.t_start, problem.t_end)
    gauss = problem.gaussian_marginal(problem.t_end) is not None
    couples = not is_kd and bool(solver.couples_batch)
    if gauss and not couples:
        mean, var = _kd_gaussian_law(problem, solver, ts) if is_kd else gaussian_law(problem, solver, steps, ts)
        return {"steps": steps, "nfe": used, "error": law_w2(problem, mean, var), "floor": 0.0, "metric": "exact W2"}
    g = torch.Generator().manual_seed(seed)
    x_t = problem.start(samples, g)
    if is_kd:
        x = _kd_run(problem, solver, ts, x_t, None)
    else:
        x = sample(problem.model(), x_t, solver=solver, grid=ts, generator=g).x
    target = problem.target_samples(samples, torch.Generator().manual_seed(seed + 7))
    other = problem.target_samples(samples, torch.Generator().manual_seed(seed + 11))
    if gauss:
        m, cov = _gaussian_law(problem, problem.t_end)
        return {
            "steps": steps,
            "nfe": used,
            "error": gaussian_w2(x, m, cov),
            "floor": gaussian_w2(other, m, cov),
            "metric": "W2 of the sample Gaussian",
        }
    return {
        "steps": steps,
        "nfe": used,
        "error": sliced_w2(x, target),
        "floor": sliced_w2(other, target),
        "metric": "sliced W2",
    }


def stochastic_study(
    problems: Sequence[str | Problem] = ("gauss2d", "ring"),
    nfes: Sequence[int] = (10, 20, 50),
    *,
    solvers: dict[str, Solver] | None = None,
    kdiffusion: bool = True,
    grid="karras",
    samples: int = 4000,
    seed: int = 0,
    schedule: str = "vp-linear",
) -> dict:
    """Distribution error per NFE of every solver
    ([`default_study_solvers`][sde_diffusion.studies.stochastic.default_study_solvers]) and, when installed and
    ``kdiffusion``, of k-diffusion's samplers on the same sigmas, for each problem. Returns
    ``{"problems": {name: {label: {nfe: row or None}}}, "nfes", "grid"}``."""
    solvers = default_study_solvers() if solvers is None else solvers
    entries: dict = dict(solvers)
    if kdiffusion:
        entries.update({k: k for k in kdiffusion_samplers()})
    out = {"nfes": list(nfes), "grid": grid, "problems": {}}
    for prob in problems:
        p = get_problem(prob, schedule)
        out["problems"][p.name] = {
            label: {nfe: distribution_error(p, s, nfe, grid=grid, samples=samples, seed=seed) for nfe in nfes}
            for label, s in entries.items()
        }
    return out


def _main_metric(rows: dict) -> str:
    metrics = [c["metric"] for v in rows.values() for c in v.values() if c]
    return max(set(metrics), key=metrics.count) if metrics else ""


def kdiffusion_best(rows: dict, nfes: Sequence[int]) -> dict:
    """Per NFE budget, the k-diffusion sampler with the smallest error among the ``kd:`` rows:
    ``{nfe: (label, row)}``."""
    out = {}
    for n in nfes:
        cands = [(label, v[n]) for label, v in rows.items() if label.startswith("kd:") and v[n]]
        if cands:
            out[n] = min(cands, key=lambda lr: lr[1]["error"])
    return out


def study_table(result: dict) -> str:
    """Markdown: one table per problem, rows = solvers, columns = NFE budgets (error and actual NFE), then the best
    k-diffusion sampler per budget. A cell measured with another metric than the problem's (a sampler whose step
    couples the batch, estimated from samples) is marked with a dagger."""
    lines = []
    nfes = result["nfes"]
    for pname, rows in result["problems"].items():
        metric = _main_metric(rows)
        floor = max((c["floor"] for v in rows.values() for c in v.values() if c and c["metric"] == metric), default=0)
        head = f"### {pname} ({metric}" + (f"; sampling floor {floor:.2e}" if floor else "") + ")"
        lines += [head, "", "| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
        for label, cells in rows.items():
            vals = []
            for c in (cells[n] for n in nfes):
                mark = "" if not c or c["metric"] == metric else " †"
                vals.append(f"{c['error']:.2e} ({c['nfe']}){mark}" if c else "—")
            lines.append(f"| {label} | " + " | ".join(vals) + " |")
        best = kdiffusion_best(rows, nfes)
        if best:
            cells = [f"{best[n][1]['error']:.2e} ({best[n][0]})" if n in best else "—" for n in nfes]
            lines.append("| **k-diffusion's best** | " + " | ".join(cells) + " |")
        others = {c["metric"]: c["floor"] for v in rows.values() for c in v.values() if c and c["metric"] != metric}
        lines += [""] + [f"† {m} from samples (floor {f:.2e})" for m, f in others.items()] + [""]
    return "\n".join(lines)


def order_table(
    solvers: Mapping[str, Solver | Callable[[int], Solver]],
    *,
    weak_steps: Sequence[int] = (16, 32, 64, 128),
    strong_steps: Sequence[int] = (16, 32, 64, 128),
    problem: str | Problem = "gauss2d",
    schedule: str = "vp-linear",
    strong: bool = True,
) -> list[dict]:
    """Measured weak (exact law, Gaussian data) and strong (torchsde, same Brownian path) orders of each solver on a
    logSNR grid, beside the declared ones. A value may be a factory ``steps -> solver`` for methods whose options
    must be refined with the grid (Restart's inner runs)."""
    p = get_problem(problem, schedule)
    rows, reference = [], None
    for label, entry in solvers.items():
        make = (lambda n, e=entry: e) if isinstance(entry, Solver) else entry
        s = make(weak_steps[0])
        row = {"solver": label, "order": s.order, "strong_order": s.strong_order}
        w = [weak_errors(p, make(n), [n])[0] for n in weak_steps]
        row["weak_errors"], row["weak_fit"] = w, fitted_order(weak_steps, w)
        if strong and s.strong_order is not None:
            e, reference = strong_errors(p, s, strong_steps, reference=reference)
            row["strong_errors"], row["strong_fit"] = e, fitted_order(strong_steps, e)
        rows.append(row)
    return rows


#: the rows drawn by [`plot_study`][sde_diffusion.studies.stochastic.plot_study] by default
FIGURE_LABELS = (
    "euler_ancestral",
    "dpm_solver++_2s_ancestral",
    "dpm_solver_2_ancestral",
    "sde_dpm_solver++_2s",
    "sde_dpm_solver++",
    "sde_dpm_solver++_3m",
    "edm_stochastic",
    "restart",
    "dpm_solver++",
    "unipc",
    "kd:dpmpp_2m",
    "kd:dpmpp_2m_sde",
)


def plot_study(result: dict, problem: str, labels: Sequence[str] | None = None, ax=None):
    """Error against NFE (log-log) of ``labels`` (default
    [`FIGURE_LABELS`][sde_diffusion.studies.stochastic.FIGURE_LABELS], those present) on one problem of a
    [`stochastic_study`][sde_diffusion.studies.stochastic.stochastic_study] result; stochastic solvers solid,
    deterministic dashed, k-diffusion's dotted; the
    sampling floor of a sampled metric in grey. Needs matplotlib."""
    import matplotlib.pyplot as plt

    rows = result["problems"][problem]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    metric = _main_metric(rows)
    floor = 0.0
    for label in [lab for lab in (labels or FIGURE_LABELS) if lab in rows]:
        pts = [(c["nfe"], c["error"]) for c in rows[label].values() if c and c["metric"] == metric]
        if not pts:
            continue
        floor = max(floor, max(c["floor"] for c in rows[label].values() if c and c["metric"] == metric))
        style = ":" if label.startswith("kd:") else ("-" if _is_stochastic(label) else "--")
        ax.loglog(*zip(*pts), style, marker="o", ms=3, label=label)
    if floor > 0:
        ax.axhline(floor, color="0.6", lw=1, label="sampling floor")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(problem)
    ax.legend(fontsize=6, ncol=2)
    return ax


def _is_stochastic(label: str) -> bool:
    solver = default_study_solvers().get(label)
    return bool(solver is not None and solver.stochastic)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m sde_diffusion.studies.stochastic [--orders]``: print the distribution-error table (and with
    ``--orders`` the measured weak/strong orders of the stochastic solvers) as markdown."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--orders", action="store_true", help="also measure weak and strong orders")
    ap.add_argument("--samples", type=int, default=4000, help="samples for the mixture problems")
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50], help="NFE budgets")
    ap.add_argument("--figure", help="also write a PNG of error against NFE (one panel per problem)")
    args = ap.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    result = stochastic_study(nfes=args.nfe, samples=args.samples)
    print(study_table(result))
    if args.figure:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(result["problems"]), figsize=(7 * len(result["problems"]), 5))
        for ax, name in zip(list(getattr(axes, "flat", [axes])), result["problems"]):
            plot_study(result, name, ax=ax)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=110)
    if args.orders:
        solvers = {k: s for k, s in default_study_solvers().items() if s.stochastic}
        solvers["edm_stochastic"] = get_solver("edm_stochastic", s_churn=5.0)  # gamma = 5/N shrinks with N
        print("| solver | weak order (declared) | weak fit | strong order (declared) | strong fit |")
        print("|---|---|---|---|---|")
        for r in order_table(solvers):
            strong = f"{r['strong_fit']:.2f}" if "strong_fit" in r else "—"
            print(f"| {r['solver']} | {r['order']:g} | {r['weak_fit']:.2f} | {r['strong_order']} | {strong} |")


if __name__ == "__main__":
    main()
