"""The public property-testing toolkit (``sde_diffusion.testing``): its strategies draw valid objects, its checks pass
on every registered solver and on a correct user-defined schedule, and they reject deliberately broken schedules and
solvers naming the property that is violated."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.analytic import AnalyticDistribution
from sde_diffusion.grids import validate_grid
from sde_diffusion.models import PREDICTIONS, to_x0
from sde_diffusion.schedules import NoiseSchedule, VPCosine, VPLinear
from sde_diffusion.solvers import DDIM, DDPM, Euler, Heun, PredictorCorrector, get_solver, registered_solvers
from sde_diffusion.solvers.first_order import DDIMInverse

F64 = torch.float64
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "check_custom_schedule.py"


# ---------------------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_grids_are_valid_time_grids(data):
    schedule = data.draw(testing.schedules(), label="schedule")
    batch = data.draw(st.sampled_from([None, 1, 3]), label="batch")
    decreasing = data.draw(st.booleans(), label="decreasing")
    ts = data.draw(testing.grids(schedule, 12, batch=batch, decreasing=decreasing), label="grid")
    assert ts.dtype == F64
    assert ts.shape[1:] == (() if batch is None else (batch,))
    assert 2 <= ts.shape[0] <= 13
    validate_grid(schedule, ts, decreasing=decreasing)  # strictly monotone, no duplicates, inside [t_min, t_max]


@pytest.mark.parametrize("kind", testing.GRID_KINDS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_grids_of_each_kind_span_the_domain_without_sub_intervals(kind, data):
    schedule = data.draw(testing.schedules(), label="schedule")
    ts = data.draw(testing.grids(schedule, 10, kinds=(kind,), sub_intervals=False), label="grid")
    assert (float(ts[0]), float(ts[-1])) == (schedule.t_max, schedule.t_min)
    if kind == "logsnr":  # equal steps in lambda
        h = schedule.lambda_(ts).diff()
        torch.testing.assert_close(h, h.mean().expand_as(h), rtol=1e-7, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(dist=testing.analytic_data((2, 3)), data=st.data())
def test_analytic_data_are_oracles_with_consistent_parametrisations(dist, data):
    assert isinstance(dist, AnalyticDistribution)
    assert tuple(dist.event_shape) == (2, 3)
    schedule = data.draw(testing.schedules(("vp_linear", "ve_geometric")), label="schedule")
    t = torch.full((4,), data.draw(testing.times(schedule), label="t"), dtype=F64)
    g = torch.Generator().manual_seed(0)
    x = schedule.alpha(t[0]) * dist.sample(4, g) + schedule.sigma(t[0]) * torch.randn((4, 2, 3), generator=g)
    a, s = schedule.alpha(t).reshape(-1, 1, 1), schedule.sigma(t).reshape(-1, 1, 1)
    want = dist.model(schedule, "x0").fn(x, t)
    for prediction in PREDICTIONS:  # every parametrisation of the oracle denoises to the same x0
        out = dist.model(schedule, prediction).fn(x, t)
        torch.testing.assert_close(to_x0(out, x, a, s, prediction), want, rtol=1e-7, atol=1e-7)


def test_predictions_strategy_covers_every_parametrisation():
    seen = set()

    @settings(max_examples=40, deadline=None, database=None)
    @given(testing.predictions())
    def collect(p):
        seen.add(p)

    collect()
    assert seen == set(PREDICTIONS)


def test_solver_options_table_names_registered_solvers():
    assert set(testing.SOLVER_OPTIONS) <= set(registered_solvers())


@settings(max_examples=60, deadline=None)
@given(solver=testing.solvers())
def test_solvers_strategy_builds_registered_solvers_whose_options_rebuild_them(solver):
    cls = registered_solvers()[solver.name]
    assert isinstance(solver, cls)
    assert get_solver(solver.name, **solver.options()).key() == solver.key()


@settings(max_examples=20, deadline=None)
@given(solver=testing.solvers(stochastic=False))
def test_solvers_strategy_filters_deterministic(solver):
    assert not solver.stochastic


def test_solvers_strategy_covers_every_registered_name():
    seen = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(testing.solvers())
    def collect(s):
        seen.add(s.name)

    collect()
    assert seen == set(registered_solvers())


# ---------------------------------------------------------------------------------------------------------------------
# check_schedule: a correct user-defined schedule passes, broken ones are rejected under the right property
# ---------------------------------------------------------------------------------------------------------------------


class ShiftedCosine(NoiseSchedule):
    r"""Shifted cosine VP schedule (Hoogeboom et al. 2023, arXiv:2301.11093): ``lambda = -log tan(pi t/2) - log k``.

    VP: ``log alpha = -softplus(-2 lambda)/2``, ``log sigma = -softplus(2 lambda)/2``; with
    ``d lambda/dt = -pi/sin(pi t)``: ``f = sigma^2 d lambda/dt`` and ``g^2 = -2 sigma^2 d lambda/dt`` (given as a
    closed-form ``_g2``; the example script uses ``_dlog_sigma`` instead).
    """

    is_vp = True
    domain = (0.0, 1.0)

    def __init__(self, shift: float = 4.0):
        self.log_shift = math.log(shift)
        self._set_range(None, None, (1e-3, 0.999))

    def _lambda_of_t(self, t):
        return -torch.log(torch.tan(0.5 * math.pi * t)) - self.log_shift

    def _dlambda(self, t):
        return -math.pi / torch.sin(math.pi * t)

    def _log_alpha(self, t):
        return -0.5 * torch.nn.functional.softplus(-2.0 * self._lambda_of_t(t))

    def _log_sigma(self, t):
        return -0.5 * torch.nn.functional.softplus(2.0 * self._lambda_of_t(t))

    def _f(self, t):
        return torch.exp(2.0 * self._log_sigma(t)) * self._dlambda(t)

    def _g2(self, t):
        return -2.0 * torch.exp(2.0 * self._log_sigma(t)) * self._dlambda(t)

    def _inverse_lambda(self, lam):
        return (2.0 / math.pi) * torch.atan(torch.exp(-lam - self.log_shift))


def test_user_defined_schedule_passes_every_property():
    report = testing.check_schedule(ShiftedCosine())
    assert report.passed == list(testing.SCHEDULE_PROPERTIES)
    assert not report.skipped


def test_example_script_runs_and_reports(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "properties passed" in out and "moment_ode" in out


class WigglyLambda(NoiseSchedule):
    """VE-type schedule with ``log sigma = 3t + 0.8 sin(6 pi t)``: lambda rises wherever ``cos(6 pi t) < -0.2``."""

    t_min, t_max = 0.0, 1.0

    def _log_alpha(self, t):
        return 0.0 * t

    def _log_sigma(self, t):
        return 3.0 * t + 0.8 * torch.sin(6 * math.pi * t)

    def _f(self, t):
        return 0.0 * t

    def _dlog_sigma(self, t):
        return 3.0 + 4.8 * math.pi * torch.cos(6 * math.pi * t)

    def _inverse_lambda(self, lam):
        return -lam / 3.0


class DriftOffByFactor(VPLinear):
    def _f(self, t):
        return 1.05 * super()._f(t)


class InverseDriftsNearTmax(VPCosine):
    """inverse_lambda exact except in the last 10% of the domain, where it drifts by up to 1e-4."""

    def _inverse_lambda(self, lam):
        t = super()._inverse_lambda(lam)
        return t + 1e-4 * torch.clamp((t - 0.9 * self.t_max) / (0.1 * self.t_max), min=0.0) ** 2


class NaNSigmaNearTmin(VPLinear):
    def _log_sigma(self, t):
        return torch.where(t < 2 * self.t_min, torch.nan, super()._log_sigma(t))


class MissingInverse(VPLinear):
    def _inverse_lambda(self, lam):
        return NoiseSchedule._inverse_lambda(self, lam)


@pytest.mark.parametrize(
    ("schedule", "prop"),
    [
        (WigglyLambda(), "lambda_decreasing"),
        (DriftOffByFactor(), "f_autograd"),
        (InverseDriftsNearTmax(), "inverse_lambda"),
        (NaNSigmaNearTmin(), "finite"),
        (MissingInverse(), "contract"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, NoiseSchedule) else v,
)
def test_check_schedule_rejects_broken_schedule_naming_the_property(schedule, prop):
    with pytest.raises(testing.ScheduleCheckError) as err:
        testing.check_schedule(schedule, max_examples=30)
    assert err.value.prop == prop
    assert repr(schedule) in str(err.value)


def test_schedule_failure_shows_the_shrunk_counterexample():
    with pytest.raises(testing.ScheduleCheckError) as err:
        testing.check_schedule(InverseDriftsNearTmax(), properties=("inverse_lambda",))
    msg = str(err.value)
    assert "Falsifying example" in msg and "inverse_lambda(lambda_(t)) vs t at t=" in msg
    assert isinstance(err.value, testing.PropertyCheckError) and isinstance(err.value, AssertionError)


def test_check_schedule_rejects_unknown_property_names():
    with pytest.raises(ValueError, match="unknown properties"):
        testing.check_schedule(VPLinear(), properties=("monotone",))


# ---------------------------------------------------------------------------------------------------------------------
# check_solver: every registered solver passes; known-exact solvers are exact; broken solvers are rejected
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(registered_solvers()))
def test_check_solver_passes_on_registered_solver(name):
    report = testing.check_solver(name)
    assert set(report.passed) | set(report.skipped) == set(testing.SOLVER_PROPERTIES)


@pytest.mark.parametrize("solver", [DDIM(), DDIMInverse(), Euler(variable="sigma"), Heun(variable="sigma")], ids=repr)
def test_exponential_integrators_are_exact_for_point_mass(solver):
    # DDIM(0) and Euler/Heun in (x/alpha, sigma/alpha) integrate the point-mass flow exactly (eps is constant on it)
    report = testing.check_solver(solver, exact_for_point_mass=True, properties=("point_mass_exact",), max_examples=20)
    assert report.passed == ["point_mass_exact"]


def test_point_mass_exactness_is_demanded_from_solvers_that_declare_it():
    class Declared(Euler):  # Euler in t is not exact: declaring it must fail
        exact_for_point_mass = True

    with pytest.raises(testing.SolverCheckError) as err:
        testing.check_solver(Declared(), properties=("point_mass_exact",))
    assert err.value.prop == "point_mass_exact"
    assert "Falsifying example" in str(err.value)


def test_weak_order_is_skipped_with_a_note_when_moments_do_not_apply():
    # a per-sample Langevin step size depends on ||score||/||z||: the run is not affine in the noise
    report = testing.check_solver(PredictorCorrector(n_corrector=1, norm="sample"), properties=("order",))
    assert "not affine" in report.skipped["order"]
    with pytest.raises(ValueError, match="not affine"):
        testing.measure_order(PredictorCorrector(n_corrector=1, norm="sample"))


def test_declared_batch_coupling_skips_the_per_sample_properties():
    class Coupled(MixesTheBatch):
        couples_batch = True

    report = testing.check_solver(Coupled(), properties=("per_sample_times",))
    assert "couples_batch" in report.skipped["per_sample_times"]


def test_measure_order_of_heun_and_euler_maruyama():
    heun = testing.measure_order(Heun())
    assert heun.kind == "global" and abs(heun.order - 2) < 0.1
    em = testing.measure_order("euler_maruyama")
    assert em.kind == "weak" and abs(em.order - 1) < 0.1
    assert len(em.nfe) == len(em.errors) == len(testing.ORDER_NFE)


class FakeSecondOrder(DDIM):
    order = 2.0


class MixesUpEpsAndX0(DDIM):
    exact_for_point_mass = False  # (the claiming variant is tested separately)

    def step(self, model, x, state, c, noise):
        x0 = model.predict(x, c.t, "x0", c.alpha, c.sigma)  # used where the noise prediction belongs
        return c.ratio * x + c.c_eps * x0, state


class Jittery(DDIM):
    def step(self, model, x, state, c, noise):
        x, state = super().step(model, x, state, c, noise)
        return x + 1e-9 * torch.randn_like(x), state  # global RNG: not reproducible


class MixesTheBatch(DDIM):
    exact_for_point_mass = False  # so that the batch coupling is what fails

    def step(self, model, x, state, c, noise):
        x_next, state = super().step(model, x, state, c, noise)
        return x_next + 1e-3 * (x - x.mean(0, keepdim=True)), state


class MiscountsNFE(Heun):
    def final_nfe(self, steps):
        return 2 * steps


class HalfPrecisionState(DDIM):
    def step(self, model, x, state, c, noise):
        eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
        return (c.ratio * x + c.c_eps * eps).to(eps.dtype), state


class IgnoresItsNoise(DDIM):
    def __init__(self):
        super().__init__(eta=0.0)
        self.stochastic = True


class TooMuchNoise(DDPM):
    def coefficients(self, schedule, ts, base):
        c = super().coefficients(schedule, ts, base)
        c["c_noise"] = 1.2 * c["c_noise"]
        return c


@pytest.mark.parametrize(
    ("solver", "prop", "kwargs"),
    [
        (FakeSecondOrder(), "order", {}),
        (MixesUpEpsAndX0(), "order", {}),
        (MixesUpEpsAndX0(), "point_mass_exact", {"exact_for_point_mass": True}),
        (Jittery(), "determinism", {}),
        (MixesTheBatch(), "per_sample_times", {}),
        (MiscountsNFE(), "nfe", {}),
        (HalfPrecisionState(), "finite_low_precision", {}),
        (IgnoresItsNoise(), "determinism", {}),
        (TooMuchNoise(), "order", {}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, (str, dict)) else str(v),
)
def test_check_solver_rejects_broken_solver_naming_the_property(solver, prop, kwargs):
    with pytest.raises(testing.SolverCheckError) as err:
        testing.check_solver(solver, **kwargs)
    assert err.value.prop == prop
    assert repr(solver) in str(err.value)


def test_order_failure_reports_the_measurement():
    with pytest.raises(testing.SolverCheckError, match=r"declared order 2.0, measured global order 1\.0"):
        testing.check_solver(FakeSecondOrder(), properties=("order",))
