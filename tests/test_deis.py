"""DEIS (arXiv:2204.13902): weights against sympy, identities, exactness, convergence order, low precision and
agreement with diffusers' DEISMultistepScheduler."""

import pytest
import torch
from solver_checks import (
    DDPM_CONFIG,
    diffusers_run,
    discrete_problem,
    fitted_slope,
    gmm_problem,
    half_precision_errors,
    point_mass_flow,
    rel_error,
)

from sde_diffusion.analytic import Gaussian, GaussianMixture, PointMass
from sde_diffusion.grids import make_grid
from sde_diffusion.sample import Sampler, sample
from sde_diffusion.schedules import EDM, VEGeometric, VPLinear
from sde_diffusion.solvers import get_solver
from sde_diffusion.solvers.base import GridTable, base_coefficients
from sde_diffusion.solvers.deis import DEIS
from sde_diffusion.solvers.first_order import ddim_coefficients
from sde_diffusion.solvers.tableaux import TABLEAUX, ButcherTableau
from sde_diffusion.testing import measure_order

MULTISTEP = [dict(method=v, order=k) for v in ("tab", "rhoab", "logrho") for k in (1, 2, 3)]
RK = [dict(method="rhork", tableau=name) for name in TABLEAUX]
ALL = MULTISTEP + RK


def _id(opts):
    return "-".join(str(v) for v in opts.values())


# ---------------------------------------------------------------------------------------------------------------------
# construction, metadata
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_options():
    with pytest.raises(ValueError, match="method"):
        DEIS(method="ab")
    with pytest.raises(ValueError, match="order"):
        DEIS(order=4)
    with pytest.raises(ValueError, match="tableau"):
        DEIS(method="tab", tableau="rk4")
    with pytest.raises(ValueError, match="tableau"):
        DEIS(method="rhork", tableau="rk5")
    with pytest.raises(ValueError, match="contradicts"):
        DEIS(method="rhork", tableau="heun", order=3)
    with pytest.raises(TypeError, match="options"):
        get_solver("deis", stages=2)


@pytest.mark.parametrize("opts", ALL, ids=_id)
def test_metadata_and_nfe(opts):
    s = get_solver("deis", **opts)
    if opts["method"] == "rhork":
        tab = TABLEAUX[opts["tableau"]]
        assert (s.order, s.nfe_per_step, s.memory) == (tab.order, tab.stages, 0)
    else:
        assert (s.order, s.nfe_per_step, s.memory) == (opts["order"], 1, opts["order"] - 1)
    assert s.reference == "arXiv:2204.13902" and s.exact_for_point_mass
    sch = VPLinear()
    model = Gaussian(torch.zeros(2), torch.ones(2)).model(sch)
    for steps in (1, 2, 7):
        assert sample(model, torch.randn(3, 2), solver=s, steps=steps).nfe == s.final_nfe(steps)
    assert get_solver("deis", **s.options()).options() == s.options()


