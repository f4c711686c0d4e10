"""Studies: problems, metrics, order fitting, convergence studies, reports and plots -- checked against mathematics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sde_diffusion import registered_solvers, sample
from sde_diffusion.solvers import Solver
from sde_diffusion.studies import (
    PROBLEMS,
    SCHEDULES,
    SCHEMA_VERSION,
    StudyResult,
    bundle,
    convergence_study,
    default_solvers,
    fit_line,
    fit_order,
    gaussian_w2,
    get_problem,
    load_bundle,
    ode_reference,
    parse_solver_spec,
    parse_value,
    sliced_w2,
)
from sde_diffusion.studies.metrics import sqrtm_psd

# ---------------------------------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_problem_builds_on_every_schedule(name, schedule):
    p = get_problem(name, schedule)
    x = p.start(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, *p.event_shape) and x.dtype == torch.float64
    eps = p.model().eps(x, torch.full((8,), p.t_start))
    assert torch.isfinite(eps).all()
    assert p.t_start > p.t_end


def test_problem_shapes_and_conditioning():
    assert get_problem("gauss2d").dim == 2 and get_problem("ring").dim == 2
    assert get_problem("gmm64").dim == 64 and get_problem("gauss16").dim == 16
    std = get_problem("gauss16").data.std
    assert float((std.max() / std.min()) ** 2) >= 1e3  # condition number of the covariance
    ring = get_problem("ring").data
    radii = torch.linalg.vector_norm(ring.means, dim=-1)
    assert torch.allclose(radii, torch.ones_like(radii)) and float(ring.stds.max()) <= 0.05


def test_unknown_problem_and_schedule_name_the_valid_choices():
    with pytest.raises(ValueError, match="valid problems: point, gauss2d"):
        get_problem("moons")
    with pytest.raises(ValueError, match="valid schedules: vp-linear"):
        get_problem("ring", "vp-square")


@pytest.mark.parametrize("schedule", ["vp-linear", "edm"])
@pytest.mark.parametrize("name", ["point", "gauss2d"])
def test_closed_form_flow_matches_torchdiffeq(name, schedule):
    p = get_problem(name, schedule)
    x = p.start(16, torch.Generator().manual_seed(1))
    exact, info = ode_reference(p, x)
    assert info["kind"] == "exact"
    ref, rinfo = ode_reference(p, x, kind="torchdiffeq", rtol=1e-10)
    assert rinfo["kind"] == "torchdiffeq" and len(rinfo["sweep"]) == 2
    err = float((ref - exact).abs().max())
    assert err < 1e-7
    # the sweep's estimate is conservative: the reference is at least as good as the estimate says
    assert err <= max(rinfo["error_estimate"], 1e-12) * 10


def test_start_distribution_is_the_exact_marginal():
    """Flowing exact p_{t_max} samples with the closed-form map gives p_{t_min}: mean and covariance match."""
    p = get_problem("gauss2d")
    x = p.start(20000, torch.Generator().manual_seed(2))
    y = p.exact_flow(x)
    mean, cov = p.gaussian_marginal()
    assert torch.allclose(y.mean(0), mean, atol=4e-3)
    assert torch.allclose(torch.cov(y.T), cov, rtol=0.05, atol=1e-5)
    prior = get_problem("gauss2d", start="prior").start(20000, torch.Generator().manual_seed(2))
    assert abs(float(prior.std()) - float(p.schedule.sigma(p.t_start))) < 0.02


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------


def _exact_moments(n, mean, cov, seed=0):
    """Samples whose empirical mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    return mean + z @ torch.linalg.cholesky(cov).T


