r"""AMED's analytical first step (AFS) as a candidate for issue 14, measured on the accuracy benchmark.

The method (Zhou, Chen, Wang & Chen, "Fast ODE-based sampling for diffusion models in around 5 steps",
arXiv:2312.00094, CVPR 2024; reference code ``zju-pi/diff-sampler``, ``afs=True``): at the start time the noisy
sample is almost pure noise, so the first model evaluation of the solver is replaced by its large-noise limit and
not spent. In EDM variables (``alpha = 1``, ``sigma = t``) the first ODE direction ``d = (x - D(x, t))/t`` is taken
as ``d = x / sqrt(1 + t^2)``, i.e. the noise prediction ``eps = x / sqrt(1 + t^2)``: the sample standardised to unit
variance, as if the data had mean 0 and unit variance. For a general schedule ``x = alpha x0 + sigma eps`` the same
statement (in the VE-scaled state ``x / alpha`` with ``sigma_ve = sigma / alpha``) reads

    eps_AFS(x, t) = x / sqrt(alpha(t)^2 + sigma(t)^2)        (``form="amed"``, the paper's)

(``= x`` on a VP schedule). The other natural limit, ``x0 = 0`` (``eps = x / sigma``, ``form="zero_x0"``), differs
from it by a relative ``O(sigma_ve^-2)``. For data ``N(m, s^2 I)`` the exact prediction is
``eps = sigma (x - alpha m) / (alpha^2 s^2 + sigma^2)``: both forms have a relative error that vanishes like
``sigma_ve^-2`` when ``m = 0`` (``1/(2 sigma_ve^2)`` and ``1/sigma_ve^2`` for ``s = 1``; ``zero_x0`` is exact for a
point mass at 0), but an error ``alpha |m| / sigma`` in ``eps`` -- an ``O(|m|)`` error in the first step's data
prediction -- for data with a non-zero mean, which no step count removes.

Where it enters: :class:`AnalyticFirstStep` wraps a :class:`~sde_diffusion.models.Model`; an evaluation at the
start time (``t >= t_afs``) returns the analytic prediction (in the network's own parametrisation) without calling
the network and without counting an NFE; every other evaluation is the network's. So every solver of ours takes
AFS unchanged, and a budget of ``n`` network evaluations buys the steps of ``n + 1``.

The paper's "polynomial" time schedule is EDM's ``sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho`` (``get_schedule(schedule_type="polynomial")`` in its code, ``rho = 7`` by default): that
is our ``karras`` grid family (uniform in ``sigma_ve^(1/rho)``, ``sigma_ve = e^-lambda``) with its continuous
parameter ``rho``, already searched by calibration (``karras:rho=3, 5, 7, 10`` and refinement); it needs no new
evaluation beyond the ``karras`` column of the accuracy benchmark.

What is measured (same problems, schedules, outputs, evaluation batch, seed and dopri5 references as
``benchmarks.accuracy``; the ``ring-net`` network is retrained by ``problems.train_network``, deterministic, ~15 s):

(a) the calibrated and the best fixed configuration of ``benchmarks/results/accuracy.md`` per cell, rerun without
    AFS (a grid refined by calibration -- ``dp[...]``, ``+cd`` -- cannot be rerun: its times are not stored; its
    error is quoted and the unrefined family is rerun instead);
(b) the same solver and grid family with AFS at the same NFE (one more step);
(c) a sweep of our top solvers x grids, with and without AFS: the best on the evaluation batch, and the
    configuration chosen on a separate selection batch (``cal_seed``) run on the evaluation batch;
(d) :func:`sde_diffusion.calibrate` (accuracy.md's settings, on the selection batch) without AFS and on the AFS
    model, at NFE 5 and 10, run on the evaluation batch; and AFS as a searched option (the one of the two with the
    smaller held-out error). A learned problem's calibration without AFS is also its (a).

Usage::

    python -m benchmarks.candidates.afs                       # writes benchmarks/results/candidates_afs.{md,json}
    python -m benchmarks.candidates.afs --quick --out /tmp/afs  # seconds: ring on edm, NFE 5 and 10
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sde_diffusion.calibration import calibrate
from sde_diffusion.models import Model, broadcast_coeff, convert, large_noise_eps
from sde_diffusion.sample import sample
from sde_diffusion.studies.specs import parse_solver_spec

from ..accuracy import json_safe
from ..accuracy.configurations import Settings
from ..accuracy.problems import (
    LEARNED,
    denoise,
    error_record,
    make_problem,
    reference,
    start_states,
    time_key,
    train_network,
)
from ..accuracy.runners import calibrate_options

ROOT = Path(__file__).resolve().parents[2]
AFS_FORMS = ("amed", "zero_x0")

#: the sweep (c): our top solvers in accuracy.md's rankings ...
SWEEP_SOLVERS = (
    "ipndm:ab_order=3",
    "unipc:predictor_order=2,b_h=bh1,prediction=eps",
    "unipc:predictor_order=3,b_h=bh2",
    "dpm_solver++:order=2,multistep=true",
    "dpm_solver++:order=3,multistep=true",
)
#: ... on the default grid, the paper's polynomial grid (``karras``, rho = 7 and 5), the other families of
#: calibration's search at a few parameters, and the two grids in the model's own time
SWEEP_GRIDS = (
    "logsnr",
    "karras",
    "karras:rho=5.0",
    "vp_uniform",
    "vp_power:p=1.5",
    "vp_quadratic",
    "vp_power:p=3.0",
    "cosine_quadratic",
    "cosine_power:p=3.0",
    "lambda_power:p=0.7",
    "time_uniform",
    "time_quadratic",
)


# ---------------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------------


def afs_eps(x: torch.Tensor, alpha, sigma, form: str = "amed") -> torch.Tensor:
    r"""The large-noise limit of the noise prediction: ``x / sqrt(alpha^2 + sigma^2)`` (``"amed"``,
    arXiv:2312.00094) or ``x / sigma`` (``"zero_x0"``, the data prediction 0). ``alpha``/``sigma`` broadcast
    against ``x``."""
    if form == "amed":
        return large_noise_eps(x, alpha, sigma)
    if form == "zero_x0":
        return x / sigma
    raise ValueError(f"form must be one of {AFS_FORMS}, got {form!r}")


class AnalyticFirstStep(Model):
    r"""A model whose evaluations at the start time are AMED's analytic first step (arXiv:2312.00094).

    At ``t >= t_afs`` (every sample of the batch; ``t_afs`` the grid's first time, in practice ``t_max``) the
    output is :func:`afs_eps` converted to the network's parametrisation: no network call, no NFE. At any other
    time it is the wrapped model's output (one NFE, counted here and by the wrapped model). A batch that mixes
    both raises. Thresholding, if the wrapped model has one, applies to both as usual.

    A solver that evaluates the model once at the first grid point (every solver of ours) therefore spends one
    evaluation less than ``solver.final_nfe(steps)``.
    """

    def __init__(self, base: Model, t_afs: float, form: str = "amed"):
        if not isinstance(base, Model):
            raise TypeError(f"base must be a Model, got {type(base).__name__}")
        if form not in AFS_FORMS:
            raise ValueError(f"form must be one of {AFS_FORMS}, got {form!r}")
        # the wrapped model is the network: it applies its own time input and counts its own NFE
        super().__init__(base, base.schedule, base.prediction, thresholding=base.thresholding)
        self.base = base
        self.t_afs = float(t_afs)
        self.form = form
        self.analytic_calls = 0

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).to("cpu", torch.float64)
        at_start = tt >= self.t_afs * (1.0 - 1e-12)
        if bool(at_start.all()):
            tt = tt.expand(x.shape[0]) if tt.numel() == 1 else tt
            a = broadcast_coeff(self.schedule.alpha(tt).to(x.device, x.dtype), x)
            s = broadcast_coeff(self.schedule.sigma(tt).to(x.device, x.dtype), x)
            self.analytic_calls += 1
            return convert(afs_eps(x, a, s, self.form), x, a, s, "eps", self.prediction)
        if bool(at_start.any()):
            raise ValueError("AnalyticFirstStep: a batch with times both at and below t_afs")
        return super().__call__(x, t)


# ---------------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------------


def run(problem, spec_text: str, grid: str, budget: int, x_T: torch.Tensor, afs: bool, form: str = "amed"):
    """The state at ``t_min`` of one run at ``budget`` network evaluations: ``(x, nfe, steps)``, or ``None`` when
    the budget is too small. With AFS the solver takes the steps of ``budget + 1`` evaluations; the evaluations the
    network actually made are checked against ``final_nfe(steps) - 1``."""
    solver = parse_solver_spec(spec_text).build()
    base = problem.model()
    steps = solver.steps_for_nfe(budget + 1 if afs else budget)
    if steps == 0:
        return None
    model = AnalyticFirstStep(base, problem.t_start, form) if afs else base
    res = sample(model, x_T, solver=solver, steps=steps, grid=grid)
    want = solver.final_nfe(steps) - (1 if afs else 0)
    if not res.nfe == base.nfe == want or want > budget:
        raise AssertionError(f"{spec_text} @ {grid}: {res.nfe} / {base.nfe} network evaluations, expected {want}")
    return res.x, res.nfe, steps


def record(problem, targets, spec_text, grid, nfe, output, afs, x_T, role, form="amed") -> dict:
    """One cell entry: ``state`` at NFE ``nfe``, or ``x0`` (the run at ``nfe - 1``, then one denoising)."""
    rec = dict(
        problem=problem.name,
        schedule=problem.schedule_name,
        output=output,
        nfe=nfe,
        config=spec_text,
        grid=grid,
        afs=afs,
        role=role,
    )
    budget = nfe if output == "state" else nfe - 1
    try:
        out = run(problem, spec_text, grid, budget, x_T, afs, form)
    except (ValueError, FloatingPointError, RuntimeError) as e:
        return {**rec, "error": None, "failed": f"{type(e).__name__}: {e}"}
    if out is None:
        return {**rec, "error": None, "failed": "budget too small"}
    x, used, steps = out
    if output == "x0":
        if not bool(torch.isfinite(x).all()):
            return {**rec, "error": None, "failed": "non-finite output", "steps": steps}
        x, used = denoise(problem, x, problem.t_end), used + 1
    return {**rec, "steps": steps, "nfe_used": used, **error_record(x, targets[output])}


# ---------------------------------------------------------------------------------------------------------------------
# what accuracy.md says
# ---------------------------------------------------------------------------------------------------------------------

_CONFIG = re.compile(r"`([^`]+)` @ (.+)$")
_FIXED = re.compile(r"`([^`]+)` @ (\S+): ([0-9.e+-]+)")


@dataclass
class Cell:
    """One cell of accuracy.md: the calibrated and the best fixed configuration of ours and the best peer."""

    problem: str
    schedule: str
    output: str
    nfe: int
    calibrated: float
    cal_config: str
    cal_grid: str
    peer: float
    peer_label: str
    fixed: float | None = None
    fixed_config: str | None = None
    fixed_grid: str | None = None

    @property
    def key(self) -> tuple:
        return (self.problem, self.schedule, self.output, self.nfe)


def read_accuracy(path: Path) -> dict[tuple, Cell]:
    """The 'Calibrated vs default vs best peer' and the 'Best of ours vs best of diffusers' tables of accuracy.md."""
    cells: dict[tuple, Cell] = {}
    table = None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            table = None
            continue
        c = [s.strip() for s in line.strip().strip("|").split("|")]
        if c[0] == "problem":
            table = {"calibrated": "cal", "ours: best fixed grid (error, median)": "fixed"}.get(c[4])
            continue
        if table is None or c[0].startswith("---"):
            continue
        key = (c[0], c[1], c[2], int(c[3]))
        if table == "cal":
            m = _CONFIG.search(c[5])
            assert m is not None, line
            cells[key] = Cell(*key, float(c[4]), m.group(1), m.group(2), float(c[7].split()[0]), c[7])
        else:
            m = _FIXED.search(c[4])
            assert m is not None, line
            if key in cells:
                cells[key].fixed_config, cells[key].fixed_grid, cells[key].fixed = m.group(1), m.group(2), float(m[3])
    return cells


def family_of(grid: str) -> tuple[str, bool]:
    """A calibrated grid's named family and whether it is that family exactly (``dp[solver, family]`` and ``+cd``
    are refinements whose times accuracy.md does not keep)."""
    g = grid
    exact = True
    if g.endswith("+cd"):
        g, exact = g[: -len("+cd")], False
    if g.startswith("dp["):
        g, exact = g[3:-1].split(",", 1)[1].strip(), False
    return g, exact


# ---------------------------------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------------------------------


def first_prediction(problem, x_T: torch.Tensor) -> dict:
    """How wrong the analytic first step is on this problem: the RMS over the batch of the model's data prediction
    ``D(x_T)`` at ``t_max`` (for the analytic problems the exact posterior mean, close to the data mean) and of the
    difference between AFS's data prediction and it."""
    t = torch.full((x_T.shape[0],), problem.t_start, dtype=torch.float64)
    exact = problem.model().x0(x_T, t)
    fast = AnalyticFirstStep(problem.model(), problem.t_start).x0(x_T, t)
    return {"d_rms": float(exact.pow(2).mean().sqrt()), "afs_error": float((fast - exact).pow(2).mean().sqrt())}


