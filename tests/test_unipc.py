"""UniPC (arXiv:2302.04867): weights, hand-derived updates, exactness, convergence order, low precision and
agreement with diffusers' UniPCMultistepScheduler."""

import itertools

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
from sde_diffusion.sample import sample
from sde_diffusion.schedules import VEGeometric, VPLinear
from sde_diffusion.solvers import get_solver
from sde_diffusion.solvers.expint import lagrange_weights
from sde_diffusion.solvers.unipc import UniPC, unipc_weights
from sde_diffusion.testing import measure_order

CONFIGS = [
    dict(predictor_order=p, b_h=v, prediction=m) for m in ("x0", "eps") for v in ("bh1", "bh2") for p in (1, 2, 3)
]
EXTRA = [
    dict(predictor_order=3, disable_corrector=True),
    dict(predictor_order=3, prediction="eps", disable_corrector=True),
    dict(predictor_order=3, lower_order_final=True),
]


def _id(opts):
    return "-".join(str(v) for v in opts.values())


def _mixture_model(sch, prediction="eps"):
    return GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.3, 0.6])).model(sch, prediction)


# ---------------------------------------------------------------------------------------------------------------------
# construction, metadata
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_options():
    for bad in (
        dict(predictor_order=0),
        dict(predictor_order=4),
        dict(predictor_order=True),
        dict(predictor_order=2.0),
        dict(b_h="bh3"),
        dict(prediction="v"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            UniPC(**bad)
    with pytest.raises(TypeError):
        UniPC(lower_order_final=1)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_metadata_and_nfe(p):
    """Order ``p + 1`` with the corrector, ``p`` without, capped at 2 by ``lower_order_final``; one NFE per step
    (the corrector re-uses the evaluation the next predictor needs; the last step has no corrector)."""
    assert UniPC(predictor_order=p).order == p + 1
    assert UniPC(predictor_order=p, disable_corrector=True).order == p
    assert UniPC(predictor_order=p, lower_order_final=True).order == min(p + 1, 2)
    s = UniPC(predictor_order=p)
    assert (s.nfe_per_step, s.memory, s.reference) == (1, p, "arXiv:2302.04867")
    model = _mixture_model(VPLinear())
    for steps in (1, 2, 3, 7):
        assert sample(model, torch.randn(3, 2), solver=s, steps=steps).nfe == steps == s.final_nfe(steps)
    assert get_solver("unipc", **s.options()).options() == s.options()


# ---------------------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [[-0.8, -1.7], [-1.3, 1.0], [-0.9, -2.1, 1.0]])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_solved_weights_are_exponential_lagrange(nodes, variant):
    """With two or more unknowns the order conditions are solved exactly, so UniP-p (p >= 3) and UniC-p (p >= 2)
    are the exponentially weighted Lagrange integrals through ``0`` and the nodes, whatever ``B(h)``:
    ``x0``: ``W_j = int_0^h e^{-(h-u)} L_j``; ``eps``: ``-int_0^h e^{h-u} L_j``."""
    r = torch.tensor(nodes, dtype=torch.float64)
    for h in (1e-3, 0.2, 1.5):
        h = torch.tensor(h, dtype=torch.float64)
        full = torch.cat([torch.zeros(1, dtype=torch.float64), r])
        for hh, sign in ((-h, -1), (h, 1)):
            w0, w = unipc_weights(r, hh, variant)
            want = -sign * lagrange_weights(full, h, sign)
            assert torch.allclose(torch.cat([w0[None], w]), want, rtol=1e-11, atol=1e-15), (h, sign)


def test_single_unknown_is_one_half():
    """One unknown (UniP-2, UniC-1): ``rho = 1/2`` as in the authors' code -- not the solved ``hh phi_2/B``."""
    r = torch.tensor([-0.7], dtype=torch.float64)
    h = torch.tensor(0.4, dtype=torch.float64)
    for variant, big_b in (("bh1", -h), ("bh2", torch.expm1(-h))):
        w0, w = unipc_weights(r, -h, variant)
        assert torch.allclose(w, -big_b * 0.5 / r)
        assert torch.allclose(w0 + w.sum(), -torch.expm1(-h))


# ---------------------------------------------------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------------------------------------------------


def _lam(sch, t):
    return float(sch.lambda_(t))


def _hand_unipc1(model, x, ts, sch, prediction, variant):
    """UniPC-1 written out: DDIM predictor, trapezoid-like corrector with rho = 1/2 using the next evaluation."""
    data = prediction == "x0"
    xc_prev, xp, m_prev = x, x, None
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        m = model.predict(xp, t, prediction)
        if m_prev is not None:  # correct x at t with the new evaluation m (UniC-1)
            tp = ts[i - 1]
            h = _lam(sch, t) - _lam(sch, tp)
            hh = -h if data else h
            big_b = hh if variant == "bh1" else torch.expm1(torch.tensor(hh))
            base = float(sch.sigma(t) / sch.sigma(tp)) if data else float(sch.alpha(t) / sch.alpha(tp))
            scale = float(sch.alpha(t)) if data else float(sch.sigma(t))
            xc = base * xc_prev - scale * torch.expm1(torch.tensor(hh)) * m_prev - scale * big_b * 0.5 * (m - m_prev)
        else:
            xc = xp
        h = _lam(sch, s) - _lam(sch, t)
        hh = -h if data else h
        base = float(sch.sigma(s) / sch.sigma(t)) if data else float(sch.alpha(s) / sch.alpha(t))
        scale = float(sch.alpha(s)) if data else float(sch.sigma(s))
        xp = base * xc - scale * torch.expm1(torch.tensor(hh)) * m
        xc_prev, m_prev = xc, m
    return xp


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_order1_with_corrector_hand_formula(prediction, variant):
    sch = VPLinear()
    model = _mixture_model(sch)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    ts = make_grid(sch, "logsnr", 5)
    got = sample(model, x, solver="unipc", grid=ts, predictor_order=1, b_h=variant, prediction=prediction).x
    assert torch.allclose(got, _hand_unipc1(model, x, ts, sch, prediction, variant), rtol=1e-12, atol=1e-12)


def test_unip2_bh2_is_dpm_solver_pp_2m():
    """UniP-2 (bh2, data prediction, no corrector) is DPM-Solver++(2M) (arXiv:2211.01095, Alg. 2):
    ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h_i) ((1 + 1/(2r)) m_i - m_{i-1}/(2r))``,
    ``r = h_{i-1}/h_i``, with a DDIM first step."""
    sch = VPLinear()
    model = _mixture_model(sch)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    ts = make_grid(sch, "time_uniform", 6)
    y, m_prev, h_prev = x, None, None
    for t, s in zip(ts[:-1], ts[1:]):
        m = model.x0(y, t)
        h = _lam(sch, s) - _lam(sch, t)
        d = m if m_prev is None else (1 + h / (2 * h_prev)) * m - h / (2 * h_prev) * m_prev
        y = sch.sigma(s) / sch.sigma(t) * y - sch.alpha(s) * torch.expm1(torch.tensor(-h)) * d
        m_prev, h_prev = m, h
    got = sample(
        model, x, solver="unipc", grid=ts, predictor_order=2, disable_corrector=True, lower_order_final=False
    ).x
    assert torch.allclose(got, y, rtol=1e-12, atol=1e-12)


def test_unip3_eps_is_deis_logrho3():
    """UniP-3 with noise prediction solves its order conditions exactly: from the third step on it is the
    exponential Lagrange multistep method in lambda, i.e. DEIS ``logrho``-3 (= diffusers' DEIS-3). Its second
    (warm-up) step is UniP-2, whose single rho is fixed to 1/2 and so differs from logrho-2."""
    from sde_diffusion.solvers.base import GridTable
    from sde_diffusion.solvers.deis import DEIS

    sch = VPLinear()
    for grid in ("logsnr", "time_uniform"):
        ts = make_grid(sch, grid, 9)
        table = GridTable(sch, ts)
        u = UniPC(predictor_order=3, prediction="eps", disable_corrector=True, lower_order_final=False).coefficients(
            sch, ts, table
        )
        d = DEIS(order=3, method="logrho").coefficients(sch, ts, table)
        assert torch.allclose(u["p_x"], d["ratio"].values, rtol=1e-15)
        p, w = u["p_w"].values, d["w"].values
        assert p.shape == w.shape == (9, 3)
        assert torch.allclose(p[2:], w[2:], rtol=1e-11, atol=1e-14), grid
        assert not torch.allclose(p[1, 1], w[1, 1], rtol=1e-6)


def test_first_steps_are_lower_order():
    """UniPC-p's first step is its order-1 step (DDIM = DPM-Solver(++)-1: the corrector has no new evaluation yet
    for a one-step run); with two steps UniPC-3 is UniPC-2 (warm-up, corrector order = previous predictor's)."""
    sch = VPLinear()
    model = _mixture_model(sch)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    for prediction, variant in itertools.product(("x0", "eps"), ("bh1", "bh2")):
        opts = dict(prediction=prediction, b_h=variant, lower_order_final=False)
        one = [sample(model, x, solver="unipc", steps=1, predictor_order=p, **opts).x for p in (1, 2, 3)]
        ddim = sample(model, x, solver="ddim", steps=1).x
        for y in one:
            assert torch.allclose(y, ddim, rtol=1e-12, atol=1e-12)
        two = [sample(model, x, solver="unipc", steps=2, predictor_order=p, **opts).x for p in (2, 3)]
        assert torch.allclose(two[0], two[1], rtol=1e-14, atol=1e-14)
        assert not torch.allclose(
            two[0], sample(model, x, solver="unipc", steps=2, predictor_order=1, **opts).x, rtol=1e-6
        )


@pytest.mark.parametrize("opts", CONFIGS + EXTRA, ids=_id)
def test_per_sample_grids(opts):
    sch = VPLinear()
    g1, g2 = make_grid(sch, "logsnr", 7), make_grid(sch, "time_quadratic", 7)
    model = _mixture_model(sch)
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    both = sample(model, x, solver="unipc", grid=torch.stack([g1, g2], 1), **opts).x
    one = sample(model, x[:1], solver="unipc", grid=g1, **opts).x
    two = sample(model, x[1:], solver="unipc", grid=g2, **opts).x
    assert torch.allclose(both, torch.cat([one, two]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opts", CONFIGS + EXTRA, ids=_id)
@pytest.mark.parametrize("schedule", [VPLinear(), VEGeometric()], ids=["vp", "ve"])
def test_point_mass_exact(opts, schedule):
    """Point mass: ``x0`` and ``eps`` are both constant along the flow, so predictor and corrector are exact at any
    step count and for every parametrisation of the network."""
    m = torch.tensor([0.7, -1.3, 0.2])
    x = schedule.sigma(torch.tensor(schedule.t_max)) * torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    want = point_mass_flow(m, x, schedule.t_max, schedule.t_min, schedule)
    for prediction in ("eps", "x0", "v", "score"):
        model = PointMass(m).model(schedule, prediction)
        for steps in (1, 2, 5, 7):
            got = sample(model, x, solver="unipc", steps=steps, **opts).x
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-10 * want.abs().max()), (prediction, steps)


# ---------------------------------------------------------------------------------------------------------------------
# convergence order
# ---------------------------------------------------------------------------------------------------------------------

ORDER_NFE = (96, 128, 160, 240, 320, 480)


@pytest.mark.parametrize(
    "opts",
    CONFIGS + [dict(predictor_order=p, prediction=m, disable_corrector=True) for p in (1, 2) for m in ("x0", "eps")],
    ids=_id,
)
def test_order_gaussian(opts):
    """Gaussian data, exact flow, VP linear, logSNR grid: the slope is within 0.15 of the declared order
    (``p + 1`` with the corrector, the last step uncorrected), as a plain slope and with the ``1/N`` term."""
    s = get_solver("unipc", **opts)
    m = measure_order(s, nfe=ORDER_NFE)
    assert abs(m.slope - s.order) < 0.15, m
    assert abs(m.order - s.order) < 0.15, m


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_order_unip3_mixture(prediction):
    """UniP-3 without corrector: order 3 on a Gaussian mixture (float64 torchdiffeq reference). On Gaussian data
    it is super-convergent in the bulk and its order-1 warm-up step dominates (see test_deis)."""
    model, x, ref = gmm_problem()
    ns = [64, 96, 128, 192, 256]
    errors = [
        float(
            (
                sample(
                    model, x, solver="unipc", steps=n, predictor_order=3, prediction=prediction, disable_corrector=True
                ).x
                - ref
            )
            .abs()
            .max()
        )
        for n in ns
    ]
    assert abs(fitted_slope(ns, errors) - 3) < 0.15, errors


@pytest.mark.parametrize("p", [2, 3])
def test_lower_order_final_costs_second_order(p):
    """``lower_order_final`` ends with an uncorrected order-1 step, whose local error O(h^2) caps the global order
    at 2: the change it makes to the result falls like NFE^-2 (its constant is small near t_min, so the measured
    total error stays close to the uncapped one over practical NFE)."""
    sch = VPLinear()
    data = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.8, 1.5]))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    ns = [128, 160, 240, 320, 480]
    diff = [
        float(
            (
                sample(data.model(sch), x, solver="unipc", steps=n, predictor_order=p, lower_order_final=True).x
                - sample(data.model(sch), x, solver="unipc", steps=n, predictor_order=p).x
            )
            .abs()
            .max()
        )
        for n in ns
    ]
    assert abs(fitted_slope(ns, diff) - 2) < 0.15, diff


