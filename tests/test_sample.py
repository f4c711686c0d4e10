"""The one sampling loop: reproducibility, per-sample grids, the manual Sampler, NFE accounting, the final
denoising, the coefficient-plan cache, trajectories and callbacks, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from solver_checks import F64, gaussian_2d, mixture_2d, prior

from sde_diffusion.analytic import PointMass
from sde_diffusion.grids import make_grid
from sde_diffusion.models import Model
from sde_diffusion.reference import brownian_path
from sde_diffusion.sample import NonFiniteError, Sampler, SampleResult, sample
from sde_diffusion.schedules import EDM, VPLinear
from sde_diffusion.solvers import DDIM, get_solver, registered_solvers
from sde_diffusion.solvers.base import plan_cache_stats

# (name, options, randomness needed, exact NFE for N steps)
SOLVERS = [
    ("ddim", {}, False, lambda n: n),
    ("ddim", {"eta": 1.0}, True, lambda n: n),
    ("ddpm", {}, True, lambda n: n),
    ("ddpm", {"variance": "beta"}, True, lambda n: n),
    ("euler", {"variable": "t"}, False, lambda n: n),
    ("euler", {"variable": "sigma"}, False, lambda n: n),
    ("heun", {}, False, lambda n: 2 * n - 1),
    ("euler_maruyama", {}, True, lambda n: n),
    ("pc", {"n_corrector": 0}, True, lambda n: n),
    ("pc", {"n_corrector": 2}, True, lambda n: 3 * n),
]
SOLVER_IDS = [f"{name}{''.join(f'-{k}={v}' for k, v in opts.items())}" for name, opts, _, _ in SOLVERS]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def setup():
    sch = VPLinear()
    return sch, mixture_2d().model(sch, "eps"), prior(sch, 6)


# ---------------------------------------------------------------------------------------------------------------------
# NFE accounting and the final denoising
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options", "random", "nfe"), SOLVERS, ids=SOLVER_IDS)
@pytest.mark.parametrize("steps", [1, 5])
def test_nfe_is_exact(setup, name, options, random, nfe, steps):
    sch, model, x = setup
    kw = {"generator": _gen()} if random else {}
    out = sample(model, x, solver=name, steps=steps, **options, **kw)
    assert isinstance(out, SampleResult)
    assert out.nfe == nfe(steps) == get_solver(name, **options).final_nfe(steps)
    assert out.ts.shape == (steps + 1,) and out.x.shape == x.shape
    den = sample(model, x, solver=name, steps=steps, denoise_to_zero=True, **options, **kw)
    assert den.nfe == out.nfe + 1


def test_denoise_to_zero_is_the_data_prediction_at_t_end():
    sch = EDM()
    m = torch.tensor([0.3, -0.2], dtype=F64)
    model = PointMass(m).model(sch, "eps")
    x = prior(sch, 4)
    out = sample(model, x, steps=6, denoise_to_zero=True)
    torch.testing.assert_close(out.x, m.expand_as(x), rtol=0, atol=1e-12)  # the point-mass denoiser is exact
    plain = sample(model, x, steps=6)
    want = model.x0(plain.x, torch.full((4,), sch.t_min, dtype=F64))
    torch.testing.assert_close(out.x, want, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# reproducibility, the manual loop, per-sample grids
# ---------------------------------------------------------------------------------------------------------------------

STOCHASTIC = [("ddpm", {}), ("euler_maruyama", {}), ("pc", {}), ("ddim", {"eta": 0.7})]


@pytest.mark.parametrize(("name", "options"), STOCHASTIC)
def test_same_seed_same_output(setup, name, options):
    sch, model, x = setup
    a = sample(model, x, solver=name, steps=8, generator=_gen(3), **options).x
    b = sample(model, x, solver=name, steps=8, generator=_gen(3), **options).x
    c = sample(model, x, solver=name, steps=8, generator=_gen(4), **options).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    ("name", "options", "random"),
    [("ddim", {}, False), ("heun", {}, False), ("ddpm", {}, True), ("pc", {"n_corrector": 1}, True)],
)
def test_manual_sampler_loop_equals_sample(setup, name, options, random):
    sch, model, x = setup
    kw = {"generator": _gen(9)} if random else {}
    s = Sampler(model, x, solver=name, steps=7, grid="karras", **options, **kw)
    y, state = s.init(x)
    for i in range(s.num_steps):
        y, state = s.step(y, state, i)
    y = s.denoise(y)
    kw = {"generator": _gen(9)} if random else {}
    out = sample(model, x, solver=name, steps=7, grid="karras", denoise_to_zero=True, **options, **kw)
    assert torch.equal(y, out.x)
    assert s.num_steps == 7 and torch.equal(s.ts, out.ts)


def _per_sample_grid(sch, steps, batch):
    """Different logsnr grids per column: start and end times spread over the schedule's range."""
    cols = []
    for j in range(batch):
        t_start = sch.t_max - 0.1 * j / batch
        t_end = sch.t_min * (1 + 20 * j / batch)
        cols.append(make_grid(sch, "logsnr", steps, t_start, t_end))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize(
    ("name", "options", "random"),
    [
        ("ddim", {}, False),
        ("heun", {"variable": "t"}, False),
        ("euler", {"variable": "sigma"}, False),
        ("ddpm", {}, True),
        ("euler_maruyama", {}, True),
        ("ddim", {"eta": 1.0}, True),
    ],
)
def test_per_sample_grid_equals_running_samples_one_by_one(setup, name, options, random):
    sch, model, x = setup
    steps, batch = 9, x.shape[0]
    grid = _per_sample_grid(sch, steps, batch)
    z = torch.randn((steps, *x.shape), generator=_gen(2), dtype=F64)
    kw = {"noise": z} if random else {}
    out = sample(model, x, solver=name, grid=grid, denoise_to_zero=True, **options, **kw)
    assert out.ts.shape == (steps + 1, batch)
    for j in range(batch):
        kw = {"noise": z[:, j : j + 1]} if random else {}
        one = sample(model, x[j : j + 1], solver=name, grid=grid[:, j], denoise_to_zero=True, **options, **kw)
        torch.testing.assert_close(out.x[j : j + 1], one.x, rtol=1e-13, atol=1e-13)