def calibrated_run(problem, settings: Settings, x_sel, x_eval, targets, output: str, nfe: int, afs: bool) -> dict:
    """:func:`sde_diffusion.calibrate` with accuracy.md's settings on the selection batch (its pilot and held-out
    halves; never the evaluation batch) at the budget of ``output`` at NFE ``nfe`` -- with AFS: on the AFS model,
    with the steps of one evaluation more -- then run on the evaluation batch. (With AFS, calibrate's dopri5
    references see the analytic value at ``t_max`` in their first stage only; their adaptive step control keeps
    them within tolerance.)"""
    budget = nfe if output == "state" else nfe - 1
    wrap = (lambda m: AnalyticFirstStep(m, problem.t_start)) if afs else (lambda m: m)
    t0 = time.perf_counter()
    cal = calibrate(
        wrap(problem.model()),
        budget + (1 if afs else 0),
        x_T=x_sel,
        analytic_first_step=False,  # the AFS runs calibrate the AFS model itself; the others must stay without it
        **calibrate_options(problem, settings),
    )
    seconds = time.perf_counter() - t0
    base = problem.model()
    res = sample(wrap(base), x_eval, **cal.sample_kwargs())
    if not res.nfe == base.nfe == budget:
        raise AssertionError(f"calibrated run: {res.nfe} / {base.nfe} network evaluations, expected {budget}")
    x = res.x if output == "state" else denoise(problem, res.x, problem.t_end)
    return dict(
        problem=problem.name,
        schedule=problem.schedule_name,
        output=output,
        nfe=nfe,
        config=cal.solver,
        grid=cal.grid,
        afs=afs,
        role="calibrated here",
        steps=cal.steps,
        heldout_error=cal.heldout_error,
        seconds=seconds,
        **error_record(x, targets[output]),
    )


