"""DPM-Solver, DPM-Solver++, DPM-Solver-fast, adaptive DPM-Solver-12/23 and SDE-DPM-Solver++.

Verified against mathematics only: closed-form Gaussian flows (order slopes), point-mass data (exact at any step
count), identities between solvers (DDIM, DDPM), symbolic/closed-form update weights, and diffusers' schedulers
with an exact oracle network (the same function on both sides).
"""

import math
import warnings

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.reference import probability_flow_reference
from sde_diffusion.solvers.dpm_solver import fast_orders, grid_groups, update_weights
from sde_diffusion.solvers.warmup import LOWER_ORDER_FINAL_BELOW, step_orders
from sde_diffusion.studies.fitting import fit_line

VP = sd.VPLinear()
VE = sd.VEGeometric()


def _xT(n=6, d=1, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# convergence order on Gaussian data (closed-form flow)
# ---------------------------------------------------------------------------------------------------------------------
#
# The noise-prediction integrand along the exact path of N(m, s^2) data is eps = z / sqrt(1 + s^2 e^{2 lambda}) and
# the data-prediction one x0 = m + s z / sqrt(1 + e^{-2 lambda}/s^2): a sigmoid in lambda centred at -log s. When
# the path crosses that centre, the leading error constants of several x0-methods (integrals of odd derivatives of
# a sigmoid) nearly cancel and the slopes in NFE 48-240 wander. So the data-prediction methods are measured on
# s = 0.01 (path ends at lambda = 2.9, before the centre at 4.6), the noise-prediction ones on s = 0.03.

EPS_PROBLEM = (sd.Gaussian(torch.tensor([0.5]), torch.tensor([0.03])), 1.0, 1e-2)
X0_PROBLEM = (sd.Gaussian(torch.tensor([0.5]), torch.tensor([0.01])), 1.0, 1e-2)
NFE_EPS = (48, 72, 96, 144, 192, 240)
NFE_X0 = (96, 144, 192, 240)
# the published third-order multistep rule is second order with a small h^2 constant: measured further out
NFE_REF3 = (192, 288, 384, 480)

ORDER_CASES = [
    ("dpm_solver", dict(order=1), EPS_PROBLEM, NFE_EPS, 1),
    ("dpm_solver", dict(order=2, update="paper"), EPS_PROBLEM, NFE_EPS, 2),
    ("dpm_solver", dict(order=2, update="heun"), EPS_PROBLEM, NFE_EPS, 2),
    ("dpm_solver", dict(order=3, update="paper"), EPS_PROBLEM, NFE_EPS, 3),
    ("dpm_solver", dict(order=3, update="midpoint"), EPS_PROBLEM, NFE_EPS, 3),
    ("dpm_solver", dict(order=3, update="exact"), EPS_PROBLEM, NFE_EPS, 3),
    ("dpm_solver", dict(order=2, multistep=True, update="paper"), EPS_PROBLEM, NFE_EPS, 2),
    ("dpm_solver", dict(order=2, multistep=True, update="exact"), EPS_PROBLEM, NFE_EPS, 2),
    ("dpm_solver", dict(order=3, multistep=True, update="exact"), EPS_PROBLEM, NFE_EPS, 3),
    ("dpm_solver", dict(order=3, multistep=True, update="paper"), EPS_PROBLEM, NFE_REF3, 2),
    ("dpm_solver_fast", dict(order=3), EPS_PROBLEM, tuple(n + 2 for n in NFE_EPS), 3),  # nfe % 3 == 2
    ("dpm_solver_fast", dict(order=3), EPS_PROBLEM, (192, 384, 768), 2),  # nfe % 3 == 0: final DPM-Solver-1
    ("dpm_solver++", dict(order=1), X0_PROBLEM, NFE_X0, 1),
    ("dpm_solver++", dict(order=2, multistep=False, update="paper"), X0_PROBLEM, NFE_X0, 2),
    ("dpm_solver++", dict(order=2, multistep=False, update="exact"), X0_PROBLEM, NFE_X0, 2),
    ("dpm_solver++", dict(order=3, multistep=False, update="paper"), X0_PROBLEM, NFE_X0, 3),
    ("dpm_solver++", dict(order=3, multistep=False, update="midpoint"), X0_PROBLEM, NFE_X0, 3),
    ("dpm_solver++", dict(order=3, multistep=False, update="exact"), X0_PROBLEM, NFE_X0, 3),
    ("dpm_solver++", dict(order=2, multistep=True, update="paper"), X0_PROBLEM, NFE_X0, 2),
    ("dpm_solver++", dict(order=2, multistep=True, update="heun"), X0_PROBLEM, NFE_X0, 2),
    ("dpm_solver++", dict(order=3, multistep=True, update="exact"), X0_PROBLEM, NFE_X0, 3),
    ("dpm_solver++", dict(order=3, multistep=True, update="paper"), X0_PROBLEM, NFE_REF3, 2),
]


def _order_errors(name, opts, problem, nfes):
    g, t0, t1 = problem
    x_T = _xT()
    exact = g.flow(x_T, t0, t1, VP)
    used, errs = [], []
    for n in nfes:
        if name == "dpm_solver_fast":
            solver = sd.get_solver(name, nfe=n, **opts)
            res = sd.sample(g.model(VP, "eps"), x_T, solver=solver, t_start=t0, t_end=t1)
        else:
            solver = sd.get_solver(name, **opts)
            steps = n // solver.nfe_per_step
            res = sd.sample(g.model(VP, "eps"), x_T, solver=solver, steps=steps, grid="logsnr", t_start=t0, t_end=t1)
            assert res.nfe == solver.final_nfe(steps)
        used.append(res.nfe)
        errs.append(float((res.x - exact).abs().max()))
    return solver, used, errs


@pytest.mark.parametrize(
    "name,opts,problem,nfes,want",
    ORDER_CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}-{c[3][0]}" for c in ORDER_CASES],
)
def test_order_slope_on_gaussian(name, opts, problem, nfes, want):
    solver, used, errs = _order_errors(name, opts, problem, nfes)
    slope = fit_line(used, errs).order
    print(
        f"\n{name} {opts}: NFE {used} max|err| {[f'{e:.2e}' for e in errs]} slope {slope:.3f} (declared {solver.order})"
    )
    assert solver.order == want
    assert min(errs) > 1e-12  # above round-off: the slope measures truncation error
    assert abs(slope - want) <= 0.15


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_third_order_multistep_local_error(prediction):
    """One 3M step from exact history: the exact Lagrange rule has local error O(h^4), the published rule
    (half the phi_3 term) only O(h^3) -- the reason its global order is 2."""
    g = sd.Gaussian(torch.tensor([0.5]), torch.tensor([0.3]))
    model = g.model(VP, "eps")
    x_T = _xT()
    name = "dpm_solver" if prediction == "eps" else "dpm_solver++"
    lam_end = -1.0
    slopes = {}
    for variant in ("exact", "paper"):
        errs = []
        hs = (0.05, 0.025, 0.0125)
        for h in hs:
            ts = VP.inverse_lambda(torch.tensor([lam_end - 3 * h, lam_end - 2 * h, lam_end - h, lam_end]))
            xs = [g.flow(x_T, 1.0, float(t), VP) for t in ts]
            s = sd.Sampler(
                model, x_T, solver=name, grid=ts, order=3, multistep=True, update=variant, lower_order_final=False
            )
            outs = [model.predict(xs[i], ts[i], prediction) for i in (1, 0)]  # most recent first
            x3, _ = s.step(xs[2], tuple(outs), 2)
            errs.append(float((x3 - xs[3]).abs().max()))
        slopes[variant] = math.log(errs[-2] / errs[-1]) / math.log(2.0)
    assert abs(slopes["exact"] - 4.0) < 0.15, slopes
    assert abs(slopes["paper"] - 3.0) < 0.15, slopes