def test_custom_tableau_instance():
    """A tableau is data: a user-supplied midpoint rule runs through the same generic step, which equals the
    midpoint rule written out by hand in ``(y, rho) = (x/alpha, sigma/alpha)`` (stage at ``rho + drho/2``)."""
    midpoint = ButcherTableau(A=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2)
    s = DEIS(method="rhork", tableau=midpoint)
    assert (s.nfe_per_step, s.order, s.memory) == (2, 2, 0)
    sch = VPLinear()
    model = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.6])).model(sch)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    ts = make_grid(sch, "logsnr", 3)
    y = x / sch.alpha(ts[0])
    for t0, t1 in zip(ts[:-1], ts[1:]):
        r0, r1 = sch.sigma_ve(t0), sch.sigma_ve(t1)
        k1 = model.eps(sch.alpha(t0) * y, t0)
        tm = sch.inverse_lambda(-torch.log((r0 + r1) / 2))
        y = y + (r1 - r0) * model.eps(sch.alpha(tm) * (y + (r1 - r0) / 2 * k1), tm)
    got = sample(model, x, solver=s, grid=ts).x
    assert torch.allclose(got, sch.alpha(ts[-1]) * y, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------------


def _random_grid(schedule, n, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.sort(torch.rand(n - 2, generator=g), descending=True).values
    inner = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    return torch.cat([torch.tensor([schedule.t_max]), inner, torch.tensor([schedule.t_min])]).to(torch.float64)


@pytest.mark.parametrize(
    "name,schedule,closed_form",
    [
        ("edm", EDM(), True),
        ("ve_geometric", VEGeometric(), True),
        ("vp_linear", VPLinear(), False),
    ],
)
def test_tab_weights_equal_sympy(name, schedule, closed_form):
    """Numeric tAB weights (Gauss--Legendre in lambda) == the defining integral
    ``int (alpha_s/alpha_tau) g^2/(2 sigma) L_j(tau) dtau`` from sympy (closed form for EDM/VE; 30-digit mpmath
    quadrature of the sympy integrand for VP linear), to 1e-12 relative, on random grids."""
    from sde_diffusion.symbolic import deis_tab_weights, schedule_formulas

    formulas = schedule_formulas(name)
    worst = 0.0
    for seed, order in ((0, 2), (1, 3), (2, 3)):
        ts = _random_grid(schedule, 6, seed)
        co = DEIS(order=order, method="tab").coefficients(schedule, ts, GridTable(schedule, ts))
        for i in range(order - 1, ts.numel() - 1):
            nodes = [float(ts[i - j]) for j in range(order)]
            exact = deis_tab_weights(formulas, float(ts[i]), float(ts[i + 1]), nodes, closed_form=closed_form)
            for j, e in enumerate(exact):
                e = float(e.evalf(30))
                worst = max(worst, abs(float(co["w"].values[i, j]) - e) / abs(e))
    assert worst < 1e-12, worst


def test_rhoab_weights_closed_form():
    """rhoAB-2: ``C_0 = alpha_s drho (1 + drho/(2 d))``, ``C_1 = -alpha_s drho^2/(2 d)``,
    ``d = rho_t - rho_prev``."""
    sch = VPLinear()
    ts = make_grid(sch, "time_uniform", 9)
    co = DEIS(order=2, method="rhoab").coefficients(sch, ts, GridTable(sch, ts))
    rho, alpha = sch.sigma_ve(ts), sch.alpha(ts)
    for i in range(1, 9):
        drho, d = rho[i + 1] - rho[i], rho[i] - rho[i - 1]
        assert torch.allclose(co["w"].values[i, 0], alpha[i + 1] * drho * (1 + drho / (2 * d)), rtol=1e-12)
        assert torch.allclose(co["w"].values[i, 1], -alpha[i + 1] * drho**2 / (2 * d), rtol=1e-12)


@pytest.mark.parametrize("variant", ["tab", "rhoab", "logrho"])
def test_per_sample_grids(variant):
    """A batch with one grid per sample gives what each sample gives alone on its grid (vectorised weights)."""
    sch = VPLinear()
    g1, g2 = make_grid(sch, "logsnr", 7), make_grid(sch, "time_quadratic", 7)
    model = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.6])).model(sch)
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    for opts in ({"method": variant, "order": 3}, {"method": "rhork", "tableau": "kutta3"}):
        both = sample(model, x, solver="deis", grid=torch.stack([g1, g2], 1), **opts).x
        one = sample(model, x[:1], solver="deis", grid=g1, **opts).x
        two = sample(model, x[1:], solver="deis", grid=g2, **opts).x
        assert torch.allclose(both, torch.cat([one, two]), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# identities and exactness
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        dict(method="tab", order=1),
        dict(method="rhoab", order=1),
        dict(method="logrho", order=1),
        dict(method="rhork", tableau="euler"),
    ],
    ids=_id,
)
def test_first_order_is_ddim(opts):
    """DEIS-1 (every variant) == DDIM(eta=0) == DPM-Solver-1: coefficients and samples to 1e-12."""
    sch = VPLinear()
    model = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.6])).model(sch)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    for steps in (1, 4, 13):
        a = sample(model, x, solver="deis", steps=steps, **opts).x
        b = sample(model, x, solver="ddim", steps=steps).x
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    if opts["method"] == "tab":  # tAB-1's weight is DDIM's (the quadrature only sees L_0 - 1 = 0)
        ts = make_grid(sch, "logsnr", 10)
        base = base_coefficients(sch, ts)
        co = DEIS(order=1, method="tab").coefficients(sch, ts, GridTable(sch, ts))
        assert torch.allclose(co["w"].values[:, 0], ddim_coefficients(base, 0.0)["c_eps"], rtol=1e-14, atol=0)