def evaluate_unit(name: str, schedule: str, cells: dict, settings: Settings, nfes, solvers, grids, log):
    """Every run of one problem on one schedule, on the evaluation batch (``seed``) and -- for the sweep -- on the
    selection batch (``cal_seed``, ``cal_batch`` states: never the evaluation batch, as for calibration in
    accuracy.md). A learned problem's network is retrained here, so accuracy.md's numbers may belong to another
    network: it is calibrated again (``benchmarks.accuracy.runners.run_calibrated``, accuracy.md's settings) at the
    NFE of ``settings.cal_nfe`` that are <= 10. Returns ``(runs, unit information)``."""
    t0 = time.perf_counter()
    problem = make_problem(name, schedule, settings.net_dir)
    learned = (name, schedule) in settings.learned
    batches = {}
    for which, n, seed, rtol in (
        ("eval", settings.n(name), settings.seed, settings.rtol),
        ("select", settings.cal_batch, settings.cal_seed, settings.cal_rtol),
    ):
        x_T = start_states(problem, n, seed)
        ref, info = reference(problem, x_T, [], rtol)
        state = ref[time_key(problem.t_end)]
        batches[which] = (x_T, {"state": state, "x0": denoise(problem, state, problem.t_end)}, ref)
        log(f"{name}/{schedule}: {which} reference {info['nfe']} NFE, {time.perf_counter() - t0:.1f} s")
    x_eval, targets_eval, ref_eval = batches["eval"]
    unit = {"problem": name, "schedule": schedule, "learned": learned, **first_prediction(problem, x_eval)}
    out = []
    x_sel = batches["select"][0]
    for n in (n for n in nfes if n in settings.cal_nfe and n <= 10):
        for output in ("state", "x0"):
            for afs in (False, True):
                rec = calibrated_run(problem, settings, x_sel, x_eval, targets_eval, output, n, afs)
                out.append(rec)
                if learned and not afs:  # (a)/(b) for the learned problem: its calibration's family
                    fam, exact = family_of(rec["grid"])
                    for a in (False, True):
                        args = (problem, targets_eval, rec["config"], fam, n, output, a, x_eval)
                        out.append(record(*args, "recalibrated family"))
        log(f"{name}/{schedule}: calibrated with and without AFS at NFE {n}, {time.perf_counter() - t0:.1f} s")
    for output in ("state", "x0"):
        for n in nfes:
            cell = cells.get((name, schedule, output, n))
            todo = [(s, g, "sweep") for s in solvers for g in grids]
            if cell is not None:
                fam, exact = family_of(cell.cal_grid)
                todo.append((cell.cal_config, fam, "calibrated" if exact else "calibrated family"))
                if cell.fixed_config is not None:
                    todo.append((cell.fixed_config, cell.fixed_grid, "best fixed"))
            for spec_text, grid, role in todo:
                for afs in (False, True):
                    rec = record(problem, targets_eval, spec_text, grid, n, output, afs, x_eval, role)
                    if role == "sweep":
                        x_T, targets, _ = batches["select"]
                        sel = record(problem, targets, spec_text, grid, n, output, afs, x_T, role)
                        rec["select_error"] = sel["error"]
                    out.append(rec)
    log(f"{name}/{schedule}: {len(out)} runs, {time.perf_counter() - t0:.1f} s")
    return out, unit


