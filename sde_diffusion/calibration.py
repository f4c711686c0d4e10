r"""Calibration: the deterministic solver and the time grid that sample a given model best at a given NFE budget.

[`calibrate`][sde_diffusion.calibration.calibrate] searches, for one model and one budget, over deterministic
solver configurations and time grids, scoring each by the RMS error at ``t_end`` on a *pilot* batch against the
probability-flow ODE solution of the same model
([`probability_flow_reference`][sde_diffusion.reference.probability_flow_reference], torchdiffeq dopri5, float64):

1. **Screen** -- every solver configuration (``solvers="auto"``:
   [`AUTO_SOLVERS`][sde_diffusion.calibration.AUTO_SOLVERS]) on every grid family of
   [`sde_diffusion.grids`][sde_diffusion.grids] at a few values of its parameter
   ([`SCREEN_GRIDS`][sde_diffusion.calibration.SCREEN_GRIDS]), ``solver.steps_for_nfe(nfe)`` steps each.
2. **Family parameters** -- for the best few configurations, the continuous parameter of each parametric family
   (``rho`` of ``karras``, ``p`` of ``vp_power``, ``cosine_power``, ``lambda_power``) by a bounded scalar search in
   its logarithm (``scipy.optimize.minimize_scalar``): a global step over the family, which coordinate descent on
   single knots cannot take.
3. **Free knots** -- a dynamic programme over a fine candidate grid
   ([`select_knots`][sde_diffusion.studies.grid_optimizer.select_knots], in the style of GITS, arXiv:2405.11326):
   the fine grid is the best family's grid at \(6 N\) (\(4 N\) above 12 steps) steps, the cost of a step from knot
   \(i\) to knot \(j\) the error of one step of a proxy solver (DDIM, DPM-Solver++(2S)) started on the reference
   trajectory at \(i\) against the reference at \(j\) -- \(O(K^2)\) single steps, batched as one call per start
   knot with one grid per sample. The fine grid contains the family's own grid (every 6th knot), so the programme
   only moves away from it where the local errors say so. Then a short pattern search
   ([`coordinate_descent`][sde_diffusion.studies.grid_optimizer.coordinate_descent]) starts from the best grid
   found so far. Every candidate is scored with the real solver.
With ``analytic_first_step="auto"`` (the default) every configuration is screened twice: as is, and with AMED's
analytical first step ([`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep], arXiv:2312.00094: the first
evaluation replaced by its large-noise limit, so the same budget buys one step more). The plain search runs exactly
as with ``analytic_first_step=False``; the analytic-first-step variants get the same stages of their own (the best
``refine`` solvers among them are refined), and their winner replaces the plain one only where it is significantly
better on the held-out samples.

4. **Validation** -- the best candidates *and* the best fixed configuration (a named grid with its default
   parameter) are evaluated on an independent *held-out* batch; the one with the smallest held-out error is
   returned, so the result is never worse on held-out data than the best fixed configuration. Finalists are the best
   five of each first-step variant; an analytic-first-step winner must beat the plain winner significantly (a
   paired test on the held-out samples,
   [`significantly_smaller`][sde_diffusion.calibration.significantly_smaller]); otherwise the plain one is returned.

The result, a [`Calibration`][sde_diffusion.calibration.Calibration], stores the solver configuration, the grid
as half-log-SNR knots and as times, the pilot and held-out errors, the reference's own error (a second solve at
100x the tolerance) and the runners-up; it is saved as JSON and loads back. Use it as
``sample(model, x, **cal.sample_kwargs())``.

Deterministic for a given ``seed`` (batches are drawn from it on the CPU in float64) unless ``budget_s`` cuts the
search short. The searched solvers are deterministic only: a stochastic sampler's error against the ODE flow is not
a discretisation error.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .grids import GRID_FAMILIES, family_lambdas, format_grid, grid_from_lambdas, make_grid, parse_grid
from .models import Model
from .reference import probability_flow_reference
from .sample import NonFiniteError, sample
from .sdes import ForwardSDE
from .studies.grid_optimizer import coordinate_descent, select_knots
from .studies.metrics import rms_error, sample_squared_errors
from .studies.results import document_fields
from .studies.specs import parse_solver_spec

__all__ = ["Calibration", "calibrate", "AUTO_SOLVERS", "SCREEN_GRIDS", "CALIBRATION_FILE", "significantly_smaller"]

SCHEMA_VERSION = 1
_KIND = "sde_diffusion.calibration"
#: the file name ``sde-diffusion calibrate`` writes next to a checkpoint (``{stem}.calibration.json``)
CALIBRATION_FILE = "{stem}.calibration.json"

#: the solver configurations ``solvers="auto"`` searches (deterministic, fixed-grid: the strongest at NFE 5-20 in the
#: accuracy benchmark first, since a time budget cuts the screening short in this order; DDIM last, as the floor)
AUTO_SOLVERS = (
    "unipc:predictor_order=2,b_h=bh1,prediction=eps",
    "ipndm:ab_order=3",
    "deis:method=logrho,order=3",
    "unipc:predictor_order=2,b_h=bh1",
    "dpm_solver++:order=2,multistep=true",
    "unipc:predictor_order=3,b_h=bh2,prediction=eps",
    "unipc:predictor_order=3",
    "ipndm:ab_order=4",
    "dpm_solver:order=2,multistep=true",
    "dpm_solver++:order=3,multistep=true",
    "dpm_solver++:order=3,multistep=true,update=exact",
    "ddim",
)

#: the grids of the screening stage: every family at a few parameter values, and the two model-time grids
SCREEN_GRIDS = (
    "logsnr",
    "karras:rho=3.0",
    "karras:rho=5.0",
    "karras",
    "karras:rho=10.0",
    "vp_uniform",
    "vp_power:p=1.5",
    "vp_quadratic",
    "vp_power:p=3.0",
    "cosine_uniform",
    "cosine_quadratic",
    "lambda_power:p=0.7",
    "lambda_power:p=1.4",
    "time_uniform",
    "time_quadratic",
)
#: grids counted as "fixed configurations" (a named grid at its default parameter) for the never-worse guarantee
_FIXED = (
    "logsnr",
    "karras",
    "vp_uniform",
    "vp_quadratic",
    "cosine_uniform",
    "cosine_quadratic",
    "time_uniform",
    "time_quadratic",
)
#: proxy solvers whose one-step local errors price the dynamic programme's steps
_PROXIES = ("ddim", "dpm_solver++:order=2,multistep=false,lower_order_final=false")


@dataclass
class Calibration:
    """A calibrated solver and grid for one model and NFE budget
    (see [`calibrate`][sde_diffusion.calibration.calibrate]).

    ``solver`` is a configuration string (``"name:k=v,..."``), ``grid`` says where the grid came from (a family
    name with its parameter, ``"dp[...]"`` for the dynamic programme, ``"+cd"`` after the pattern search), ``lambdas``
    and ``times`` the grid itself (increasing half log-SNR knots; the matching decreasing times on the calibrated
    schedule). Errors are RMS at ``t_end`` against the reference; ``baseline`` is the best fixed configuration (named
    grid, default parameter, no analytic first step) and ``runners_up`` the next candidates, each with both errors.
    ``analytic_first_step``: sample with AMED's analytical first step (then ``steps`` is
    ``solver.steps_for_nfe(nfe + 1)``: the first evaluation is free).
    """

    solver: str
    grid: str
    nfe: int
    steps: int
    lambdas: list[float]
    times: list[float]
    t_start: float
    t_end: float
    schedule: str
    pilot_error: float
    heldout_error: float
    reference_error: float
    baseline: dict[str, Any]
    runners_up: list[dict[str, Any]] = field(default_factory=list)
    pilot: int = 0
    heldout: int = 0
    seed: int = 0
    evaluations: int = 0
    elapsed_s: float = 0.0
    analytic_first_step: bool = False

    @property
    def gain(self) -> float:
        """Held-out error of the best fixed configuration divided by the calibrated one (>= 1)."""
        return self.baseline["heldout_error"] / self.heldout_error

    def build_solver(self):
        """The solver instance."""
        return parse_solver_spec(self.solver).build()

    def grid_for(self, schedule=None) -> torch.Tensor:
        """The grid as times: the stored times (``schedule=None`` or the calibrated schedule), or the same lambda
        knots on another schedule (its range must hold them)."""
        if schedule is None or repr(schedule) == self.schedule:
            return torch.tensor(self.times, dtype=torch.float64)
        lam = torch.tensor(self.lambdas, dtype=torch.float64)  # increasing lambda = decreasing time
        ends = schedule.inverse_lambda(lam[[0, -1]])
        return grid_from_lambdas(schedule, lam, float(ends[0]), float(ends[-1]))

    def sample_kwargs(self, schedule=None) -> dict[str, Any]:
        """Keywords for [`sample`][sde_diffusion.sample.sample]: ``sample(model, x, **cal.sample_kwargs())``."""
        return {
            "solver": self.build_solver(),
            "steps": self.steps,
            "grid": self.grid_for(schedule),
            "analytic_first_step": self.analytic_first_step,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": _KIND, **asdict(self)}

    def to_json(self, **kwargs) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**document_fields(d, _KIND, SCHEMA_VERSION, "sde_diffusion calibration"))

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(eq=False)  # identity: candidates hold tensors
class _Candidate:
    solver: str
    grid: str
    lambdas: torch.Tensor  # increasing
    pilot_error: float
    heldout_error: float = math.nan
    afs: bool = False

    @property
    def key(self) -> tuple[str, bool]:
        return self.solver, self.afs

    def summary(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "grid": self.grid,
            "analytic_first_step": self.afs,
            "pilot_error": self.pilot_error,
            "heldout_error": self.heldout_error,
        }


class _Search:
    """The pilot / held-out batches, their references and the scoring of (solver, lambda knots) pairs."""

    def __init__(self, model, x_pilot, x_heldout, t0, t1, rtol, deadline, bar):
        self.model, self.sch, self.t0, self.t1 = model, model.schedule, t0, t1
        self.deadline, self.bar, self.evaluations = deadline, bar, 0
        ts = torch.tensor([t0, t1], dtype=torch.float64)
        self.xp, self.xh = x_pilot, x_heldout
        self.rp = probability_flow_reference(model, x_pilot, ts, rtol=rtol, atol=rtol)[-1]
        loose = probability_flow_reference(model, x_pilot, ts, rtol=100 * rtol, atol=100 * rtol)[-1]
        self.reference_error = rms_error(loose, self.rp)
        self.rh = probability_flow_reference(model, x_heldout, ts, rtol=rtol, atol=rtol)[-1]
        lam = self.sch.lambda_(ts)
        self.lam_lo, self.lam_hi = float(lam[0]), float(lam[1])
        self.rtol = rtol

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def times(self, lambdas: torch.Tensor) -> torch.Tensor:
        return grid_from_lambdas(self.sch, lambdas, self.t0, self.t1)

    def family(self, grid: str, steps: int) -> torch.Tensor:
        """Increasing lambda knots of a named grid (families are lambda distributions; model-time grids are not)."""
        name, params = parse_grid(grid)
        if name in GRID_FAMILIES:
            return family_lambdas(name, self.lam_lo, self.lam_hi, steps, **params)
        return self.sch.lambda_(make_grid(self.sch, grid, steps, self.t0, self.t1))

    def error(self, solver, lambdas: torch.Tensor, heldout: bool = False, afs: bool = False) -> float:
        """RMS error at ``t_end`` on the pilot (or held-out) batch (``inf`` for a non-finite solve)."""
        return _rms(self.squared_errors(solver, lambdas, heldout, afs))

    def squared_errors(self, solver, lambdas: torch.Tensor, heldout: bool = False, afs: bool = False) -> torch.Tensor:
        """Per-sample mean squared error at ``t_end`` (float64, CPU; ``inf`` where not finite)."""
        x, ref = (self.xh, self.rh) if heldout else (self.xp, self.rp)
        try:
            out = sample(self.model, x, solver=solver, grid=self.times(lambdas), analytic_first_step=afs).x
        except NonFiniteError:
            return torch.full((x.shape[0],), math.inf, dtype=torch.float64)
        finally:
            self.evaluations += 1
            self.bar.update(1)
        sq = sample_squared_errors(out, ref).cpu()
        return torch.where(torch.isfinite(sq), sq, math.inf)


def _rms(squared: torch.Tensor) -> float:
    e = float(squared.mean().sqrt())
    return e if math.isfinite(e) else math.inf


def significantly_smaller(a: torch.Tensor, b: torch.Tensor, z: float = 2.0) -> bool:
    """Whether per-sample squared errors ``a`` are smaller than ``b`` (the same samples) on average by more than
    ``z`` standard errors of the paired difference -- how the analytic first step must beat the best plain
    configuration on held-out data to be chosen (its variant doubles the finalists; without a margin the held-out
    minimum favours whichever variant is noisier)."""
    d = a - b
    if not bool(torch.isfinite(d).all()):
        return bool(torch.isfinite(a).all()) and not bool(torch.isfinite(b).all())
    n = d.shape[0]
    return bool(d.mean() + z * d.std() / math.sqrt(n) < 0) if n > 1 else bool(d.mean() < 0)


def _prior_batch(model: Model, shape, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ForwardSDE(model.schedule).prior_sample((n, *shape), g, dtype=torch.float64)


def calibrate(
    model: Model,
    nfe: int,
    *,
    x_shape: tuple[int, ...] | None = None,
    x_T: torch.Tensor | None = None,
    solvers="auto",
    grids=SCREEN_GRIDS,
    pilot: int = 128,
    heldout: int = 256,
    seed: int = 0,
    budget_s: float | None = None,
    refine: int = 3,
    rtol: float = 1e-8,
    t_start: float | None = None,
    t_end: float | None = None,
    analytic_first_step: bool | str = "auto",
    device=None,
    dtype=None,
    progress: bool | None = None,
) -> Calibration:
    r"""Choose the deterministic solver configuration and time grid with the smallest error for ``model`` at ``nfe``
    model evaluations (the method is in the module docstring).

    Args:
        model: the [`Model`][sde_diffusion.models.Model] (its network must accept float64 inputs: the reference
            integrates in float64).
        nfe: the budget; each solver runs ``solver.steps_for_nfe(nfe)`` steps.
        x_shape: the event shape of one sample; pilot and held-out start states are drawn from the prior
            \(\mathcal{N}(0, \sigma(t_{\max})^2 I)\) with seeds ``seed`` and ``seed + 1``.
        x_T: start states instead of ``x_shape`` (at least 2): the first half is the pilot, the rest held out.
        solvers: ``"auto"`` ([`AUTO_SOLVERS`][sde_diffusion.calibration.AUTO_SOLVERS]) or a list of
            deterministic configurations.
        grids: the named grids of the screening stage.
        pilot, heldout: batch sizes (with ``x_shape``).
        budget_s: wall-clock budget of the search (counted after the references are computed); the search stops
            where it is when the budget is spent (the validation stage always runs).
        refine: how many of the best configurations get the family-parameter and free-knot stages.
        rtol: tolerance of the dopri5 reference (``atol`` the same).
        t_start, t_end: the interval (default ``t_max -> t_min`` of the schedule).
        analytic_first_step: ``"auto"`` searches every configuration with and without AMED's analytical first step
            ([`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep]); ``True`` only with it, ``False`` only
            without. (It assumes ``t_start`` at high noise, where the data barely show in the state.)
        device, dtype: where and in which precision the solves run (default: those of ``x_T``, else CPU and the
            default dtype); references are float64.
        progress: tqdm bar over solves (``None``: only on a terminal).
    """
    started = time.perf_counter()
    if not isinstance(model, Model):
        raise TypeError(f"model must be a sde_diffusion.Model, got {type(model).__name__}")
    if (x_shape is None) == (x_T is None):
        raise ValueError("give exactly one of x_shape (the event shape of one sample) and x_T (start states)")
    if x_T is not None:
        if x_T.shape[0] < 2:
            raise ValueError("x_T needs at least 2 start states (half pilot, half held out)")
        device = x_T.device if device is None else device
        dtype = x_T.dtype if dtype is None else dtype
        h = x_T.shape[0] // 2
        xp, xh = x_T[:h].to(torch.float64), x_T[h:].to(torch.float64)
    else:
        assert x_shape is not None
        xp, xh = (
            _prior_batch(model, tuple(x_shape), pilot, seed),
            _prior_batch(model, tuple(x_shape), heldout, seed + 1),
        )
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    sch = model.schedule
    t0 = float(sch.t_max if t_start is None else t_start)
    t1 = float(sch.t_min if t_end is None else t_end)
    if analytic_first_step not in ("auto", True, False):
        raise ValueError(f"analytic_first_step must be 'auto', True or False, got {analytic_first_step!r}")
    variants = {"auto": (False, True), True: (True,), False: (False,)}[analytic_first_step]
    specs = [parse_solver_spec(s) for s in (AUTO_SOLVERS if solvers == "auto" else solvers)]
    built: dict[tuple[str, bool], tuple[Any, int]] = {}
    for spec in specs:
        sol = spec.build()
        if sol.stochastic or sol.adaptive:
            raise ValueError(f"calibrate searches deterministic fixed-grid solvers; {spec.label!r} is not one")
        for afs in variants:  # the analytic first step is free: the budget buys the steps of one evaluation more
            steps = sol.steps_for_nfe(nfe + 1 if afs else nfe)
            if steps >= 1:
                built[(spec.label, afs)] = (sol, steps)
    if not built:
        raise ValueError(f"no solver configuration fits the budget of {nfe} model evaluations")

    from tqdm.auto import tqdm

    total = len(built) * len(grids) + refine * 60 + 3 * refine + 8
    bar = tqdm(
        total=total, desc=f"calibrate NFE {nfe}", disable=not progress if progress is not None else None, leave=False
    )
    try:
        s = _Search(model, xp.to(device), xh.to(device), t0, t1, rtol, None, bar)
        s.deadline = None if budget_s is None else time.perf_counter() + float(budget_s)  # the search, not the refs
        s.xp, s.xh = s.xp.to(dtype), s.xh.to(dtype)
        cands = _screen(s, built, grids)
        plain = [c for c in cands if not c.afs] or cands
        fixed = min((c for c in plain if c.grid in _FIXED), key=_pilot, default=min(plain, key=_pilot))
        top = _top_solvers(cands, refine)
        cands += _refine_families(s, built, cands, top)
        cands += _free_knots(s, built, cands, top)
        return _validate(s, cands, fixed, built, nfe, seed, started)
    finally:
        bar.close()


def _pilot(c: _Candidate) -> float:
    return c.pilot_error


def _top_solvers(cands: list[_Candidate], k: int) -> list[tuple[str, bool]]:
    """The ``k`` best solvers by their best pilot error, per first-step variant: plain ones first (a time budget
    that cuts the later stages short keeps the plain search), then those with the analytical first step."""
    out: list[tuple[str, bool]] = []
    for afs in (False, True):
        keys: list[tuple[str, bool]] = []
        for c in sorted((c for c in cands if c.afs is afs), key=_pilot) if k > 0 else ():
            if c.key not in keys:
                keys.append(c.key)
            if len(keys) == k:
                break
        out += keys
    return out


def _screen(s: _Search, built: dict, grids) -> list[_Candidate]:
    out: list[_Candidate] = []
    # plain variants first: a time budget that cuts the screening short keeps the never-worse baseline
    for (label, afs), (sol, steps) in sorted(built.items(), key=lambda kv: kv[0][1]):
        for grid in grids:
            if s.out_of_time() and out:
                return out
            try:
                lam = s.family(grid, steps)
                out.append(_Candidate(label, grid, lam, s.error(sol, lam, afs=afs), afs=afs))
            except ValueError:  # a grid that does not fit this schedule (e.g. time_quadratic with t < 0)
                continue
    return out


def _refine_families(s: _Search, built: dict, cands: list[_Candidate], top: list) -> list[_Candidate]:
    """Bounded scalar search over each parametric family's log-parameter, for the top solvers."""
    from scipy.optimize import minimize_scalar

    out = []
    for label, afs in top:
        sol, steps = built[(label, afs)]
        for fam in GRID_FAMILIES.values():
            if fam.param is None or s.out_of_time():
                continue
            tried: dict[float, float] = {}

            def f(logp, fam=fam, sol=sol, steps=steps, tried=tried, afs=afs):
                p = math.exp(logp)
                try:
                    lam = family_lambdas(fam.name, s.lam_lo, s.lam_hi, steps, **{fam.param: p})
                    e = s.error(sol, lam, afs=afs)
                except ValueError:
                    e = math.inf
                tried[p] = e
                return e if math.isfinite(e) else 1e300

            assert fam.bounds is not None  # (a family with a parameter has its bounds)
            lo, hi = (math.log(b) for b in fam.bounds)
            minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"maxiter": 12, "xatol": 0.02})
            p, e = min(tried.items(), key=lambda kv: kv[1])
            if math.isfinite(e):
                grid = format_grid(fam.name, **{fam.param: round(p, 6)})
                lam = s.family(grid, steps)
                out.append(_Candidate(label, grid, lam, s.error(sol, lam, afs=afs), afs=afs))
    return out


def _local_error_costs(s: _Search, fine: torch.Tensor, proxy, max_jump: int) -> torch.Tensor:
    """``cost[i, j]``: RMS error of one ``proxy`` step from the reference state at knot ``i`` to knot ``j`` against
    the reference there (``j - i <= max_jump``; ``inf`` elsewhere). One batched call per start knot, one grid per
    sample (``(2, B)``)."""
    ts = s.times(fine)
    n = min(s.xp.shape[0], 64)
    traj = probability_flow_reference(s.model, s.xp[:n], ts, rtol=s.rtol, atol=s.rtol)
    k = fine.shape[0] - 1
    cost = torch.full((k + 1, k + 1), math.inf, dtype=torch.float64)
    for i in range(k):
        js = list(range(i + 1, min(k, i + max_jump) + 1))
        x = traj[i].repeat(len(js), *([1] * (traj.ndim - 2)))
        grid = torch.stack([ts[i].expand(len(js) * n), ts[js].repeat_interleave(n)])
        try:
            y = sample(s.model, x.to(s.xp.dtype), solver=proxy, grid=grid).x
        except NonFiniteError:
            continue
        d = (y.to(torch.float64) - traj[js].reshape(y.shape).to(y.device)).reshape(len(js), -1)
        cost[i, js] = d.pow(2).mean(dim=1).sqrt().cpu()
    return cost


def _free_knots(s: _Search, built: dict, cands: list[_Candidate], top: list) -> list[_Candidate]:
    """Dynamic programme over a fine grid (per proxy), then a short pattern search from the best grid found."""
    out = []
    for key in top:
        if s.out_of_time():
            break
        (label, afs), (sol, steps) = key, built[key]
        if steps < 2:
            continue
        fam = min((c for c in cands if c.key == key), key=_pilot).grid  # a named grid (screen or refined)
        mult = 6 if steps <= 12 else 4
        fine = s.family(fam, mult * steps)  # holds the family's own N-step grid: every mult-th knot
        for proxy in _PROXIES:
            if s.out_of_time():
                break
            cost = _local_error_costs(s, fine, parse_solver_spec(proxy).build(), 2 * mult)
            try:
                idx = select_knots(cost, steps)
            except ValueError:
                continue
            lam = fine[idx]
            grid = f"dp[{proxy.split(':')[0]}, {fam}]"
            out.append(_Candidate(label, grid, lam, s.error(sol, lam, afs=afs), afs=afs))
        start = min((c for c in cands + out if c.key == key), key=_pilot)
        if s.out_of_time():
            continue
        lam, e, _, _, _ = coordinate_descent(
            lambda cand, sol=sol, afs=afs: s.error(sol, cand, afs=afs),
            start.lambdas,
            step=0.3,
            min_step=0.05,
            max_sweeps=4,
            max_evals=12 * steps,
            deadline=s.deadline,
        )
        if e < start.pilot_error:
            out.append(_Candidate(label, start.grid + "+cd", lam, e, afs=afs))
    return out


def _validate(s: _Search, cands, fixed: _Candidate, built: dict, nfe: int, seed: int, started: float):
    """Held-out errors of the best five candidates of each first-step variant (by pilot error) and of the fixed
    baseline. The plain winner is what ``analytic_first_step=False`` returns; the analytic-first-step winner replaces
    it only where its held-out error is significantly smaller (a paired test on the held-out samples)."""
    finalists: list[_Candidate] = []
    for afs in (False, True):
        finalists += sorted((c for c in cands if c.afs is afs), key=_pilot)[:5]
    if fixed not in finalists:
        finalists.append(fixed)
    squared = {}
    for c in finalists:
        squared[id(c)] = s.squared_errors(built[c.key][0], c.lambdas, heldout=True, afs=c.afs)
        c.heldout_error = _rms(squared[id(c)])
    finalists.sort(key=lambda c: c.heldout_error)
    plain = [c for c in finalists if not c.afs]
    first_step = [c for c in finalists if c.afs]
    win = plain[0] if plain else first_step[0]
    if plain and first_step and significantly_smaller(squared[id(first_step[0])], squared[id(win)]):
        win = first_step[0]
    finalists.remove(win)
    finalists.insert(0, win)
    steps = built[win.key][1]
    return Calibration(
        solver=win.solver,
        grid=win.grid,
        nfe=nfe,
        steps=steps,
        lambdas=win.lambdas.tolist(),
        times=s.times(win.lambdas).tolist(),
        t_start=s.t0,
        t_end=s.t1,
        schedule=repr(s.sch),
        pilot_error=win.pilot_error,
        heldout_error=win.heldout_error,
        reference_error=s.reference_error,
        baseline=fixed.summary(),
        runners_up=[c.summary() for c in finalists[1:]],
        pilot=s.xp.shape[0],
        heldout=s.xh.shape[0],
        seed=seed,
        evaluations=s.evaluations,
        elapsed_s=time.perf_counter() - started,
        analytic_first_step=win.afs,
    )
