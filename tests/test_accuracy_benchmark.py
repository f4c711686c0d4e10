"""The accuracy benchmark (``python -m benchmarks.accuracy``): the --quick run writes a well-formed JSON/markdown pair
whose summary follows from its runs, the harnesses feed diffusers and k-diffusion exactly our problem (same times,
same network): on a grid both can express, their samplers and the equivalent solver of ours agree to round-off; the
calibrated runs never saw the evaluation batch; the learned problem is a trained network with its own reference."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sde_diffusion import sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    """Every public name of the benchmark package's modules in one namespace."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    names = ("", ".configurations", ".problems", ".runners", ".report", ".diffusers_adapter", ".kdiffusion_adapter")
    mods = [importlib.import_module("benchmarks.accuracy" + n) for n in names]
    return SimpleNamespace(**{k: v for m in mods for k, v in vars(m).items() if not k.startswith("_")})


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
    want = {("ring", "vp-discrete"), ("ring", "edm"), ("ring-net", "edm")}
    assert {(p["problem"], p["schedule"]) for p in res["problems"]} == want
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
    if acc.kdiffusion_version() is not None:
        assert "k-diffusion" in libs and res["environment"]["k-diffusion"]
    if acc.diffusers_version() is not None:
        assert "diffusers" in libs and res["environment"]["vp_table_matches_diffusers"] is True
    for p in res["precision"]:
        assert p["model_dtype"] in acc.MODEL_DTYPES and p["error_vs_float64"] >= 0
    assert "# Accuracy benchmark" in md and "Best of ours vs best of diffusers" in md
    assert "## Calibrated vs default vs best peer" in md and "## Default solver" in md


CAL_KEYS = {"calibrated_grid", "calibration_seconds", "calibration_heldout_error", "calibration_baseline", "grid_times"}


def test_quick_calibrated_runs(quick):
    """Calibrated runs for every unit, output and calibrated NFE; their grid is valid with exact end points, and the
    calibration never returned something worse (on its own held-out half) than its best fixed configuration."""
    _, res, _ = quick
    s = res["settings"]
    cal = [r for r in res["runs"] if r["grid"] == "calibrated"]
    want = {(p["problem"], p["schedule"], o, n) for p in res["problems"] for o in ("state", "x0") for n in s["cal_nfe"]}
    assert {(r["problem"], r["schedule"], r["output"], r["nfe_budget"]) for r in cal} == want
    for r in cal:
        assert CAL_KEYS <= set(r) and r["library"] == "ours" and r["eligible"] and r["nfe"] <= r["nfe_budget"]
        assert r["calibration_heldout_error"] <= r["calibration_baseline"]["heldout_error"]
        ts = r["grid_times"]
        assert len(ts) == r["steps"] + 1 and ts[0] == r["t_start"] and ts[-1] == r["t_end"]
        assert all(a > b for a, b in zip(ts, ts[1:])) and r["error"] > 0


def test_calibration_seed_is_not_the_evaluation_seed(acc):
    """Honest hold-out: calibration draws its start states from another seed than the evaluation batch."""
    s = acc.Settings()
    assert s.cal_seed != s.seed and set(s.cal_nfe) <= set(s.target_nfe)
    with pytest.raises(ValueError):
        acc.Settings(seed=s.cal_seed)
    p = acc.make_problem("ring", "edm")
    assert not torch.equal(acc.start_states(p, 8, s.cal_seed), acc.start_states(p, 8, s.seed))
    assert not any(acc.parse_solver_spec(c).build().stochastic for c in s.cal_solvers)


def test_full_settings_cover_issue_14(acc):
    """NFE 5, 10, 20 are target cells; the learned network problem, k-diffusion and calibration are on; the
    default candidates (bare registry names) are all run."""
    s = acc.Settings()
    assert {5, 10, 20} <= set(s.target_nfe) and s.learned and s.kdiffusion and s.cal_nfe
    assert set(acc.DEFAULT_CANDIDATES) <= set(s.ours) and "vp_quadratic" in s.grids
    assert s.default == acc.default_config() and s.default[0] in s.ours