# ---------------------------------------------------------------------------------------------------------------------
# update weights: every rule against its closed form
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1, -1])
def test_rules_equal_published_closed_forms(sign):
    """The rules reproduce the published formulas (written out here with exp, as in the papers)."""
    for h in (0.05, 0.4, 1.3):
        hphi1 = math.expm1(sign * h) / sign  # int_0^h e^{s(h-u)} du
        hphi2 = (math.expm1(sign * h) - sign * h) / h  # int_0^h e^{s(h-u)} u/h du
        for r in (0.5, 1.0 / 3.0, -0.7):
            # DPM-Solver-2 / (2S) / (2M): the derivative term carries hphi1/(2r)
            w = update_weights(torch.tensor([0.0, r]), torch.tensor(h), sign, "mid")
            assert torch.allclose(w, torch.tensor([hphi1 * (1 - 1 / (2 * r)), hphi1 / (2 * r)]), rtol=1e-13)
            # DPM-Solver-3's stages / diffusers heun: hphi2/r
            w = update_weights(torch.tensor([0.0, r]), torch.tensor(h), sign, "phi2")
            assert torch.allclose(w, torch.tensor([hphi1 - hphi2 / r, hphi2 / r]), rtol=1e-12)
    # multistep 3M of the reference code / diffusers, term by term (eps: -sigma[..]; x0: alpha[..])
    for h, r0, r1 in ((0.3, 1.0, 1.0), (0.8, 0.6, 1.7)):
        m = torch.eye(3, dtype=torch.float64)  # m0, m1, m2 as unit vectors -> coefficient vectors
        d1_0 = (m[0] - m[1]) / r0
        d1_1 = (m[1] - m[2]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        if sign > 0:
            want = (
                (math.exp(h) - 1) * m[0] + ((math.exp(h) - 1) / h - 1) * d1 + ((math.exp(h) - 1 - h) / h**2 - 0.5) * d2
            )
        else:
            want = (
                -(math.exp(-h) - 1) * m[0]
                + ((math.exp(-h) - 1) / h + 1) * d1
                - ((math.exp(-h) - 1 + h) / h**2 - 0.5) * d2
            )
        got = update_weights(torch.tensor([0.0, -r0, -(r0 + r1)]), torch.tensor(h), sign, "ref3")
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
        exact = update_weights(torch.tensor([0.0, -r0, -(r0 + r1)]), torch.tensor(h), sign, "exact")
        # exact quadratic = ref3 + the missing half of the phi_3 term
        hphi3 = float(sd.solvers.expint.phi(3, torch.tensor(sign * h))) * h
        assert torch.allclose(exact, got + hphi3 * d2, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------------------------------------------------

MIX = sd.GaussianMixture(torch.tensor([[1.0, 0.5], [-1.0, -0.5], [0.3, -1.2]]), torch.tensor([0.3, 0.2, 0.4]))


@pytest.mark.parametrize("schedule", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_first_order_identity_ddim(schedule, steps):
    """DPM-Solver-1 == DPM-Solver++-1 == DDIM(eta=0), singlestep, multistep and grid-stage forms."""
    x_T = _xT(8, 2) * float(schedule.sigma(torch.tensor(schedule.t_max)))
    model = MIX.model(schedule, "eps")
    ref = sd.sample(model, x_T, solver="ddim", steps=steps).x
    scale = max(1.0, float(x_T.abs().max()))
    for name in ("dpm_solver", "dpm_solver++"):
        for opts in (dict(multistep=False), dict(multistep=True), dict(multistep=False, stages="grid")):
            x = sd.sample(model, x_T, solver=name, order=1, steps=steps, **opts).x
            assert float((x - ref).abs().max()) <= 1e-12 * scale, (name, opts)


@pytest.mark.parametrize("steps", [1, 4, 9])
def test_sde_first_order_is_ddim_eta1_and_ddpm(steps):
    """SDE-DPM-Solver++-1 (eta = 1) == DDIM(eta=1) == DDPM ancestral step, given the same noise."""
    x_T = _xT(8, 2)
    model = MIX.model(VP, "eps")
    z = torch.randn((steps,) + x_T.shape, generator=torch.Generator().manual_seed(3))
    sde = sd.sample(model, x_T, solver="sde_dpm_solver++", order=1, eta=1.0, steps=steps, noise=z).x
    ddim = sd.sample(model, x_T, solver="ddim", eta=1.0, steps=steps, noise=z).x
    ddpm = sd.sample(model, x_T, solver="ddpm", steps=steps, noise=z).x
    assert float((sde - ddim).abs().max()) <= 1e-12
    assert float((sde - ddpm).abs().max()) <= 1e-12


@pytest.mark.parametrize("order", [1, 2])
def test_sde_eta0_is_dpm_solver_pp(order):
    x_T = _xT(8, 2)
    model = MIX.model(VP, "eps")
    a = sd.sample(model, x_T, solver="sde_dpm_solver++", order=order, eta=0.0, steps=12).x
    b = sd.sample(model, x_T, solver="dpm_solver++", order=order, multistep=True, steps=12).x
    assert float((a - b).abs().max()) <= 1e-13


@pytest.mark.parametrize("name", ["dpm_solver", "dpm_solver++"])
@pytest.mark.parametrize("order", [2, 3])
def test_multistep_first_steps_equal_lower_order(name, order):
    """Step 0 of a multistep method is the singlestep order-1 step; step 1 of 3M equals step 1 of 2M."""
    x_T = _xT(8, 2)
    model = MIX.model(VP, "eps")
    one = sd.sample(model, x_T, solver=name, order=order, multistep=True, steps=1).x
    ss1 = sd.sample(model, x_T, solver=name, order=1, multistep=False, steps=1).x
    assert float((one - ss1).abs().max()) <= 1e-13
    grid = sd.make_grid(VP, "logsnr", 20)
    a = sd.sample(
        model, x_T, solver=name, order=order, multistep=True, grid=grid, return_trajectory=True, lower_order_final=False
    ).trajectory
    b = sd.sample(
        model,
        x_T,
        solver=name,
        order=order - 1,
        multistep=True,
        grid=grid,
        return_trajectory=True,
        lower_order_final=False,
    ).trajectory
    assert float((a[1] - b[1]).abs().max()) <= 1e-13
    assert float((a[order - 1] - b[order - 1]).abs().max()) <= 1e-13
    assert float((a[order] - b[order]).abs().max()) > 1e-8  # from here on the orders differ


def test_lower_order_final_rule():
    """Warm-up min(order, i+1); below 15 steps also min(., steps - i); the last step is then a DDIM step.
    (The one rule, solvers.warmup.step_orders: DPM-Solver's lower_order_final=True is its "auto" setting.)"""
    assert step_orders(3, 6, lower_order_final="auto") == (1, 2, 3, 3, 2, 1)
    assert step_orders(3, 6, lower_order_final=False) == (1, 2, 3, 3, 3, 3)
    assert step_orders(3, LOWER_ORDER_FINAL_BELOW, lower_order_final="auto")[-1] == 3
    assert step_orders(2, LOWER_ORDER_FINAL_BELOW - 1, lower_order_final="auto")[-2:] == (2, 1)
    assert step_orders(3, 20, lower_order_final=True)[-3:] == (3, 2, 1)
    assert step_orders(3, 5, warmup=False, lower_order_final="auto") == (3, 3, 3, 2, 1)
    for steps in (6, 20):
        for multistep in (True, False):
            solver = sd.get_solver("dpm_solver++", order=3, multistep=multistep)
            want = step_orders(3, steps, warmup=multistep, lower_order_final="auto")
            assert solver.step_orders(steps) == want
    x_T = _xT(8, 2)
    model = MIX.model(VP, "x0")
    s = sd.Sampler(model, x_T, solver="dpm_solver++", order=3, multistep=True, steps=10)
    x, state = s.init(x_T)
    for i in range(9):
        x, state = s.step(x, state, i)
    x_last, _ = s.step(x, state, 9)
    c = s.plan.steps[9]
    eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
    ddim = c.alpha_next / c.alpha * x - c.sigma_next * math.expm1(c.h) * eps
    assert float((x_last - ddim).abs().max()) <= 1e-13
    assert sd.get_solver("dpm_solver", order=3).final_nfe(10) == 3 * 8 + 2 + 1
    assert sd.get_solver("dpm_solver", order=3, lower_order_final=False).final_nfe(10) == 30


def test_grid_stages_on_logsnr_grid_equal_paper_stages():
    """A singlestep step whose stages are the points of a logSNR grid of 3N intervals is DPM-Solver-3 with
    r = 1/3, 2/3 on the N-step logSNR grid (the diffusers singlestep layout == the paper's on such grids)."""
    x_T = _xT(8, 2)
    model = MIX.model(VP, "eps")
    for name, variant in (("dpm_solver", "paper"), ("dpm_solver++", "midpoint"), ("dpm_solver", "heun")):
        paper = sd.sample(
            model,
            x_T,
            solver=name,
            order=3,
            multistep=False,
            steps=6,
            update=variant,
            lower_order_final=False,
            return_trajectory=True,
        ).trajectory
        grid = sd.sample(
            model,
            x_T,
            solver=name,
            order=3,
            multistep=False,
            steps=18,
            stages="grid",
            update=variant,
            lower_order_final=False,
            return_trajectory=True,
        ).trajectory
        for i in range(7):
            assert float((paper[i] - grid[3 * i]).abs().max()) <= 1e-12, (name, variant, i)


def test_fast_orders_rule_and_nfe():
    assert fast_orders(12) == (3, 3, 3, 2, 1)
    assert fast_orders(13) == (3, 3, 3, 3, 1)
    assert fast_orders(14) == (3, 3, 3, 3, 2)
    assert fast_orders(3) == (2, 1) and fast_orders(1) == (1,) and fast_orders(2) == (2,)
    assert fast_orders(7, 2) == (2, 2, 2, 1) and fast_orders(5, 1) == (1,) * 5
    assert grid_groups(2, 10) == (2, 2, 2, 2, 1, 1) and grid_groups(3, 10) == (3, 3, 3, 1)
    model = MIX.model(VP, "eps")
    for nfe in (5, 10, 11, 12, 20):
        res = sd.sample(model, _xT(4, 2), solver="dpm_solver_fast", nfe=nfe)
        assert res.nfe == nfe and len(res.ts) == len(fast_orders(nfe)) + 1
        lam = VP.lambda_(res.ts)
        assert torch.allclose(lam[1:] - lam[:-1], (lam[-1] - lam[0]) / (len(lam) - 1) * torch.ones(len(lam) - 1))


# ---------------------------------------------------------------------------------------------------------------------
# point-mass data: every exponential integrator is exact
# ---------------------------------------------------------------------------------------------------------------------

DETERMINISTIC = [
    ("dpm_solver", dict(order=1)),
    ("dpm_solver", dict(order=2, update="paper")),
    ("dpm_solver", dict(order=3, update="paper")),
    ("dpm_solver", dict(order=3, update="midpoint")),
    ("dpm_solver", dict(order=3, update="exact")),
    ("dpm_solver", dict(order=2, multistep=True)),
    ("dpm_solver", dict(order=3, multistep=True)),
    ("dpm_solver", dict(order=3, multistep=True, update="exact")),
    ("dpm_solver", dict(order=3, stages="grid")),
    ("dpm_solver++", dict(order=2, multistep=False)),
    ("dpm_solver++", dict(order=3, multistep=False, update="heun")),
    ("dpm_solver++", dict(order=2, multistep=True)),
    ("dpm_solver++", dict(order=3, multistep=True, update="heun")),
    ("dpm_solver++", dict(order=3, multistep=True, update="exact")),
    ("dpm_solver++", dict(order=2, multistep=False, stages="grid")),
    ("sde_dpm_solver++", dict(order=2, eta=0.0)),
]


def _point_mass_flow(m, x_T, sch, t0, t1):
    a0, s0 = float(sch.alpha(torch.tensor(t0))), float(sch.sigma(torch.tensor(t0)))
    a1, s1 = float(sch.alpha(torch.tensor(t1))), float(sch.sigma(torch.tensor(t1)))
    return a1 * m + s1 * (x_T - a0 * m) / s0


@pytest.mark.parametrize("schedule", [VP, VE], ids=["vp", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_point_mass_exact_every_solver(schedule, prediction):
    m = torch.tensor([0.7, -1.3])
    pm = sd.PointMass(m)
    model = pm.model(schedule, prediction)
    x_T = (
        _xT(5, 2, seed=4) * float(schedule.sigma(torch.tensor(schedule.t_max)))
        + float(schedule.alpha(torch.tensor(schedule.t_max))) * m
    )
    exact = _point_mass_flow(m, x_T, schedule, schedule.t_max, schedule.t_min)
    for steps in (1, 2, 5, 7):
        for name, opts in DETERMINISTIC:
            x = sd.sample(model, x_T, solver=name, steps=steps, **opts).x
            assert float((x - exact).abs().max()) <= 1e-10, (name, opts, steps)
        x = sd.sample(model, x_T, solver="dpm_solver_fast", nfe=steps).x
        assert float((x - exact).abs().max()) <= 1e-10, ("fast", steps)
    for order in (2, 3):
        res = sd.sample(model, x_T, solver="dpm_solver_adaptive", order=order)
        assert float((res.x - exact).abs().max()) <= 1e-10, ("adaptive", order)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("order", [1, 2])
def test_sde_point_mass_exact_in_distribution(eta, order):
    """With point-mass data the SDE map (xi_T, z_1..z_N) -> xi_end of standardised states is linear; its
    coefficients must have squared sum 1 (N(alpha m, sigma^2) is preserved exactly) and no offset."""
    m = torch.tensor([0.7])
    model = sd.PointMass(m).model(VP, "eps")
    steps = 6
    a_T, s_T = float(VP.alpha(torch.tensor(VP.t_max))), float(VP.sigma(torch.tensor(VP.t_max)))
    a_0, s_0 = float(VP.alpha(torch.tensor(VP.t_min))), float(VP.sigma(torch.tensor(VP.t_min)))
    # row 0: all zero (offset); row 1: xi_T = 1; row 1 + i: z_i = 1
    xi = torch.zeros(steps + 2, 1)
    xi[1] = 1.0
    z = torch.zeros(steps, steps + 2, 1)
    for i in range(steps):
        z[i, 2 + i] = 1.0
    x = sd.sample(model, a_T * m + s_T * xi, solver="sde_dpm_solver++", order=order, eta=eta, steps=steps, noise=z).x
    coeff = (x - a_0 * m) / s_0
    assert abs(float(coeff[0])) <= 1e-12
    assert abs(float((coeff[1:] ** 2).sum()) - 1.0) <= 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# thresholding, adaptive step size, low precision
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,opts",
    [("dpm_solver++", dict(order=2)), ("dpm_solver", dict(order=3)), ("dpm_solver++", dict(order=3, multistep=False))],
)
def test_dynamic_thresholding_is_applied(name, opts):
    """Point mass at 3: thresholding (max_value 1) turns every x0 prediction into 1, so the solver must follow the
    exact flow of a point mass at 1 (and without thresholding, that of the point mass at 3)."""
    m = torch.full((4,), 3.0)
    x_T = _xT(3, 4)
    plain = sd.PointMass(m).model(VP, "eps")
    clipped = sd.PointMass(m).model(VP, "eps", thresholding=sd.DynamicThresholding(0.995, 1.0))
    x_plain = sd.sample(plain, x_T, solver=name, steps=5, **opts).x
    x_clip = sd.sample(clipped, x_T, solver=name, steps=5, **opts).x
    assert float((x_plain - _point_mass_flow(m, x_T, VP, VP.t_max, VP.t_min)).abs().max()) <= 1e-10
    assert float((x_clip - _point_mass_flow(torch.ones(4), x_T, VP, VP.t_max, VP.t_min)).abs().max()) <= 1e-10


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_reports_and_tracks_tolerance(order):
    g, t0, t1 = EPS_PROBLEM
    x_T = _xT()
    exact = g.flow(x_T, t0, t1, VP)
    errs, nfes = [], []
    for tol in (1e-3, 1e-4, 1e-5):
        model = g.model(VP, "eps")
        res = sd.sample(model, x_T, solver="dpm_solver_adaptive", order=order, rtol=tol, atol=tol, t_end=t1)
        info = res.info
        assert res.nfe == model.nfe == info["nfe"]
        # an accepted attempt costs `order` evaluations, a rejected one `order - 1` (its first output is reused)
        assert info["nfe"] == order * info["accepted"] + (order - 1) * info["rejected"]
        assert len(res.ts) == info["accepted"] + 1 and float(res.ts[-1]) == t1
        errs.append(float((res.x - exact).abs().max()))
        nfes.append(res.nfe)
    slope = fit_line(nfes, errs).order
    print(f"\nadaptive order {order}: NFE {nfes} errors {[f'{e:.1e}' for e in errs]} slope {slope:.2f}")
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]
    assert errs[2] < 1e-4


ALL_SOLVERS = DETERMINISTIC + [
    ("sde_dpm_solver++", dict(order=1, eta=1.0)),
    ("sde_dpm_solver++", dict(order=2, eta=1.0)),
]


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_model_outputs_stay_finite(half):
    """float32 state, model outputs rounded to fp16/bf16: every solver stays finite down to t_min."""
    ring = sd.GaussianMixture(
        torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in torch.arange(8) * (2 * math.pi / 8)]).float(),
        torch.full((8,), 0.05),
    )
    exact = ring.model(VP, "eps")
    model = sd.Model(lambda x, t: exact.fn(x, t).to(half).to(torch.float32), VP, "eps")
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).float()
    for steps in (10, 50):
        for name, opts in ALL_SOLVERS:
            gen = torch.Generator().manual_seed(1)
            x = sd.sample(model, x_T, solver=name, steps=steps, generator=gen, **opts).x
            assert x.dtype == torch.float32 and bool(torch.isfinite(x).all()), (name, opts, steps)
        assert bool(torch.isfinite(sd.sample(model, x_T, solver="dpm_solver_fast", nfe=steps).x).all())
    for order in (2, 3):
        assert bool(torch.isfinite(sd.sample(model, x_T, solver="dpm_solver_adaptive", order=order).x).all())


