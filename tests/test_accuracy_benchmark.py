"""The accuracy benchmark (benchmarks/accuracy.py): the --quick run writes a well-formed JSON/markdown pair whose
summary follows from its runs, and the harness feeds diffusers exactly our problem (same times, same network): on a
grid both can express, diffusers' schedulers and the equivalent solver of ours agree to float32 round-off."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from sde_diffusion import sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick(acc, tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    acc.main(["--quick", "--out", str(out)])
    torch.set_default_dtype(torch.float64)
    return out, json.loads((out / "accuracy.json").read_text()), (out / "accuracy.md").read_text()


RUN_KEYS = {
    "library",
    "problem",
    "schedule",
    "config",
    "family",
    "grid",
    "output",
    "nfe_budget",
    "nfe",
    "steps",
    "t_start",
    "t_end",
    "eligible",
    "error",
    "error_median",
}


def test_quick_run_schema(acc, quick):
    _, res, md = quick
    assert res["schema_version"] == acc.SCHEMA_VERSION and res["kind"] == acc.KIND
    assert res["settings"]["quick"] is True and res["timing"]["total_s"] > 0
    assert {(p["problem"], p["schedule"]) for p in res["problems"]} == {("ring", "vp-discrete"), ("ring", "edm")}
    for p in res["problems"]:
        assert 0 <= p["reference"]["error_estimate"] < 1e-6 and p["reference"]["rtol"] == 1e-10
    libs = {r["library"] for r in res["runs"]}
    assert "ours" in libs
    for r in res["runs"]:
        assert RUN_KEYS <= set(r), set(r) ^ RUN_KEYS
        assert r["output"] in ("state", "x0") and r["nfe"] <= r["nfe_budget"]
        assert r["error"] is not None and math.isfinite(r["error"]) and r["error"] > 0
        if r["library"] == "ours":
            assert r["t_end"] == (0.001 if r["schedule"] == "vp-discrete" else 0.002)
    if acc.diffusers_version() is not None:
        assert "diffusers" in libs and res["environment"]["vp_table_matches_diffusers"] is True
    for p in res["precision"]:
        assert p["model_dtype"] in acc.MODEL_DTYPES and p["error_vs_float64"] >= 0
    assert "# Accuracy benchmark" in md and "Best of ours vs best of diffusers" in md
    assert "## Target cells" in md and "## Optimised grids" in md


OPT_KEYS = {
    "init_grid",
    "pilot_seed",
    "pilot_n",
    "pilot_error_init",
    "pilot_error",
    "opt_evaluations",
    "grid_times",
    "error_init_grid",
    "error_median_init_grid",
    "accepted",
    "opt_heldout_error",
    "opt_heldout_error_init",
}


def test_quick_optimised_runs(acc, quick):
    """The quick run has optimised-grid runs for every configured config, target NFE, cell and output; their grid is
    a valid grid with the right number of steps and the exact end points, their pilot batch is not the evaluation
    batch, the search never ends worse than it started (pilot error), and a grid that does not lower the validation
    error is not used."""
    _, res, _ = quick
    s = res["settings"]
    opt = [r for r in res["runs"] if r["grid"] == "optimised"]
    want = {
        (p["problem"], p["schedule"], c, o, n)
        for p in res["problems"]
        for c in s["opt_configs"]
        for o in ("state", "x0")
        for n in s["opt_nfe"]
    }
    assert {(r["problem"], r["schedule"], r["config"], r["output"], r["nfe_budget"]) for r in opt} == want
    for r in opt:
        assert OPT_KEYS <= set(r) and r["library"] == "ours" and r["eligible"]
        assert r["pilot_seed"] == s["opt_seed"] != s["seed"] and r["pilot_n"] == s["opt_pilot"][r["problem"]]
        assert r["init_grid"] in s["grids"] and r["pilot_error"] <= r["pilot_error_init"]
        assert r["nfe"] == r["nfe_budget"] and r["steps"] == r["nfe_budget"] - (r["output"] == "x0")
        ts = r["grid_times"]
        assert len(ts) == r["steps"] + 1 and ts[0] == r["t_start"] and ts[-1] == r["t_end"]
        assert all(a > b for a, b in zip(ts, ts[1:]))
        assert r["error"] > 0 and r["error_init_grid"] > 0
        # kept only if it lowers the validation error; otherwise the run is the start grid's run
        assert r["accepted"] == (r["opt_heldout_error"] < r["opt_heldout_error_init"])
        if not r["accepted"]:
            assert r["error"] == r["error_init_grid"]
    assert len(res["summary"]["optimised"]) == len(opt)


def test_pilot_batch_is_not_the_evaluation_batch(acc):
    """Honest hold-out: the pilot (and the optimiser's held-out) seeds must differ from the evaluation seed, so the
    pilot states differ from the evaluation states."""
    s = acc.Settings()
    assert s.opt_seed != s.seed and s.opt_seed + 1 != s.seed
    assert set(s.opt_nfe) <= set(s.target_nfe) and s.opt_configs
    for seed in (s.opt_seed, s.opt_seed + 1):
        with pytest.raises(ValueError):
            acc.Settings(seed=seed)
    p = acc.make_problem("ring", "edm")
    assert not torch.equal(acc.start_states(p, 8, s.opt_seed), acc.start_states(p, 8, s.seed))


def test_full_settings_include_optimised_part(acc):
    """The full run optimises 2-4 deterministic configurations, at both outputs' budgets, on every problem."""
    s = acc.Settings()
    assert 2 <= len(s.opt_configs) <= 4
    assert not any(acc.parse_solver_spec(c).build().stochastic for c in s.opt_configs)
    assert s.opt_budgets() == sorted({b for n in s.opt_nfe for b in (n - 1, n)})
    assert set(dict(s.opt_pilot)) == set(s.problems)


def test_pilot_problem_memoises_the_reference(acc):
    """PilotProblem's "exact flow" is the torchdiffeq reference, computed once per batch."""
    p = acc.make_problem("ring", "edm")
    pilot = acc.PilotProblem(p, 1e-9)
    x = acc.start_states(p, 8, 3)
    r1 = pilot.exact_flow(x)
    ref, _ = acc.reference(p, x, [], 1e-10)
    assert acc.rms_error(r1, ref[acc._key(p.t_end)]) < 1e-7
    assert torch.equal(pilot.exact_flow(x.clone()), r1) and len(pilot._memo) == 1


def test_quick_summary_follows_from_runs(quick):
    _, res, _ = quick
    for h in res["summary"]["headline"]:
        cell = [
            r
            for r in res["runs"]
            if (r["problem"], r["schedule"], r["output"], r["nfe_budget"])
            == (h["problem"], h["schedule"], h["output"], h["nfe"])
            and r["eligible"]
        ]
        ours = min(r["error"] for r in cell if r["library"] == "ours" and r["grid"] != "optimised")
        ours_opt = min(r["error"] for r in cell if r["library"] == "ours")
        assert h["ours"]["error"] == ours and h["ours_optimised"]["error"] == ours_opt <= ours
        theirs = [r["error"] for r in cell if r["library"] == "diffusers"]
        if theirs:
            assert h["diffusers"]["error"] == min(theirs)
            assert h["ratio"] == pytest.approx(ours / min(theirs))
            assert h["ratio_optimised"] == pytest.approx(ours_opt / min(theirs))
            assert h["target_met"] == (h["ratio"] <= 0.5)
            assert h["target_met_optimised"] == (h["ratio_optimised"] <= 0.5)
    t = res["summary"]["target"]
    assert t["met"] <= t["met_optimised"] <= t["cells"]
    top = res["summary"]["ranking"]["state"]["target_nfe"][0]
    ratios = []
    for h in res["summary"]["headline"]:
        if h["output"] == "state" and h["nfe"] in res["settings"]["target_nfe"]:
            mine = next(
                r
                for r in res["runs"]
                if r["library"] == "ours"
                and r["config"] == top["config"]
                and r["grid"] == top["grid"]
                and r["output"] == "state"
                and (r["problem"], r["schedule"], r["nfe_budget"]) == (h["problem"], h["schedule"], h["nfe"])
            )
            ratios.append(mine["error"] / h["ours"]["error"])
    assert top["regret"] == pytest.approx(math.exp(sum(map(math.log, ratios)) / len(ratios)))
    assert top["worst"] == pytest.approx(max(ratios))


def test_x0_output_is_denoised_state(acc):
    """Our x0 record at budget n is the exact denoising of the n - 1 run: NFE n, and with a point mass (every
    exponential integrator exact, the data prediction constant) the error is round-off."""
    settings = acc.Settings(problems=("ring",), nfe=(6,), grids=("logsnr",), batch=(("ring", 8),), ours=("ddim",))
    p = acc.make_problem("ring", "vp-discrete")
    x_T = acc.start_states(p, 8, 0)
    ref, _ = acc.reference(p, x_T, [], 1e-10)
    runs = acc.run_ours(p, x_T, ref, settings)
    by = {r["output"]: r for r in runs}
    assert by["state"]["nfe"] == 6 and by["x0"]["nfe"] == 6 and by["x0"]["steps"] == 5
    ddim5 = sample(p.model(), x_T, solver="ddim", steps=5, grid="logsnr").x
    want = acc.rms_error(acc.denoise(p, ddim5, p.t_end), acc.denoise(p, ref[acc._key(p.t_end)], p.t_end))
    assert by["x0"]["error"] == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the harness against diffusers
# ---------------------------------------------------------------------------------------------------------------------


def _diffusers_grid(acc, cfg, plan, problem):
    sched = acc._make_scheduler(cfg)
    with acc._quiet():
        sched.set_timesteps(plan.steps)
    if cfg.space == "edm":
        ts = [acc._snap(float(s), problem) for s in sched.sigmas[:-1]]
    else:
        ts = [(float(k) + 1) / acc.N_TRAIN for k in sched.timesteps] + [problem.t_end]
    ts = torch.tensor(ts, dtype=torch.float64)
    return ts[:-1] if ts[-1] == ts[-2] else ts  # diffusers' sigma_min step from sigma_min to itself is a no-op


PARITY = [
    (
        "vp-discrete",
        dict(
            cls="DPMSolverMultistepScheduler",
            grid="trailing",
            output="state",
            space="vp",
            kwargs=dict(timestep_spacing="trailing", solver_order=2, final_sigmas_type="sigma_min"),
        ),
        dict(solver="dpm_solver++", order=2),
    ),
    (
        "vp-discrete",
        dict(
            cls="UniPCMultistepScheduler",
            grid="trailing",
            output="state",
            space="vp",
            kwargs=dict(timestep_spacing="trailing", solver_order=3, final_sigmas_type="sigma_min"),
        ),
        dict(solver="unipc", predictor_order=3, lower_order_final=True),
    ),
    (
        "vp-discrete",
        dict(
            cls="EulerDiscreteScheduler",
            grid="trailing",
            output="state",
            space="ve",
            kwargs=dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"),
        ),
        dict(solver="ddim"),
    ),
    (
        "edm",
        dict(
            cls="EDMDPMSolverMultistepScheduler",
            grid="karras",
            output="state",
            space="edm",
            kwargs=dict(solver_order=2, final_sigmas_type="sigma_min"),
        ),
        dict(solver="dpm_solver++", order=2, lower_order_final=False),
    ),
    (
        "edm",
        dict(
            cls="EDMEulerScheduler",
            grid="karras",
            output="state",
            space="edm",
            kwargs=dict(final_sigmas_type="sigma_min"),
        ),
        dict(solver="ddim"),
    ),
]


@pytest.mark.parametrize("schedule,cfg,ours", PARITY, ids=[c["cls"] for _, c, _ in PARITY])
def test_harness_matches_our_equivalent_solver(acc, schedule, cfg, ours):
    """diffusers through the harness (time mapping, VE scaling, EDM preconditioning inverted) equals our solver on
    diffusers' own grid to float32 round-off: the problem fed to diffusers is ours."""
    pytest.importorskip("diffusers")
    cfg = acc.DiffusersConfig(cfg["cls"], tuple(cfg["kwargs"].items()), cfg["grid"], cfg["output"], cfg["space"])
    p = acc.make_problem("ring", schedule)
    x_T = acc.start_states(p, 16, 1)
    plan = acc.plan_diffusers(cfg, 10, p)
    assert plan.at_t_min and plan.nfe == 10 and plan.t_start == p.t_start
    x0 = x_T
    dtype = torch.float32 if cfg.cls.startswith("UniPC") else torch.float64  # see run_diffusers_one
    with acc._default_dtype(dtype):
        theirs = acc._diffusers_loop(plan, p, x0)
    mine = sample(p.model(), x0, grid=_diffusers_grid(acc, cfg, plan, p), **ours).x
    scale = float(mine.abs().max())
    assert float((theirs - mine).abs().max()) < 2e-6 * max(scale, 1.0)


def test_diffusers_default_is_in_the_sweep(acc):
    """The summary's "diffusers default" row refers to a configuration that the sweep runs, and it is what
    ``DPMSolverMultistepScheduler()`` is out of the box."""
    diffusers = pytest.importorskip("diffusers")
    labels = {c.label for c in acc.diffusers_configs("vp-discrete")}
    assert acc.DIFFUSERS_DEFAULT.label in labels
    stock = diffusers.DPMSolverMultistepScheduler().config
    assert all(stock[k] == v for k, v in acc.DIFFUSERS_DEFAULT.kwargs)