def test_per_sample_grid_must_match_the_batch(setup):
    sch, model, x = setup
    with pytest.raises(ValueError, match="columns"):
        sample(model, x, grid=_per_sample_grid(sch, 4, x.shape[0] + 1))


def test_brownian_noise_needs_a_shared_grid(setup):
    sch, model, x = setup
    bm = brownian_path(x, sch.t_min, sch.t_max, seed=0)
    with pytest.raises(ValueError, match="shared"):
        sample(model, x, solver="euler_maruyama", grid=_per_sample_grid(sch, 4, x.shape[0]), noise=bm)


# ---------------------------------------------------------------------------------------------------------------------
# solver resolution, trajectory, callback, plan cache
# ---------------------------------------------------------------------------------------------------------------------


def test_solver_by_name_class_or_instance(setup):
    sch, model, x = setup
    a = sample(model, x, solver="ddim", steps=4).x
    assert torch.equal(a, sample(model, x, solver=DDIM, steps=4).x)
    assert torch.equal(a, sample(model, x, solver=DDIM(), steps=4).x)
    with pytest.raises(TypeError, match="instance"):
        sample(model, x, solver=DDIM(), steps=4, eta=0.5)
    with pytest.raises(TypeError, match="bad options"):
        sample(model, x, solver="heun", steps=4, eta=0.5)


def test_every_solver_of_this_family_is_registered():
    names = set(registered_solvers())
    assert {"ddim", "ddim_inverse", "ddpm", "euler", "heun", "euler_maruyama", "pc"} <= names


def test_trajectory_and_callback(setup):
    sch, model, x = setup
    seen = []
    out = sample(model, x, steps=5, return_trajectory=True, callback=lambda i, t, y: seen.append((i, float(t), y)))
    assert len(out.trajectory) == 6 and torch.equal(out.trajectory[0], x) and torch.equal(out.trajectory[-1], out.x)
    assert [i for i, _, _ in seen] == list(range(5))
    assert [t for _, t, _ in seen] == out.ts[1:].tolist()
    assert all(torch.equal(y, out.trajectory[i + 1]) for i, _, y in seen)


def test_progress_bar(setup):
    pytest.importorskip("tqdm")
    sch, model, x = setup
    assert torch.equal(sample(model, x, steps=3, progress=True).x, sample(model, x, steps=3).x)