# ---------------------------------------------------------------------------------------------------------------------
# options and plumbing
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_options_raise():
    with pytest.raises(ValueError):
        sd.get_solver("dpm_solver", order=4)
    with pytest.raises(ValueError, match="update must be one of 'paper', 'midpoint', 'heun', 'exact'"):
        sd.get_solver("dpm_solver++", update="bogus")
    # wrong types fail at construction, naming the option (order=2.0 used to fail deep inside the coefficients)
    bad_types = (
        ("dpm_solver", dict(order=2.0)),
        ("dpm_solver++", dict(order=True)),
        ("dpm_solver", dict(multistep=1)),
        ("sde_dpm_solver++", dict(order=2.0)),
    )
    for name, bad in bad_types:
        with pytest.raises(TypeError, match=next(iter(bad))):
            sd.get_solver(name, **bad)
    for bad in (dict(eta=float("inf")), dict(eta=-1.0), dict(order=3)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sd.get_solver("sde_dpm_solver++", **bad)
    with pytest.raises(TypeError, match=r"orders\[1\]"):
        sd.get_solver("dpm_solver", orders=(3, 2.0))
    with pytest.raises(ValueError):
        sd.get_solver("dpm_solver", multistep=True, stages="grid")
    with pytest.raises(ValueError):
        sd.get_solver("sde_dpm_solver++", order=3)
    with pytest.raises(ValueError):
        sd.get_solver("dpm_solver_adaptive", order=1)
    with pytest.raises(ValueError):
        sd.sample(MIX.model(VP), _xT(2, 2), solver="dpm_solver", orders=(3, 2), steps=3)
    with pytest.raises(ValueError):
        sd.sample(
            MIX.model(VP), _xT(2, 2), solver="dpm_solver", order=3, stages="grid", lower_order_final=False, steps=10
        )


def test_per_sample_grids_match_shared_grid():
    """A (steps+1, B) grid with identical columns gives the shared-grid result (device-tensor coefficients)."""
    x_T = _xT(4, 2)
    model = MIX.model(VP, "eps")
    grid = sd.make_grid(VP, "time_quadratic", 8)
    for name, opts in DETERMINISTIC[:9] + DETERMINISTIC[11:]:
        a = sd.sample(model, x_T, solver=name, grid=grid, **opts).x
        b = sd.sample(model, x_T, solver=name, grid=grid[:, None].expand(-1, 4).contiguous(), **opts).x
        assert float((a - b).abs().max()) <= 1e-13, (name, opts)


# ---------------------------------------------------------------------------------------------------------------------
# agreement with diffusers (exact mixture eps as the network on both sides)
# ---------------------------------------------------------------------------------------------------------------------


def _diffusers():
    try:
        import diffusers  # noqa: F401
        from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler
    except Exception:  # pragma: no cover - optional dependency
        pytest.skip("diffusers is not importable")
    return DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler


def _oracle_net(vp: sd.VPDiscrete):
    """The 'network': exact eps of MIX at the integer DDPM label k (alphas_cumprod[k]); our Model feeds it
    (t - 1/N) * 1000 = k (time_input="label"), diffusers feeds k."""
    ac = vp.alphas_cumprod

    def fn(x, label):
        k = torch.round(label.double()).long()
        a = ac[k].sqrt().to(x.dtype).reshape(-1, 1)
        s = (1.0 - ac[k]).sqrt().to(x.dtype).reshape(-1, 1)
        return MIX._eps(x, a, s)

    return fn


def _run_diffusers(sched, fn, n, x, noise=None, sigmas=None):
    sched.set_timesteps(n)
    if sigmas is not None:
        sched.sigmas = sigmas
    for i, k in enumerate(sched.timesteps):
        out = fn(x, torch.full((x.shape[0],), float(k), dtype=torch.float64))
        kw = {"variance_noise": noise[i]} if noise is not None else {}
        x = sched.step(out, k, x, **kw).prev_sample
    return x, sched.timesteps.tolist()


def _our_grid(timesteps, n_train=1000):
    """diffusers' integer timesteps k (model at alphas_cumprod[k]) and final sigma_min (k = 0) -> t = (k+1)/N."""
    return torch.tensor([(k + 1) / n_train for k in timesteps] + [1.0 / n_train], dtype=torch.float64)


def _make_scheduler(cls, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(num_train_timesteps=1000, beta_schedule="linear", final_sigmas_type="sigma_min", **cfg)


def _ours(vp, fn, x, timesteps, name, noise=None, **opts):
    model = sd.Model(fn, vp, "eps", time_input="label")
    return sd.sample(model, x, solver=name, grid=_our_grid(timesteps), noise=noise, **opts).x


def _diffusers_case(kind, alg, order, st, lof, n, dtype, exact_sigmas):
    """Run diffusers and us on the same oracle; returns (ours, theirs, ours in float64)."""
    ms_cls, ss_cls = _diffusers()
    cls = ms_cls if kind == "multistep" else ss_cls
    sched = _make_scheduler(cls, algorithm_type=alg, solver_order=order, solver_type=st, lower_order_final=lof)
    # our schedule from diffusers' own (float32-accumulated) alphas_cumprod: VPDiscrete.from_config recomputes them
    # in float64, which moves sigma near t_min by ~1e-5 relative and the few-step results by up to ~8e-5
    vp = sd.VPDiscrete(alphas_cumprod=sched.alphas_cumprod.double())
    fn = _oracle_net(vp)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((n,) + x.shape, generator=torch.Generator().manual_seed(5)) if "sde" in alg else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched.set_timesteps(n)
        ks = sched.timesteps.tolist()
        sigmas = torch.exp(-vp.lambda_(_our_grid(ks))) if exact_sigmas else None
        theirs, ks = _run_diffusers(sched, fn, n, x.to(dtype), None if noise is None else noise.to(dtype), sigmas)
    if alg == "sde-dpmsolver++":
        name, opts = "sde_dpm_solver++", dict(order=order, eta=1.0, update=st, lower_order_final=lof)
    else:
        name = "dpm_solver++" if alg == "dpmsolver++" else "dpm_solver"
        opts = dict(
            order=order,
            multistep=kind == "multistep",
            update=st,
            lower_order_final=bool(sched.config.lower_order_final),
        )  # diffusers may switch it on
        if kind == "singlestep":
            opts["stages"] = "grid"
    ours = _ours(vp, fn, x.to(dtype), ks, name, None if noise is None else noise.to(dtype), **opts)
    ours64 = _ours(vp, fn, x, ks, name, noise, **opts)
    return ours, theirs, ours64


MULTISTEP_DIFFUSERS = [
    ("multistep", alg, order, st, lof, n)
    for alg in ("dpmsolver++", "dpmsolver")
    for order in (1, 2, 3)
    for st in ("midpoint", "heun")
    for lof in (True, False)
    for n in (10, 20)
] + [
    ("multistep", "sde-dpmsolver++", order, st, True, n)
    for order in (1, 2)
    for st in ("midpoint", "heun")
    for n in (10, 20)
]
SINGLESTEP_DIFFUSERS = [
    ("singlestep", alg, order, st, lof, n)
    for alg in ("dpmsolver++", "dpmsolver")
    for order in (1, 2, 3)
    for st in ("midpoint", "heun")
    for lof, n in ((True, 9), (True, 10), (False, 12), (True, 20), (False, 18))
]


@pytest.mark.parametrize("kind,alg,order,st,lof,n", SINGLESTEP_DIFFUSERS)
def test_singlestep_agrees_with_diffusers_exactly(kind, alg, order, st, lof, n):
    """float64, with diffusers' float32 sigma table replaced by exact values: the same algorithm to 1e-12."""
    ours, theirs, _ = _diffusers_case(kind, alg, order, st, lof, n, torch.float64, exact_sigmas=True)
    d = float((ours - theirs).abs().max())
    print(f"\n{kind} {alg} order={order} {st} lof={lof} n={n}: float64 |ours - diffusers| = {d:.1e}")
    assert d <= 1e-12


@pytest.mark.parametrize("kind,alg,order,st,lof,n", [c for c in MULTISTEP_DIFFUSERS if c[-1] == 10])
def test_multistep_steps_equal_diffusers_updates(kind, alg, order, st, lof, n):
    """Every step of our multistep run equals diffusers' update function of the same order applied to our state
    and diffusers' own converted model outputs (float64, exact sigmas), to 1e-12. (diffusers' ``step`` rounds the
    state to float32, so the end-to-end comparison is the float32 test below.)"""
    ms_cls, _ = _diffusers()
    sched = _make_scheduler(ms_cls, algorithm_type=alg, solver_order=order, solver_type=st, lower_order_final=lof)
    vp = sd.VPDiscrete(alphas_cumprod=sched.alphas_cumprod.double())
    fn = _oracle_net(vp)
    sched.set_timesteps(n)
    ks = sched.timesteps.tolist()
    sched.sigmas = torch.exp(-vp.lambda_(_our_grid(ks)))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((n,) + x.shape, generator=torch.Generator().manual_seed(5)) if "sde" in alg else None
    if alg == "sde-dpmsolver++":
        name, opts = "sde_dpm_solver++", dict(order=order, eta=1.0, update=st, lower_order_final=lof)
    else:
        name = "dpm_solver++" if alg == "dpmsolver++" else "dpm_solver"
        opts = dict(order=order, multistep=True, update=st, lower_order_final=lof)
    model = sd.Model(fn, vp, "eps", time_input="label")
    s = sd.Sampler(model, x, solver=name, grid=_our_grid(ks), noise=noise, **opts)
    updates = {
        1: sched.dpm_solver_first_order_update,
        2: sched.multistep_dpm_solver_second_order_update,
        3: sched.multistep_dpm_solver_third_order_update,
    }
    x, state = s.init(x)
    outs = []
    for i, (k, p) in enumerate(zip(ks, s.solver.step_orders(n))):
        sched._step_index = i
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs.append(sched.convert_model_output(fn(x, torch.full((16,), float(k))), sample=x))
            z = None if noise is None else noise[i]
            want = updates[p](outs[-1] if p == 1 else outs[-p:], sample=x, noise=z)
        x, state = s.step(x, state, i)
        assert float((x - want).abs().max()) <= 1e-12, (i, p)


@pytest.mark.parametrize(
    "kind,alg,order,st,lof,n", [c for c in MULTISTEP_DIFFUSERS + SINGLESTEP_DIFFUSERS if c[-1] >= 18]
)
def test_agrees_with_diffusers_float32(kind, alg, order, st, lof, n):
    """float32 end to end, diffusers as shipped: agreement to 1e-5 beyond the float32 round-off of the problem
    itself -- ours (``|ours32 - ours64|``) and diffusers' (``|theirs32 - theirs64|``; diffusers keeps float32
    sigma tables even for a float64 state, so third-order runs differ by ~2e-5 from ours in float64 too, and how
    much depends on the CPU's float32 kernels)."""
    ours, theirs, ours64 = _diffusers_case(kind, alg, order, st, lof, n, torch.float32, exact_sigmas=False)
    _, theirs64, _ = _diffusers_case(kind, alg, order, st, lof, n, torch.float64, exact_sigmas=False)
    d = float((ours.double() - theirs.double()).abs().max())
    roundoff = float((ours.double() - ours64).abs().max()) + float((theirs.double() - theirs64.double()).abs().max())
    print(
        f"\n{kind} {alg} order={order} {st} lof={lof} n={n}: float32 |ours - diffusers| = {d:.1e} "
        f"(float32 round-off, ours + diffusers' {roundoff:.1e})"
    )
    assert d <= 1e-5 + 2 * roundoff


# ---------------------------------------------------------------------------------------------------------------------
# sharp mixture: pre-asymptotic slopes against the torchdiffeq reference (reported, not asserted tightly)
# ---------------------------------------------------------------------------------------------------------------------


def test_report_slopes_on_sharp_ring():
    """Pre-asymptotic slopes on a sharp mixture (8 modes, std 0.05) against the torchdiffeq reference: printed
    (``-s``) and recorded in docs/theory/dpm_solver.md; asserted only to decrease."""
    ring = sd.GaussianMixture(
        torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in torch.arange(8) * (2 * math.pi / 8)]),
        torch.full((8,), 0.05),
    )
    model = ring.model(VP, "eps")
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    ref = probability_flow_reference(model, x_T, [VP.t_max, VP.t_min], rtol=1e-10, atol=1e-10)[-1]
    cases = [
        ("dpm_solver", dict(order=1)),
        ("dpm_solver", dict(order=2)),
        ("dpm_solver", dict(order=3)),
        ("dpm_solver", dict(order=3, multistep=True, update="exact")),
        ("dpm_solver++", dict(order=2)),
        ("dpm_solver++", dict(order=3, multistep=True)),
        ("dpm_solver++", dict(order=3, multistep=True, update="exact")),
        ("dpm_solver++", dict(order=2, multistep=False)),
        ("dpm_solver++", dict(order=3, multistep=False)),
    ]
    for name, opts in cases:
        solver = sd.get_solver(name, **opts)
        nfes, errs = [], []
        for nfe in (24, 48, 96, 192):
            res = sd.sample(model, x_T, solver=solver, steps=nfe // solver.nfe_per_step)
            nfes.append(res.nfe)
            errs.append(float((res.x - ref).abs().max()))
        print(
            f"\nring {name} {opts}: NFE {nfes} err {[f'{e:.1e}' for e in errs]} slope {fit_line(nfes, errs).order:.2f}"
        )
        assert errs[-1] < errs[0]