# ---------------------------------------------------------------------------------------------------------------------
# low precision
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("opts", CONFIGS + [dict(predictor_order=3, lower_order_final=True)], ids=_id)
def test_half_precision_model_outputs(opts, half):
    """fp16/bf16 network outputs with a float32 state stay finite down to t_min (50 and 10 steps), the typical sample
    close to the float64 result."""
    for steps in (50, 10):
        low, ref = half_precision_errors("unipc", opts, half, steps)
        # typical samples stay close; single samples may move further (bf16, UniPC-3 with noise prediction and
        # the corrector, 10 steps: one of 16 samples moves by 0.65 -- see docs/theory/unipc.md)
        err = (low.double() - ref).abs().amax(1)
        assert float(err.median()) < 0.05 * float(ref.abs().max()), err


# ---------------------------------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------------------------------


def _scheduler(diffusers, order, b_h="bh2", prediction="x0", lower_order_final=True, final="sigma_min"):
    return diffusers.UniPCMultistepScheduler(
        **DDPM_CONFIG,
        solver_order=order,
        solver_type=b_h,
        predict_x0=prediction == "x0",
        lower_order_final=lower_order_final,
        final_sigmas_type=final,
    )


def _ours(model, x, ts, order, b_h="bh2", prediction="x0", lower_order_final=True, **kw):
    return sample(
        model,
        x,
        solver="unipc",
        grid=ts,
        predictor_order=order,
        b_h=b_h,
        prediction=prediction,
        lower_order_final=lower_order_final,
        **kw,
    ).x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_unipc_exact_algorithm():
    """diffusers' UniPC is ours, option for option: with its float32 noise levels replaced by the exact float64 ones,
    float64 runs agree to 1e-12 (orders 1--3, bh1/bh2, data/noise prediction, with and without lower_order_final;
    final_sigmas_type="sigma_min", i.e. the grid ends at t = 1/N)."""
    diffusers = pytest.importorskip("diffusers")
    sch, net, model = discrete_problem()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    for steps, order, variant, prediction, lof in itertools.product(
        (5, 16), (1, 2, 3), ("bh1", "bh2"), ("x0", "eps"), (False, True)
    ):
        opts = dict(b_h=variant, prediction=prediction, lower_order_final=lof)
        ref, ts = diffusers_run(_scheduler(diffusers, order, **opts), steps, net, x.clone(), sch)
        assert rel_error(_ours(model, x, ts, order, **opts), ref) < 1e-12, (steps, order, opts)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_unipc_float32():
    """Stock float32 diffusers UniPC (bh2, data prediction, its default lower_order_final=True) agrees with ours in
    float32 to 1e-5. Without lower_order_final it does not: diffusers forms its noise levels as
    ``sqrt((1 - a)/a)`` from float32 ``alphas_cumprod``, which cancels at low noise (the last level, t = 1/N, is off
    by 8e-5 relative), and the final order-3 step (h = 3.1 on this grid) carries that error into the result.
    With the exact float64 noise levels the float32 runs agree to 1e-5 again; ours stays within 5e-6 of the
    float64 result (the exact oracle), stock diffusers does not."""
    diffusers = pytest.importorskip("diffusers")
    sch, net, model = discrete_problem()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for steps, order in itertools.product((5, 10, 16, 25), (1, 2, 3)):
        ref, ts = diffusers_run(_scheduler(diffusers, order), steps, net, x)
        ours = _ours(model, x, ts, order)
        assert ours.dtype == torch.float32 and rel_error(ours, ref) < 1e-5, (steps, order)
    for steps in (10, 16):
        stock, ts = diffusers_run(_scheduler(diffusers, 3, lower_order_final=False), steps, net, x)
        exact_levels, _ = diffusers_run(_scheduler(diffusers, 3, lower_order_final=False), steps, net, x, sch)
        ours = _ours(model, x, ts, 3, lower_order_final=False)
        exact = _ours(model, x.double(), ts, 3, lower_order_final=False)
        assert rel_error(ours, exact_levels) < 1e-5 and rel_error(ours, exact) < 5e-6
        assert rel_error(stock, exact) > 1e-5  # recorded in docs/theory/unipc.md


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_final_sigma_zero():
    """``final_sigmas_type="zero"`` (diffusers' default): the last step to sigma = 0 returns the data prediction at
    the last grid time, i.e. ours on the first ``n`` grid times (``n - 1`` steps) plus ``denoise_to_zero`` (same NFE).
    Matching orders needs lower_order_final=False on our side (diffusers' rule counts the final step): exact for
    orders 1 and 2."""
    diffusers = pytest.importorskip("diffusers")
    sch, net, model = discrete_problem()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for steps, order in itertools.product((5, 10), (1, 2)):
        ref, ts = diffusers_run(_scheduler(diffusers, order, final="zero"), steps, net, x)
        ours = _ours(model, x, ts[:-1], order, lower_order_final=False, denoise_to_zero=True)
        assert rel_error(ours, ref) < 1e-5, (steps, order)