def test_gaussian_w2_closed_form_for_commuting_covariances():
    m1, m2 = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.0, 0.5, 2.0])
    v1, v2 = torch.tensor([1.0, 0.25, 4.0]), torch.tensor([0.5, 1.0, 4.0])
    x = _exact_moments(500, m1, torch.diag(v1))
    want = math.sqrt(float(((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()))
    assert gaussian_w2(x, m2, torch.diag(v2)) == pytest.approx(want, rel=1e-9)


def test_gaussian_w2_is_zero_for_matching_moments_and_symmetric_sqrtm():
    a = torch.tensor([[2.0, 0.3], [0.3, 0.5]])
    x = _exact_moments(300, torch.tensor([1.0, 2.0]), a)
    assert gaussian_w2(x, torch.tensor([1.0, 2.0]), a) < 1e-7
    r = sqrtm_psd(a)
    assert torch.allclose(r @ r, a) and torch.allclose(r, r.T)


def test_sliced_w2_of_a_translation():
    """Every 1-D projection of a translate is the translate of the projection: W2 = |u.v| exactly."""
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    v = torch.tensor([0.3, -0.1, 0.2, 0.5])
    got = sliced_w2(x + v, x, projections=4000)
    assert got == pytest.approx(float(v.norm()) / 2.0, rel=0.05)  # E (u.v)^2 = |v|^2 / d
    assert sliced_w2(x, x.flip(0)) == pytest.approx(0.0, abs=1e-12)  # permutation invariant
    with pytest.raises(ValueError, match="equal sample counts"):
        sliced_w2(x, x[:10])


# ---------------------------------------------------------------------------------------------------------------------
# order fitting
# ---------------------------------------------------------------------------------------------------------------------

NS = [8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]


def test_fit_line_recovers_a_power_law_and_its_standard_error():
    f = fit_line(NS, [3.0 * n**-2.5 for n in NS])
    assert f.order == pytest.approx(2.5, abs=1e-12) and f.stderr < 1e-12 and f.points == len(NS)
    g = torch.Generator().manual_seed(0)
    noise = torch.exp(0.1 * torch.randn(len(NS), generator=g)).tolist()
    f = fit_line(NS, [n**-2.0 * e for n, e in zip(NS, noise)])
    assert 0 < f.stderr < 0.1 and abs(f.order - 2.0) < 3 * f.stderr + 0.02
    assert fit_line([4, 8], [1.0, 0.25]).stderr is None


def test_fit_order_excludes_the_round_off_floor_and_splits_the_ranges():
    # pre-asymptotic order 1 up to NFE 24, then order 3 (continuous), then a floor at 1e-7 with jitter
    def power(n):
        return n**-1.0 if n <= 24 else 24**-1.0 * (n / 24) ** -3.0

    def err(n):
        return max(power(n), 1e-7 * (1 + 0.3 * math.sin(n)))

    ns = NS + [384, 512, 768, 1024, 2048, 4096]
    fit = fit_order(ns, [err(n) for n in ns], floor=2e-7, declared=3)
    assert fit.asymptotic.order == pytest.approx(3.0, abs=0.05)
    assert fit.asymptotic.nfe_min == 24 and fit.asymptotic.nfe_max == 1024
    assert fit.pre_asymptotic.order == pytest.approx(1.0, abs=0.05) and fit.pre_asymptotic.nfe_max <= 24
    assert fit.excluded == [2048, 4096]
    # without the absolute floor the plateau and the bend into it are detected from the local orders
    plateau = fit_order(ns, [max(power(n), 1e-6) for n in ns])
    assert plateau.order == pytest.approx(3.0, abs=0.05) and plateau.excluded == [1024, 2048, 4096]


def test_fit_order_edge_cases():
    assert fit_order([10, 20], [1e-3, None]).asymptotic is None
    # e = n^-2 exp(4/n): the plain slope is biased at small n, the 1/n-corrected fit is exact
    err = [n**-2.0 * math.exp(4.0 / n) for n in NS]
    assert fit_line(NS[:4], err[:4]).order > 2.1
    corrected = fit_line(NS, err, correction=True)
    assert corrected.order == pytest.approx(2.0, abs=1e-10) and corrected.residual < 1e-12
    fit = fit_order(NS, err, declared=2)
    assert fit.status == "confirmed" and fit.to_dict()["asymptotic"]["order"] == pytest.approx(fit.order)


# ---------------------------------------------------------------------------------------------------------------------
# solver specs and NFE budgets
# ---------------------------------------------------------------------------------------------------------------------


def test_parse_values_and_specs():
    assert [parse_value(v) for v in ("3", "0.5", "True", "no", "none", "x0")] == [3, 0.5, True, False, None, "x0"]
    s = parse_solver_spec("ddim:eta=1")
    assert (s.name, s.options, s.label) == ("ddim", {"eta": 1}, "ddim:eta=1")
    assert parse_solver_spec("pc:snr=0.2:n_corrector=2").options == {"snr": 0.2, "n_corrector": 2}
    with pytest.raises(ValueError, match="valid solvers: .*ddim"):
        parse_solver_spec("nosuch").build()
    with pytest.raises(ValueError, match="unknown option .bogus. for solver .ddim.; valid options: eta"):
        parse_solver_spec("ddim:bogus=1").build()
    with pytest.raises(ValueError, match="key=value"):
        parse_solver_spec("ddim:eta")


class _ThreeStage(Solver):
    nfe_per_step = 3


@pytest.mark.parametrize("nfe", [1, 2, 5, 9, 10, 50])
def test_steps_for_nfe(nfe):
    reg = registered_solvers()
    assert reg["ddim"]().steps_for_nfe(nfe) == nfe
    assert reg["heun"]().steps_for_nfe(nfe) == (nfe + 1) // 2  # 2N - 1 evaluations
    assert _ThreeStage().steps_for_nfe(nfe) == nfe // 3


def test_default_solvers_include_registered_high_order_solvers():
    d = default_solvers()
    assert d[:2] == ["ddim", "heun"]
    for name in ("dpm_solver++", "unipc", "deis"):
        if name in registered_solvers():
            assert any(label.split(":")[0] == name for label in d)


# ---------------------------------------------------------------------------------------------------------------------
# convergence studies
# ---------------------------------------------------------------------------------------------------------------------

ORDER_NFE = [24, 32, 48, 64, 96, 128, 192]  # refined by doubling 192 until the asymptotic range is found


def _order_solvers():
    out = [("ddim", 1.0), ("heun", 2.0)]
    if "dpm_solver++" in registered_solvers():
        out.append(("dpm_solver++:order=2,multistep=true", 2.0))
    return out


@pytest.fixture(scope="module")
def gauss_study():
    solvers = [s for s, _ in _order_solvers()]
    return convergence_study("gauss2d", solvers, ORDER_NFE, n=64, seed=3, progress=False, refine=True)


def test_fitted_orders_match_declared_orders_on_the_gaussian(gauss_study):
    for label, order in _order_solvers():
        fit = gauss_study.fit(label)
        assert fit.declared == order
        assert fit.status == "confirmed", (label, fit.verdict, fit.local)
        assert fit.order == pytest.approx(order, abs=0.15), (label, fit.describe())
        assert fit.asymptotic.stderr < 0.1


def test_actual_nfe_is_reported_and_wall_time_measured(gauss_study):
    assert gauss_study.budgets == ORDER_NFE and all(r.refined == (r.nfe_budget > 192) for r in gauss_study.runs)
    for r in gauss_study.runs:
        assert r.nfe <= r.nfe_budget and r.wall_time > 0
        expected = r.nfe_budget if r.solver != "heun" else 2 * ((r.nfe_budget + 1) // 2) - 1
        assert r.nfe == expected and r.steps == parse_solver_spec(r.solver).build().steps_for_nfe(r.nfe_budget)


def test_study_errors_are_the_pathwise_errors_against_the_exact_flow(gauss_study):
    p = get_problem("gauss2d")
    x = p.start(64, torch.Generator().manual_seed(3))
    out = sample(p.model(), x, solver="ddim", steps=48)
    want = float(((out.x - p.exact_flow(x)) ** 2).mean().sqrt())
    (run,) = [r for r in gauss_study.runs if r.solver == "ddim" and r.nfe_budget == 48]
    assert run.error == pytest.approx(want, rel=1e-12)
    assert run.dist_error is not None and gauss_study.dist_metric == "gaussian_w2"


def test_point_mass_is_exact_and_the_floor_is_excluded():
    res = convergence_study("point", ["ddim"], [2, 4, 8, 16], n=16, progress=False)
    assert all(r.error < 1e-12 for r in res.runs)
    fit = res.fit("ddim")
    assert fit.asymptotic is None and fit.excluded == [2, 4, 8, 16]


def test_ring_study_with_torchdiffeq_reference_and_json_round_trip():
    res = convergence_study("ring", ["ddim", "heun"], [4, 8, 16], n=48, rtol=1e-9, progress=False)
    ode = res.reference["ode"]
    assert ode["kind"] == "torchdiffeq" and ode["error_estimate"] < 1e-5 and len(ode["sweep"]) == 2
    errs = [r.error for r in res.runs_of("ddim")]
    assert errs == sorted(errs, reverse=True)
    assert res.dist_metric == "sliced_w2" and res.dist_floor > 0
    assert ("ddim", 8) in res.samples and res.target.shape == (48, 2)
    d = json.loads(res.to_json())
    assert d["schema_version"] == SCHEMA_VERSION and d["kind"] == "sde_diffusion.convergence_study"
    back = StudyResult.from_json(res.to_json())
    assert back.to_dict() == res.to_dict()
    both = load_bundle(json.dumps(bundle({"a": res, "b": back}, note="x")))
    assert set(both) == {"a", "b"} and both["a"].runs == res.runs
    with pytest.raises(ValueError, match="version"):
        StudyResult.from_dict({**d, "schema_version": 999})
    md = res.to_markdown()
    assert "| `ddim` |" in md and "effective order over NFE 4-16" in md and "NFE 16" in md
    assert "(15)" in md  # heun's actual NFE for the budget 16


def test_strong_error_of_stochastic_solvers_on_the_same_brownian_path():
    """Euler--Maruyama has strong order 1 on the reverse SDE (additive noise), measured against torchsde SRK on the
    same Brownian path; the SDE reference reports its sub-step sweep."""
    res = convergence_study(
        "gauss2d", ["euler_maruyama"], [16, 32, 64, 128], n=32, sde_segments=8, sde_substeps=24, progress=False
    )
    sde = res.reference["sde"]
    assert sde["kind"] == "torchsde" and sde["error_estimate"] < 1e-3 and res.reference["ode"] is None
    fit = res.fit("euler_maruyama")  # four points from NFE 16: the effective order; the verdict needs more
    assert fit.effective.order == pytest.approx(1.0, abs=0.3), fit.effective.describe()
    assert len(fit.local) == 3 and fit.verdict.startswith(("order 1 confirmed", "not reached"))


def test_progress_bar_is_silent_when_asked_or_not_a_tty(capsys):
    convergence_study("point", ["ddim"], [2], n=4, progress=False)
    convergence_study("point", ["ddim"], [2], n=4)  # pytest's capture is not a terminal
    assert capsys.readouterr().err == ""


def test_study_rejects_adaptive_solvers_and_bad_references():
    adaptive = [n for n, c in registered_solvers().items() if c.adaptive]
    if adaptive:
        with pytest.raises(ValueError, match="adaptive"):
            convergence_study("point", [adaptive[0]], [4], n=4)
    with pytest.raises(ValueError, match="closed-form"):
        convergence_study("ring", ["ddim"], [4], n=4, reference="exact")


# ---------------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------------


def test_plots_render_on_agg_without_touching_the_global_backend(tmp_path, gauss_study):
    import matplotlib

    from sde_diffusion.studies.plots import (
        plot_convergence,
        plot_samples,
        plot_trajectories,
        plot_work_precision,
        save_figure,
        short_label,
        study_figure,
    )

    backend = matplotlib.get_backend()
    ring = convergence_study("ring", ["ddim", "heun"], [4, 8], n=32, rtol=1e-8, sweep=False, progress=False)
    figs = {
        "conv": plot_convergence(gauss_study),
        "wp": plot_work_precision(gauss_study),
        "samples": plot_samples(ring, 8),
        "traj": plot_trajectories("ring", "heun", 6, n=4),
        "study": study_figure(ring, gauss_study),
    }
    for name, fig in figs.items():
        save_figure(fig, tmp_path / f"{name}.png", dpi=40)
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend
    assert short_label("dpm_solver++:order=2,multistep=true") == "dpm_solver++ o2 multistep"
    with pytest.raises(ValueError, match="no samples"):
        plot_samples(StudyResult.from_json(gauss_study.to_json()))


def test_a_falling_local_order_without_a_floor_is_not_taken_for_one():
    """Pre-asymptotic superconvergence (local order 3.3, then 1.3) is kept: the bend rule needs a detected floor;
    and it is no asymptotic range either."""
    fit = fit_order([5, 10, 20], [8.07e-2, 7.92e-3, 3.18e-3])
    assert fit.excluded == [] and fit.nfe == [5, 10, 20] and fit.status == "not_reached" and fit.asymptotic is None