def test_first_step_is_lower_order():
    """Warm-up: the first step of a k-step method is DEIS-1, the second DEIS-2."""
    sch = VPLinear()
    model = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.6])).model(sch)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    ts = make_grid(sch, "logsnr", 6)
    for variant in ("tab", "rhoab", "logrho"):
        r = {
            k: sample(model, x, solver="deis", grid=ts[:3], method=variant, order=k, return_trajectory=True)
            for k in (1, 2, 3)
        }
        assert torch.equal(r[3].trajectory[1], r[1].trajectory[1])
        assert torch.allclose(r[3].x, r[2].x, rtol=1e-13, atol=1e-13)
        assert not torch.allclose(r[2].x, r[1].x, rtol=1e-6)


@pytest.mark.parametrize("opts", ALL, ids=_id)
@pytest.mark.parametrize("schedule", [VPLinear(), VEGeometric()], ids=["vp", "ve"])
def test_point_mass_exact(opts, schedule):
    """Point-mass data: ``eps`` is constant along the flow, so every variant (polynomial in any variable, RK in
    rho) integrates it exactly -- at any step count and for every parametrisation of the network."""
    m = torch.tensor([0.7, -1.3, 0.2])
    x = schedule.sigma(torch.tensor(schedule.t_max)) * torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    want = point_mass_flow(m, x, schedule.t_max, schedule.t_min, schedule)
    # Round-off: rhoRK evaluates its later stages at y + drho sum(A k), which cancels terms of size rho_max |z| down
    # to rho_next |z|; the network then divides by sigma_next and the stage value is multiplied by drho again: the
    # error is ~ u rho_max^2 / rho_min |z| (1e-9 for one VP-linear step from rho = 157 to 0.01); multistep: ~u.
    tol = 1e-8 if opts["method"] == "rhork" else 1e-10
    for prediction in ("eps", "x0", "v", "score"):
        model = PointMass(m).model(schedule, prediction)
        for steps in (1, 2, 5, 7):
            got = sample(model, x, solver="deis", steps=steps, **opts).x
            assert torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max()), (prediction, steps)


# ---------------------------------------------------------------------------------------------------------------------
# convergence order
# ---------------------------------------------------------------------------------------------------------------------

#: NFE window of the order fits: 48 NFE is pre-asymptotic for the third-order methods (local slopes 2.2--2.8 at
#: 48--64 NFE, see docs/theory/deis.md), so the window starts at 96.
ORDER_NFE = (96, 128, 160, 240, 320, 480)


@pytest.mark.parametrize("opts", [o for o in ALL if o != dict(method="logrho", order=3)], ids=_id)
def test_order_gaussian(opts):
    """Slope of log error against log NFE on Gaussian data with the closed-form flow (VP linear, logSNR grid):
    within 0.15 of the declared order, both as a plain slope and with the ``1/N`` pre-asymptotic term of
    :func:`~sde_diffusion.testing.measure_order`."""
    s = get_solver("deis", **opts)
    m = measure_order(s, nfe=ORDER_NFE)
    assert abs(m.slope - s.order) < 0.15, m
    assert abs(m.order - s.order) < 0.15, m


def test_order_logrho3_mixture():
    """logrho-3 (= diffusers' DEIS-3): order 3 on a Gaussian mixture against a float64 torchdiffeq reference.
    On Gaussian data this method is super-convergent in the bulk (order 4, see the next test), so the Gaussian
    problem cannot show its order."""
    model, x, ref = gmm_problem()
    ns = [64, 96, 128, 192, 256]
    errors = [
        float((sample(model, x, solver="deis", steps=n, method="logrho", order=3).x - ref).abs().max()) for n in ns
    ]
    assert abs(fitted_slope(ns, errors) - 3) < 0.15, errors