def _err_of(r: dict | None, key: str) -> float:
    return math.inf if r is None or r.get(key) is None else float(r[key])


def _err(r: dict | None) -> float:
    return _err_of(r, "error")


def _gmean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x) and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan


def _ratio(a: float | None, b: float | None) -> float:
    ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0
    return a / b if ok else math.nan  # type: ignore[operator]


def _below_one(x: float | None) -> bool:
    return x is not None and x < 1


def summarise(runs: list[dict], cells: dict, solvers, grids) -> dict:
    """Per cell: (a) and (b) for the calibrated and the best fixed configuration, the sweep's best (on the
    evaluation batch) and selected (on the selection batch) without and with AFS, the paired ratios (a solvers x
    grids matrix, RMS and median error), and AFS's best against everything of ours without AFS (accuracy.md's
    calibrated and best fixed -- or, for a learned problem, the calibration rerun here -- and every run here) and
    against accuracy.md's best peer (analytic problems only: a learned problem's peers ran on accuracy.md's
    network)."""
    by: dict[tuple, list[dict]] = {}
    for r in runs:
        by.setdefault((r["problem"], r["schedule"], r["output"], r["nfe"]), []).append(r)
    rows = []
    for key, rs in by.items():
        idx = {(r["config"], r["grid"], r["role"], r["afs"]): r for r in rs}
        ratios, medians = [], []
        for sv in solvers:
            ratios.append([])
            medians.append([])
            for g in grids:
                off, on = idx.get((sv, g, "sweep", False)), idx.get((sv, g, "sweep", True))
                ratios[-1].append(_ratio(_err(on), _err(off)))
                medians[-1].append(_ratio(_err_of(on, "error_median"), _err_of(off, "error_median")))
        sweep = [r for r in rs if r["role"] == "sweep"]

        def pick(rows_, err, afs):
            r = min((r for r in rows_ if r["afs"] == afs), key=err)
            return [r["config"], r["grid"], _err(r)]

        def sel(r):
            return _err_of(r, "select_error")

        row = {
            "key": list(key),
            "sweep_off": pick(sweep, _err, False),
            "sweep_on": pick(sweep, _err, True),
            "selected_off": pick(sweep, sel, False),
            "selected_on": pick(sweep, sel, True),
            "best_on": pick(rs, _err, True),
            "best_off": pick(rs, _err, False),
            "ratios": ratios,
            "ratios_median": medians,
        }
        for role in ("calibrated", "calibrated family", "best fixed", "recalibrated family"):
            cand = [r for r in rs if r["role"] == role]
            if cand:
                off = next((r for r in cand if not r["afs"]), None)
                on = next((r for r in cand if r["afs"]), None)
                if off is not None:
                    row[role] = {"config": off["config"], "grid": off["grid"], "off": _err(off), "on": _err(on)}
        here = {r["afs"]: r for r in rs if r["role"] == "calibrated here"}
        for afs, name_ in ((False, "cal_here"), (True, "cal_here_afs")):
            if afs in here:
                r = here[afs]
                row[name_] = [r["config"], r["grid"], _err(r), r["heldout_error"]]
        if len(here) == 2:
            pick_afs = _err_of(here[True], "heldout_error") < _err_of(here[False], "heldout_error")
            row["cal_searched"] = [pick_afs, _err(here[pick_afs])]
            row["cal_afs_vs_cal"] = _ratio(_err(here[True]), _err(here[False]))
            row["searched_vs_cal"] = _ratio(_err(here[pick_afs]), _err(here[False]))
        cell = cells.get(key)
        learned = key[0] in LEARNED
        if learned:
            cal = _err(here.get(False))
            row |= {"learned": True, "calibrated_here": cal}
            ours = min(cal, row["best_off"][2])
        elif cell is not None:
            row |= {"acc_calibrated": cell.calibrated, "acc_fixed": cell.fixed, "acc_peer": cell.peer}
            row["afs_vs_peer"] = _ratio(row["best_on"][2], cell.peer)
            ours = min(cell.calibrated, cell.fixed if cell.fixed is not None else math.inf, row["best_off"][2])
        else:
            ours = row["best_off"][2]
        row["ours_off"] = ours
        row["afs_vs_ours"] = _ratio(row["best_on"][2], ours)
        cal_ref = row.get("calibrated_here", row.get("acc_calibrated"))
        row["selected_vs_calibrated"] = _ratio(row["selected_on"][2], cal_ref if cal_ref is not None else math.nan)
        rows.append(row)
    rows.sort(key=lambda r: (r["key"][0] == "ring-net", r["key"][0] != "gmm64", r["key"][1], r["key"][2], r["key"][3]))
    return {"cells": rows}


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