def test_plan_cache_is_hit_by_repeated_calls():
    sch = VPLinear()  # a fresh schedule: the first call cannot hit
    model = gaussian_2d().model(sch)
    x = prior(sch, 3)
    before = dict(plan_cache_stats)
    first = sample(model, x, steps=13)
    assert plan_cache_stats["misses"] == before["misses"] + 1 and plan_cache_stats["hits"] == before["hits"]
    second = sample(model, x, steps=13)
    assert plan_cache_stats["hits"] == before["hits"] + 1 and plan_cache_stats["misses"] == before["misses"] + 1
    assert torch.equal(first.x, second.x)
    sample(model, x, grid=first.ts.clone())  # an equal explicit grid is the same plan
    assert plan_cache_stats["hits"] == before["hits"] + 2
    sample(model, x, steps=14)  # another grid, another solver or another batch size is a new plan
    sample(model, x, steps=13, solver="heun")
    sample(model, prior(sch, 4), steps=13)
    assert plan_cache_stats["misses"] == before["misses"] + 4
    assert Sampler(model, x, steps=13).plan is Sampler(model, x, steps=13).plan


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_below_one(setup, steps):
    sch, model, x = setup
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(model, x, steps=steps)


def test_steps_missing(setup):
    sch, model, x = setup
    with pytest.raises(ValueError, match="steps is required"):
        sample(model, x)


def test_unknown_solver_lists_the_known_ones(setup):
    sch, model, x = setup
    with pytest.raises(ValueError, match=r"unknown solver 'rk45'; known solvers: .*ddim, ddim_inverse, ddpm.*heun"):
        sample(model, x, solver="rk45", steps=3)
    with pytest.raises(TypeError, match="solver must be"):
        sample(model, x, solver=3, steps=3)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([0.001, 0.5, 1.0], "strictly decreasing"),
        ([1.0, 0.3, 0.6, 0.001], "strictly decreasing"),
        ([1.0, 0.5, 0.5, 0.001], "duplicate"),
        ([2.0, 0.5, 0.001], r"\[t_min, t_max\]"),
        ([1.0, 0.5, 0.0], r"\[t_min, t_max\]"),
    ],
)
def test_bad_grid(setup, grid, message):
    sch, model, x = setup
    with pytest.raises(ValueError, match=message):
        sample(model, x, grid=torch.tensor(grid, dtype=F64))


@pytest.mark.parametrize(("name", "options"), STOCHASTIC)
def test_stochastic_solver_needs_randomness(setup, name, options):
    sch, model, x = setup
    with pytest.raises(ValueError, match="stochastic.*generator"):
        sample(model, x, solver=name, steps=3, **options)