def test_learned_problem_is_a_trained_network_with_its_own_reference(acc, quick):
    """The learned problem's network was trained (its checkpoint exists), its start states come from the prior, and
    its reference is its own dopri5 solution: the reported error estimate is small."""
    out, res, _ = quick
    (p,) = [p for p in res["problems"] if p["problem"] == "ring-net"]
    assert p["reference"]["error_estimate"] < 1e-5 and p["reference"]["rtol"] == 1e-10
    problem = acc.make_problem("ring-net", "edm", res["settings"]["net_dir"])
    assert problem.checkpoint.is_file() and problem.start_kind == "prior"
    x = problem.model().predict(torch.zeros(4, 2), torch.full((4,), 1.0), "x0")
    assert x.shape == (4, 2) and bool(torch.isfinite(x).all())


@pytest.mark.parametrize("schedule", ["edm", "vp-discrete"])
def test_kdiffusion_harness_matches_our_equivalent_solver(acc, schedule):
    """k-diffusion's DPM-Solver++(2M) on its exponential sigma schedule (uniform in lambda) through the harness (VE
    scaling, sigma -> t) equals ours on the logSNR grid without lower-order final step to float64 round-off."""
    if acc.kdiffusion_version() is None:
        pytest.skip("k-diffusion not installed")
    p = acc.make_problem("ring", schedule)
    x_T = acc.start_states(p, 16, 1)
    cfg = acc.KDiffusionConfig("sample_dpmpp_2m", (), "exponential")
    theirs, nfe = acc.kdiffusion_run(cfg, p, x_T, 10, False)
    mine = sample(p.model(), x_T, solver="dpm_solver++", order=2, lower_order_final=False, steps=10, grid="logsnr").x
    assert nfe == 10 and float((theirs - mine).abs().max()) < 1e-12 * max(float(mine.abs().max()), 1.0)


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
        ours = min(r["error"] for r in cell if r["library"] == "ours" and r["grid"] != "calibrated")
        assert h["ours"]["error"] == ours
        theirs = [r["error"] for r in cell if r["library"] == "diffusers"]
        peers = [r["error"] for r in cell if r["library"] in ("diffusers", "k-diffusion")]
        if theirs:
            assert h["diffusers"]["error"] == min(theirs)
            assert h["ratio"] == pytest.approx(ours / min(theirs))
            assert h["target_met"] == (h["ratio"] <= 0.5)
        if peers:
            assert h["peer"]["error"] == min(peers)
            cal = next(r for r in cell if r["library"] == "ours" and r["grid"] == "calibrated")
            assert h["ratio_calibrated"] == pytest.approx(cal["error"] / min(peers))
            assert h["target_met_calibrated"] == (h["ratio_calibrated"] <= 0.5)
            assert h["target_met_default"] == (h["ratio_default"] <= 1.0)
    t = res["summary"]["target"]
    assert t["met"] <= t["cells"] and t["met_calibrated"] <= t["cells_calibrated"]
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
    want = acc.rms_error(acc.denoise(p, ddim5, p.t_end), acc.denoise(p, ref[acc.time_key(p.t_end)], p.t_end))
    assert by["x0"]["error"] == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the harness against diffusers
# ---------------------------------------------------------------------------------------------------------------------


def _diffusers_grid(acc, cfg, plan, problem):
    sched = acc.make_scheduler(cfg)
    with acc.quiet():
        sched.set_timesteps(plan.steps)
    if cfg.space == "edm":
        ts = [acc.snap_time(float(s), problem) for s in sched.sigmas[:-1]]
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
    with acc.default_dtype(dtype):
        theirs = acc.diffusers_loop(plan, p, x0)
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


def test_learned_problem_network_is_reproducible(tmp_path):
    """train_network is deterministic: the initial weights come from seed 0, not from the global RNG state."""
    from benchmarks.accuracy.problems import train_network

    torch.manual_seed(123)
    a = torch.load(train_network("ring-net", "edm", str(tmp_path / "a"), 3), weights_only=False)
    torch.manual_seed(456)
    b = torch.load(train_network("ring-net", "edm", str(tmp_path / "b"), 3), weights_only=False)
    key = next(k for k in ("model", "net", "state_dict", "ema") if k in a)
    for (ka, va), (kb, vb) in zip(a[key].items(), b[key].items()):
        assert ka == kb and torch.equal(va, vb)