def _f(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _r(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _cfg(c: str, g: str) -> str:
    return f"`{c}` @ {g}"


def _pairs(cells: list[dict], solvers, grids, key: str = "ratios"):
    """Every paired ratio as ``(cell key, solver, grid, ratio)``."""
    for c in cells:
        for sv, row in zip(solvers, c[key]):
            for g, x in zip(grids, row):
                yield c["key"], sv, g, x


def to_markdown(result: dict) -> str:
    cells = result["cells"]
    solvers, grids = result["solvers"], result["grids"]
    L = [
        "# Candidate: AMED's analytical first step (arXiv:2312.00094)",
        "",
        f"Command: `{result['command']}` -- {result['seconds']:.0f} s (1 process, 1 thread), torch "
        f"{result['torch']}. Problems, schedules, outputs, evaluation batch (seed {result['seed']}) and dopri5 "
        f"references (rtol {result['rtol']:g}) as in `benchmarks.accuracy`; accuracy.md's numbers are read from "
        "`benchmarks/results/accuracy.md`.",
        "",
        "AFS: the solver's evaluation at `t_max` is replaced by `eps = x / sqrt(alpha^2 + sigma^2)` (the paper's "
        "`d = x / sqrt(1 + t^2)` in EDM variables) and not counted; at a budget of n network evaluations the "
        "solver takes the steps of n + 1 (`AnalyticFirstStep` in `benchmarks/candidates/afs.py`; every solver of "
        "ours takes it unchanged). The paper's polynomial time schedule is our `karras` family (uniform in "
        "`sigma_ve^(1/rho)`, continuous `rho`): in the sweep below (rho = 7, 5) and in calibration's search (rho = "
        "3, 5, 7, 10, refined).",
        "",
        "## Verdict",
        "",
    ]
    L += verdict_lines(cells)
    L += [
        "",
        "## Calibration with AFS",
        "",
        "`sde_diffusion.calibrate` with accuracy.md's settings (solvers, screening grids, refinement, 50 s budget, "
        f"rtol {result['cal_rtol']:g}) on the selection batch (seed {result['select_seed']}, "
        f"{result['select_batch']} states: pilot and held-out halves), without AFS and with AFS (on the AFS model, "
        "with the steps of one evaluation more), both run here, then run on the evaluation batch. Searched = what "
        "calibrate would return with AFS as one more searched option: the one of the two with the smaller held-out "
        "error (never the evaluation batch). Ratios against the calibration without AFS run here.",
        "",
        "| problem | schedule | output | NFE | calibrated (accuracy.md) | calibrated here | calibrated with AFS "
        "| with AFS / without | held-out error without / with | searched picks | searched / calibrated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if "cal_here" not in c or "cal_here_afs" not in c:
            continue
        a, b = c["cal_here"], c["cal_here_afs"]
        L.append(
            f"| {' | '.join(map(str, c['key']))} | {_f(c.get('acc_calibrated'))} | {_f(a[2])} ({_cfg(a[0], a[1])}) | "
            f"{_f(b[2])} ({_cfg(b[0], b[1])}) | {_r(c.get('cal_afs_vs_cal'))} | {_f(a[3])} / {_f(b[3])} | "
            f"{'AFS' if c['cal_searched'][0] else 'no AFS'} | {_r(c.get('searched_vs_cal'))} |"
        )
    L += [
        "",
        "## Where the analytic first step is wrong",
        "",
        "At `t_max` the model's data prediction `D(x_T)` is close to the data mean; AFS takes it (nearly) 0. RMS "
        "over the evaluation batch:",
        "",
        "| problem | schedule | RMS of D(x_T) | RMS of AFS's error in D(x_T) |",
        "|---|---|---|---|",
    ]
    for u in result["units"]:
        L.append(f"| {u['problem']} | {u['schedule']} | {_f(u['d_rms'])} | {_f(u['afs_error'])} |")
    L += [
        "",
        "## Per cell: AFS against accuracy.md",
        "",
        "RMS error at NFE n (`x0`: n - 1 evaluations to `t_min`, then the denoising). accuracy.md: calibrated, "
        "best fixed of ours, best peer (for `ring-net`: the network is retrained here and accuracy.md's numbers "
        "belong to another network -- see the last section -- so its calibrated column is `calibrate` rerun here "
        "with accuracy.md's settings, at NFE <= 10, and there is no peer). (a)/(b): the calibrated configuration "
        "(its unrefined grid family where calibration refined the grid, marked *) and the best fixed "
        "configuration, without / with AFS (ratio). Best with AFS: over (b) and the sweep. Best without: "
        "min(calibrated, best fixed, every run here without AFS). vs ours: best with AFS / best without; vs peer: "
        "best with AFS / best peer.",
        "",
        "| problem | schedule | output | NFE | calibrated | best fixed | best peer | calibrated cfg: off -> AFS "
        "| best fixed cfg: off -> AFS | best without AFS | best with AFS | vs ours | vs peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        p, sch, out, n = c["key"]
        if c.get("learned"):
            cal = c.get("recalibrated family")
            star = "*" if cal and cal["off"] != c.get("calibrated_here") else ""
            cal_num = f"{_f(c.get('calibrated_here'))} (here)" if "cal_here" in c else "-"
        else:
            cal = c.get("calibrated") or c.get("calibrated family")
            star = "*" if "calibrated family" in c else ""
            cal_num = _f(c.get("acc_calibrated"))
        fx = c.get("best fixed")
        cal_txt = f"{_f(cal['off'])}{star} -> {_f(cal['on'])} ({_r(_ratio(cal['on'], cal['off']))})" if cal else "-"
        fx_txt = f"{_f(fx['off'])} -> {_f(fx['on'])} ({_r(_ratio(fx['on'], fx['off']))})" if fx else "-"
        bo = c["best_on"]
        L.append(
            f"| {p} | {sch} | {out} | {n} | {cal_num} | {_f(c.get('acc_fixed'))} | {_f(c.get('acc_peer'))} | "
            f"{cal_txt} | {fx_txt} | {_f(c['ours_off'])} | {_f(bo[2])} ({_cfg(bo[0], bo[1])}) | "
            f"{_r(c.get('afs_vs_ours'))} | {_r(c.get('afs_vs_peer'))} |"
        )
    L += [
        "",
        "## Sweep (c): with / without AFS",
        "",
        f"Solvers {', '.join(f'`{x}`' for x in solvers)} on grids {', '.join(grids)}. Best = the smallest error on "
        "the evaluation batch (an oracle choice, like accuracy.md's best fixed); selected = the configuration with "
        f"the smallest error on the selection batch (seed {result['select_seed']}, {result['select_batch']} "
        "states, its own dopri5 reference), then run on the evaluation batch (an honest choice, like "
        "calibration). Paired ratio = error with AFS / error without, same solver and grid at the same NFE; gmean = "
        "geometric mean over the pairs of a cell (RMS error; median error in the next column); wins = pairs with "
        "ratio < 1.",
        "",
        "| problem | schedule | output | NFE | best without AFS | best with AFS | ratio | selected without AFS | "
        "selected with AFS | ratio | selected with AFS / calibrated | paired gmean | paired gmean (median) | wins |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        p, sch, out, n = c["key"]
        a, b = c["sweep_off"], c["sweep_on"]
        sa, sb = c["selected_off"], c["selected_on"]
        rs = [x for row in c["ratios"] for x in row if x is not None and math.isfinite(x)]
        ms = [x for row in c["ratios_median"] for x in row]
        L.append(
            f"| {p} | {sch} | {out} | {n} | {_f(a[2])} ({_cfg(a[0], a[1])}) | {_f(b[2])} ({_cfg(b[0], b[1])}) | "
            f"{_r(_ratio(b[2], a[2]))} | {_f(sa[2])} ({_cfg(sa[0], sa[1])}) | {_f(sb[2])} ({_cfg(sb[0], sb[1])}) | "
            f"{_r(_ratio(sb[2], sa[2]))} | {_r(c.get('selected_vs_calibrated'))} | {_r(_gmean(rs))} | "
            f"{_r(_gmean(ms))} | {sum(map(_below_one, rs))}/{len(rs)} |"
        )
    fams = list(dict.fromkeys(g.split(":")[0] for g in grids))
    nfes = sorted({c["key"][3] for c in cells})
    pairs = list(_pairs(cells, solvers, grids))
    L += [
        "",
        "Paired ratio (RMS error) by NFE, geometric mean over problems, schedules, outputs, solvers and the "
        "grids of a family:",
        "",
    ]
    L += ["| NFE | all | " + " | ".join(fams) + " |", "|---|---|" + "---|" * len(fams)]
    for n in nfes:
        row = [_gmean(x for k, _, _, x in pairs if k[3] == n)]
        row += [_gmean(x for k, _, g, x in pairs if k[3] == n and g.split(":")[0] == f) for f in fams]
        L.append(f"| {n} | " + " | ".join(_r(x) for x in row) + " |")
    L += ["", "By solver:", "", "| NFE | " + " | ".join(f"`{x}`" for x in solvers) + " |"]
    L.append("|---|" + "---|" * len(solvers))
    for n in nfes:
        row = [_gmean(x for k, sv, _, x in pairs if k[3] == n and sv == v) for v in solvers]
        L.append(f"| {n} | " + " | ".join(_r(x) for x in row) + " |")
    L += ["", "By problem and schedule (RMS error / median error):", ""]
    L += ["| problem | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    med = list(_pairs(cells, solvers, grids, "ratios_median"))
    for p, sch in dict.fromkeys((k[0], k[1]) for k, *_ in pairs):
        row = [
            f"{_r(_gmean(x for k, _, _, x in pairs if (k[0], k[1], k[3]) == (p, sch, n)))} / "
            f"{_r(_gmean(x for k, _, _, x in med if (k[0], k[1], k[3]) == (p, sch, n)))}"
            for n in nfes
        ]
        L.append(f"| {p} | {sch} | " + " | ".join(row) + " |")
    L += [
        "",
        "## Reproduction of accuracy.md (no AFS)",
        "",
        "Our rerun without AFS of accuracy.md's best fixed configuration (and of the calibrated one where its grid "
        "is a named grid): rerun / accuracy.md (1 = reproduced to the printed 3 digits). The analytic problems "
        "reproduce; `ring-net` does not: `problems.train_network` (1500 steps, seed 0) gives another network than "
        "the one accuracy.md was measured on, so its accuracy.md numbers are not compared with.",
        "",
        "| problem | schedule | output | NFE | best fixed | calibrated | calibrated here |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c.get("acc_fixed") is None and not c.get("learned"):
            continue
        fx, cal = c.get("best fixed"), c.get("calibrated")
        acc = result.get("accuracy_md", {}).get("/".join(map(str, c["key"])), {})
        fx_ref = c.get("acc_fixed") or acc.get("fixed")
        cal_ref = c.get("acc_calibrated") or acc.get("calibrated")
        L.append(
            f"| {' | '.join(map(str, c['key']))} | {_r(_ratio(fx['off'], fx_ref)) if fx and fx_ref else '-'} | "
            f"{_r(_ratio(cal['off'], cal_ref)) if cal and cal_ref else '-'} | "
            f"{_r(_ratio(c['cal_here'][2], cal_ref)) if 'cal_here' in c and cal_ref else '-'} |"
        )
    if result.get("failed"):
        L += ["", f"Failed runs: {result['failed']}."]
    L += ["", "## Reading", ""] + READING
    return "\n".join(L) + "\n"


#: how to read the tables (no numbers: they are in the tables above)
READING = [
    "- Where AFS is wrong: its data prediction at `t_max` is (nearly) 0 where the model's is `D(x_T)` (table "
    "'Where the analytic first step is wrong'): about 0 for the zero-mean `ring`, the data mean for `gmm64`, and "
    "for `ring-net` the network's own (poor) output at `sigma = 80`. AFS departs from the model's ODE by that much "
    "in its first step; the PF-ODE then contracts the difference (in VE variables a perturbation at high noise "
    "shrinks roughly like `sigma`), and the evaluation AFS saves buys one more step. The trade pays where the "
    "solver's own error dominates (NFE 5-10) and fades where it has become small (NFE 20).",
    "- RMS against median: where the RMS ratio is above 1 and the median ratio below (`gmm64`), AFS moves a few "
    "samples to another mode while improving the rest; a configuration can lose badly on RMS (see the calibrated "
    "families marked * at NFE 10 on `gmm64`).",
    "- `ring-net`: the reference is the network's own dopri5 solution, so AFS's gain there is fidelity to that ODE: "
    "the multistep solvers no longer carry the network's output at `t_max` (far from the data) in their history.",
    "- The paper's polynomial schedule is the `karras` family: no new grid to add. With AFS, this run's "
    "calibrations chose other families (vp_power, cosine_power, lambda_power) in every cell.",
    "- Calibration on the AFS model: its dopri5 references see the analytic value in their first stage only (at "
    "`t_max`); the adaptive error control keeps them within tolerance.",
    "- Caveat: the evaluation problems have zero (`ring`, `ring-net`) or moderate (`gmm64`) data means; data with a "
    "larger mean relative to its spread make AFS's first-step error larger.",
]


def verdict_lines(cells: list[dict]) -> list[str]:
    out = []
    for n in sorted({c["key"][3] for c in cells}):
        cs = [c for c in cells if c["key"][3] == n]
        wins = [c for c in cs if _below_one(c["afs_vs_ours"])]
        peer = [c for c in cs if c.get("afs_vs_peer") is not None]
        beat_peer = [c for c in peer if _below_one(c["afs_vs_peer"])]
        paired = _gmean(x for c in cs for row in c["ratios"] for x in row)
        out.append(
            f"- NFE {n}: the best run with AFS beats the best of ours without AFS in **{len(wins)} of {len(cs)}** "
            f"cells (gmean of the ratio {_r(_gmean(c['afs_vs_ours'] for c in cs))}"
            + (
                "; wins: " + ", ".join(f"{'/'.join(map(str, c['key'][:3]))} {_r(c['afs_vs_ours'])}" for c in wins)
                if wins
                else ""
            )
            + f"); it beats accuracy.md's best peer in {len(beat_peer)} of {len(peer)} analytic cells; paired with / "
            f"without AFS over the sweep: gmean {_r(paired)}."
        )
        cal = [c for c in cs if c.get("cal_afs_vs_cal") is not None and "cal_searched" in c]
        if cal:
            out.append(
                f"  Calibration (held out): calibrate with AFS / calibrate without, both run here: gmean "
                f"{_r(_gmean(c['cal_afs_vs_cal'] for c in cal))}, AFS better in "
                f"{sum(_below_one(c['cal_afs_vs_cal']) for c in cal)} of {len(cal)} "
                f"(range {_r(min(c['cal_afs_vs_cal'] for c in cal))} .. {_r(max(c['cal_afs_vs_cal'] for c in cal))}); "
                f"with AFS as a searched option (the smaller held-out error picks): AFS picked in "
                f"{sum(bool(c['cal_searched'][0]) for c in cal)} of {len(cal)}, searched / calibrated gmean "
                f"{_r(_gmean(c['searched_vs_cal'] for c in cal))}, better in "
                f"{sum(_below_one(c['searched_vs_cal']) for c in cal)}, worse in "
                f"{sum(1 for c in cal if c['searched_vs_cal'] is not None and c['searched_vs_cal'] > 1)}."
            )
        sel = [_ratio(c["selected_on"][2], c["selected_off"][2]) for c in cs]
        vs_cal = [c["selected_vs_calibrated"] for c in cs if c["selected_vs_calibrated"] is not None]
        vs_cal = [x for x in vs_cal if math.isfinite(x)]
        out.append(
            f"  Sweep selection (the sweep's fixed grids, chosen on the selection batch, run on the evaluation "
            f"batch): with AFS / without AFS "
            f"gmean {_r(_gmean(sel))}, AFS better in {sum(map(_below_one, sel))} of {len(cs)}; selected "
            f"with AFS beats the calibrated run in {sum(map(_below_one, vs_cal))} of {len(vs_cal)} (gmean "
            f"{_r(_gmean(vs_cal))})."
        )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--accuracy", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.md")
    ap.add_argument("--networks", type=Path, help="where ring-net's checkpoint goes (default OUT/networks)")
    ap.add_argument("--quick", action="store_true", help="ring on edm only, NFE 5 and 10, two solvers")
    ap.add_argument("--no-net", action="store_true", help="skip ring-net (no training)")
    ap.add_argument("--render", action="store_true", help="rewrite the markdown from OUT/candidates_afs.json")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "candidates_afs.json").read_text())
        (args.out / "candidates_afs.md").write_text(to_markdown(result))
        return result
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    t0 = time.perf_counter()
    settings = Settings(net_dir=str(args.networks or args.out / "networks"), diffusers=False, kdiffusion=False)
    units = [(p, s) for p in settings.problems for s in settings.schedules]
    if not args.no_net:
        units += list(settings.learned)
    nfes, solvers, grids = settings.nfe, SWEEP_SOLVERS, SWEEP_GRIDS
    if args.quick:
        units, nfes, solvers, grids = [("ring", "edm")], (5, 10), SWEEP_SOLVERS[:2], SWEEP_GRIDS[:3]
    cells = read_accuracy(args.accuracy)
    for name, sch in units:
        if (name, sch) in settings.learned:
            train_network(name, sch, settings.net_dir, settings.net_steps)

    def log(m):
        print(f"[{time.perf_counter() - t0:6.1f} s] {m}", file=sys.stderr)

    runs, infos = [], []
    for name, sch in units:
        r, info = evaluate_unit(name, sch, cells, settings, nfes, solvers, grids, log)
        runs += r
        infos.append(info)
    result = {
        "kind": "sde_diffusion.candidate_afs",
        "command": "python -m benchmarks.candidates.afs " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__,
        "seed": settings.seed,
        "rtol": settings.rtol,
        "solvers": list(solvers),
        "grids": list(grids),
        "select_seed": settings.cal_seed,
        "select_batch": settings.cal_batch,
        "cal_rtol": settings.cal_rtol,
        "units": infos,
        "accuracy_md": {
            "/".join(map(str, k)): {"calibrated": c.calibrated, "fixed": c.fixed} for k, c in cells.items()
        },
        "failed": sorted({f"{r['config']} @ {r['grid']}: {r['failed']}" for r in runs if r.get("error") is None}),
        "cells": summarise(runs, cells, solvers, grids)["cells"],
    }
    result["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates_afs.json").write_text(dumps(result))
    md = to_markdown(result)
    (args.out / "candidates_afs.md").write_text(md)
    print(md)
    return result


def dumps(result: dict) -> str:
    """The result as JSON, one line per cell."""
    safe = json_safe(result, digits=6)
    cells = safe.pop("cells")
    head = json.dumps(safe, indent=1)
    body = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cells)
    return head[:-2] + ',\n "cells": [\n' + body + "\n ]\n}\n"


if __name__ == "__main__":
    main()