def test_bad_noise_tensor(setup):
    sch, model, x = setup
    with pytest.raises(ValueError, match="one more"):
        sample(model, x, solver="ddpm", steps=3, noise=torch.zeros((2, *x.shape), dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        sample(model, x, solver="ddpm", steps=3, noise=torch.zeros((3, x.shape[0], 5), dtype=F64))
    with pytest.raises(TypeError, match="noise must be"):
        sample(model, x, solver="ddpm", steps=3, noise=[0.0])


def test_model_must_be_a_model(setup):
    sch, model, x = setup
    with pytest.raises(TypeError, match="Model"):
        sample(model.fn, x, steps=3)


def _nan_below(t_bad: float, sch):
    """The Gaussian oracle, but NaN wherever the time is below ``t_bad``."""
    oracle = gaussian_2d().model(sch, "eps")

    def fn(x, t):
        out = oracle.fn(x, t)
        return torch.where((t < t_bad)[:, None], torch.full_like(out, float("nan")), out)

    return Model(fn, sch, "eps")


def test_non_finite_model_output_names_the_step(setup):
    sch, _, x = setup
    ts = make_grid(sch, "logsnr", 10)
    k = int((ts < 0.3).nonzero()[0, 0])  # the first step that evaluates the model below t = 0.3
    with pytest.raises(NonFiniteError, match=f"after step {k} ") as info:
        sample(_nan_below(0.3, sch), x, grid=ts)
    assert info.value.step == k
    assert isinstance(info.value, FloatingPointError)
    out = sample(_nan_below(0.3, sch), x, grid=ts, check_finite=False)
    assert not bool(torch.isfinite(out.x).any())


def test_non_finite_final_denoising_is_step_n(setup):
    sch, _, x = setup
    model = _nan_below(sch.t_min * 1.0001, sch)  # only the evaluation at t_end is NaN
    sample(model, x, steps=4)
    with pytest.raises(NonFiniteError) as info:
        sample(model, x, steps=4, denoise_to_zero=True)
    assert info.value.step == 4


# ---------------------------------------------------------------------------------------------------------------------
# front-door validation, bounded NFE -> steps rule, arguments that cannot be honoured (issue 15, items 1, 6, 7, 9)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_T", "error", "message"),
    [
        (torch.ones(2, 3, dtype=torch.int64), TypeError, "x_T must be a floating-point"),
        (np.ones((2, 3)), TypeError, "x_T must be a torch.Tensor"),
        (torch.tensor(1.0), ValueError, "x_T must have a batch dimension"),
        (torch.ones(0, 3), ValueError, "x_T has an empty batch"),
    ],
)
def test_bad_initial_state_is_refused_at_the_front_door(x_T, error, message):
    model = PointMass(torch.tensor([0.1, 0.2, 0.3])).model(VPLinear())
    for solver in ("ddim", "adaptive_multistep"):
        with pytest.raises(error, match=message):
            sample(model, x_T, solver=solver, **({"steps": 4} if solver == "ddim" else {}))


def test_generator_must_be_a_generator():
    model = PointMass(torch.tensor([0.1])).model(VPLinear())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample(model, torch.ones(2, 1), solver="ddpm", steps=4, generator=0)


def test_sampler_step_validates_its_index():
    model = PointMass(torch.tensor([0.1])).model(VPLinear())
    s = Sampler(model, torch.ones(2, 1), solver="ddim", steps=4)
    x, state = s.init(torch.ones(2, 1))
    for bad, error in ((-1, ValueError), (4, ValueError), (1.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="i"):
            s.step(x, state, bad)
    s.step(x, state, 3)


def test_steps_for_nfe_is_bounded_for_every_registered_solver():
    """One NFE -> steps rule (the Solver base's bisection): for every registered solver and budget the answer is the
    largest step count that fits, found with O(log nfe) cost evaluations -- no unbounded loop (dpm_solver_fast used to
    hang the CLI)."""
    for name in sorted(registered_solvers()):
        solver = get_solver(name)
        if solver.adaptive:
            continue
        for nfe in (1, 2, 7, 20, 97):
            steps = solver.steps_for_nfe(nfe)
            assert steps == 0 or solver.final_nfe(steps) <= nfe, (name, nfe, steps)
            assert solver.final_nfe(steps + 1) > nfe, (name, nfe, steps)
    fast = get_solver("dpm_solver_fast", nfe=20)
    assert fast.steps_for_nfe(20) == 7 and fast.steps_for_nfe(19) == 0 and fast.steps_for_nfe(1000) == 7
    assert get_solver("dpm_solver_fast").steps_for_nfe(20) == 7  # budgets 3K - 1: K = 7 spends exactly 20
    with pytest.raises(ValueError, match="budget"):
        get_solver("ddim").steps_for_nfe(0)


def test_dpm_solver_fast_on_the_fixed_grid_path():
    sch = VPLinear()
    model = PointMass(torch.tensor([0.1, 0.2])).model(sch, "eps")
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    by_budget = sample(model, x, solver="dpm_solver_fast", nfe=20)
    by_steps = sample(model, x, solver="dpm_solver_fast", steps=7)
    assert by_budget.nfe == by_steps.nfe == 20 and torch.equal(by_budget.x, by_steps.x)
    for bad in (dict(steps=7), dict(grid="logsnr"), dict(grid=by_budget.ts)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}= cannot be honoured"):
            sample(model, x, solver="dpm_solver_fast", nfe=20, **bad)
    with pytest.raises(ValueError, match="grid="):
        get_solver("dpm_solver_fast", grid="karras")


def test_every_registered_solver_runs_through_sample_with_its_exact_nfe():
    """Registry sweep: each solver, with default options, runs from ``sample`` on an NFE budget turned into steps by
    its own ``steps_for_nfe`` (adaptive ones under their default controller) and spends what it declares."""
    sch = VPLinear()
    model = PointMass(torch.tensor([0.3, -0.1])).model(sch)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    for name in sorted(registered_solvers()):
        solver = get_solver(name)
        kw = {"generator": torch.Generator().manual_seed(1)} if solver.stochastic else {}
        if solver.adaptive:
            res = sample(model, x, solver=solver, **kw)
            assert res.nfe == res.info["nfe"] == solver.final_nfe(res.info["accepted"]) + res.info["rejected_nfe"]
            continue
        budget = max(12, solver.final_nfe(1))  # (one restart step alone costs 13)
        steps = solver.steps_for_nfe(budget)
        res = sample(model, x, solver=solver, steps=steps, **kw)
        assert res.nfe == solver.final_nfe(steps) <= budget, name
        assert bool(torch.isfinite(res.x).all()), name