def _run_exact_start(model, data, x, sch, steps, n_exact, **opts):
    s = Sampler(model, x, solver="deis", steps=steps, **opts)
    y, state = s.init(x)
    for i in range(steps):
        y, state = s.step(y, state, i)
        if i < n_exact:
            y = data.flow(x, sch.t_max, float(s.ts[i + 1]), sch)
    return y


def test_warmup_limits_gaussian_order():
    """Why logrho-3 is not measured on the Gaussian: with exact starting values its error falls like NFE^-4
    (bulk super-convergence on Gaussian data), while the two lower-order warm-up steps add an O(h^2) error (the
    first step's local error is h^2 d eps/d lambda at t_max, ~e^{2 lambda_max} small) which dominates the run."""
    sch = VPLinear()
    data = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.8, 1.5]))
    model = data.model(sch)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    ref = data.flow(x, sch.t_max, sch.t_min, sch)
    ns = [96, 128, 160, 240, 320, 480]
    runs = {k: [_run_exact_start(model, data, x, sch, n, k, method="logrho", order=3) for n in ns] for k in (0, 2)}
    bulk = [float((y - ref).abs().max()) for y in runs[2]]
    warmup = [float((a - b).abs().max()) for a, b in zip(runs[0], runs[2])]
    assert abs(fitted_slope(ns, bulk) - 4) < 0.15, bulk
    assert abs(fitted_slope(ns, warmup) - 2) < 0.2, warmup


# ---------------------------------------------------------------------------------------------------------------------
# low precision
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("opts", ALL, ids=_id)
def test_half_precision_model_outputs(opts, half):
    """fp16/bf16 network outputs with a float32 state stay finite down to t_min (50 and 10 steps) and close to
    the float64 result."""
    for steps in (50, 10):
        low, ref = half_precision_errors("deis", opts, half, steps)
        assert float((low.double() - ref).abs().max()) < 0.05 * float(ref.abs().max())


# ---------------------------------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_deis_exact_algorithm():
    """diffusers' DEIS ("logrho" AB) is our ``method="logrho"``: with exact float64 noise levels both give the same
    samples to 1e-12 (orders 1--3; 15 or more steps, where diffusers does not lower the final orders)."""
    diffusers = pytest.importorskip("diffusers")
    sch, net, model = discrete_problem()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    for steps in (15, 20, 50):
        for order in (1, 2, 3):
            ds = diffusers.DEISMultistepScheduler(**DDPM_CONFIG, solver_order=order)
            ref, ts = diffusers_run(ds, steps, net, x.clone(), sch)
            ours = sample(model, x, solver="deis", grid=ts, method="logrho", order=order).x
            assert rel_error(ours, ref) < 1e-12, (steps, order)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_deis_float32():
    """Stock float32 diffusers DEIS agrees with ours in float32 to 1e-5 at 15 and 20 steps. At more steps its
    float32 coefficients lose digits: they are differences of antiderivatives (``ind_fn(rho_t) - ind_fn(rho_s)``),
    which cancel catastrophically for small steps. Exact oracle: the float64 run of the same algorithm."""
    diffusers = pytest.importorskip("diffusers")
    sch, net, model = discrete_problem()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for steps in (15, 20):
        for order in (1, 2, 3):
            ref, ts = diffusers_run(diffusers.DEISMultistepScheduler(**DDPM_CONFIG, solver_order=order), steps, net, x)
            ours = sample(model, x, solver="deis", grid=ts, method="logrho", order=order).x
            assert ours.dtype == torch.float32 and rel_error(ours, ref) < 1e-5, (steps, order)
    # the defect: 100 steps, order 3
    stock, ts = diffusers_run(diffusers.DEISMultistepScheduler(**DDPM_CONFIG, solver_order=3), 100, net, x)
    exact = sample(model, x.double(), solver="deis", grid=ts, method="logrho", order=3).x
    ours = sample(model, x, solver="deis", grid=ts, method="logrho", order=3).x
    assert rel_error(ours, exact) < 5e-6
    assert rel_error(stock, exact) > 1e-4  # recorded in docs/theory/deis.md
